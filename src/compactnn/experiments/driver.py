"""The ``compactnn reproduce`` driver: run the chosen experiments one after another, and
never let one missing data set or one failing experiment stop the others.

- An experiment whose data set (``Experiment.data``) is missing is *skipped* with one
  line naming the data set and the command that gets it (with ``fetch=True`` the missing
  data sets are downloaded first; a failed download skips the experiments that need it).
- An experiment that raises is *failed*: its error is recorded (one line on the console,
  the traceback in ``<run>/<name>/error.txt``) and the next one runs.
- ``report.md`` is rewritten after every experiment, so an interrupted run keeps what it
  finished; it starts with a status table and lists what was skipped or failed and why.
- SIGTERM is handled as Ctrl-C is: it is passed on to the worker processes of ``--jobs``
  (which also die on their own if the driver is killed outright, see
  :mod:`compactnn.experiments.workers`), the report of what finished is written, and the
  command exits 143.

Exit codes (:attr:`Summary.exit_code`): 0 all ran, 3 some skipped (none failed), 4 at
least one failed.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch

from compactnn._checks import check_int
from compactnn.data.errors import (
    CacheError,
    DataIntegrityError,
    DataNotFoundError,
    FetchError,
)
from compactnn.data.registry import get_dataset, locate
from compactnn.experiments import Experiment
from compactnn.experiments.workers import forward_sigterm

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_SKIPPED", "Outcome", "Summary", "reproduce"]

EXIT_OK, EXIT_SKIPPED, EXIT_FAILED = 0, 3, 4


@dataclass
class Outcome:
    """What happened to one experiment: ``status`` is ``"ok"``, ``"skipped"`` or
    ``"failed"``; ``reason`` is one line (empty when ok)."""

    name: str
    status: str
    seconds: float = 0.0
    reason: str = ""
    markdown: str = ""
    description: str = ""


@dataclass
class Summary:
    out: Path
    report: Path
    outcomes: list[Outcome] = field(default_factory=list)

    def by_status(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def exit_code(self) -> int:
        if self.by_status("failed"):
            return EXIT_FAILED
        return EXIT_SKIPPED if self.by_status("skipped") else EXIT_OK


def _data_problem(name: str) -> str | None:
    """None when data set ``name`` is usable, else one line saying why not and how to fix."""
    try:
        locate(name)
    except DataNotFoundError:
        ds = get_dataset(name)
        return f"data set {name} ({ds.title}) is missing; get it with `{ds.command}`"
    except DataIntegrityError as e:
        return f"data set {name}: {e}"
    return None


def _fetch_missing(chosen: Sequence[Experiment], echo: Callable[[str], None]
                   ) -> dict[str, str]:
    """Fetch the missing data sets of ``chosen``; {name: why it is still unusable}."""
    from compactnn.data.fetch import fetch

    failed: dict[str, str] = {}
    for name in dict.fromkeys(d for e in chosen for d in e.data):
        if _data_problem(name) is None:
            continue
        echo(f"fetching data set {name} (--fetch)")
        try:
            fetch(name, progress=True, echo=echo)
        except (FetchError, DataIntegrityError, CacheError) as e:
            failed[name] = f"data set {name} could not be fetched: {e}"
            echo(f"warning: {failed[name]}")
    return failed


def reproduce(chosen: Sequence[Experiment], out: Path, quick: bool, seed: int,
              jobs: int = 1, fetch: bool = False, command: str = "compactnn reproduce",
              machine: str = "", echo: Callable[[str], None] = print,
              debug: bool = False, threads: int | None = None) -> Summary:
    """Run ``chosen`` into run folder ``out`` (see the module docstring); ``threads``:
    ``torch.set_num_threads`` while each experiment runs (None: leave it as it is)."""
    if threads is not None:
        check_int("threads", threads, minimum=1)
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary(out, out / "report.md")
    header = [f"# compactnn reproduce ({'quick' if quick else 'full'} mode)\n",
              f"Command: `{command}`  ", f"Machine: {machine}  ",
              f"Date: {datetime.now():%Y-%m-%d %H:%M}\n"]
    current = "the --fetch downloads" if fetch else ""
    with forward_sigterm():
        try:
            fetch_failed = _fetch_missing(chosen, echo) if fetch else {}
            for exp in chosen:
                current = exp.name
                echo(f"\n== {exp.name}: {exp.description}")
                with _torch_threads(threads):
                    summary.outcomes.append(_run_one(exp, out, quick, seed, jobs,
                                                     fetch_failed, echo, debug))
                _write_report(summary, header)
            current = ""
        finally:  # also on Ctrl-C and SIGTERM: the report says what finished
            _write_report(summary, header, interrupted=current)
    return summary


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_one(exp: Experiment, out: Path, quick: bool, seed: int, jobs: int,
             fetch_failed: dict[str, str], echo: Callable[[str], None],
             debug: bool) -> Outcome:
    problems = [fetch_failed.get(d) or _data_problem(d) for d in exp.data]
    problems = [p for p in problems if p]
    if problems:
        echo(f"skipped {exp.name}: {problems[0]}")
        return Outcome(exp.name, "skipped", reason=problems[0], description=exp.description)
    sub = out / exp.name
    t0 = time.perf_counter()
    try:
        sub.mkdir(exist_ok=True)
        kwargs = {"jobs": jobs} if exp.parallel else {}
        result = exp.run(sub, quick, seed, **kwargs)
    except DataNotFoundError as e:  # a data set the registration did not declare
        reason = f"{e.dataset or 'a data set'} is missing: {e}"
        echo(f"skipped {exp.name}: {reason}")
        return Outcome(exp.name, "skipped", time.perf_counter() - t0, reason,
                       description=exp.description)
    except Exception as e:
        took = time.perf_counter() - t0
        text = traceback.format_exc()
        where = sub / "error.txt"
        try:
            where.write_text(text)
            saved = f"traceback in {where}"
        except OSError:
            saved = "traceback not saved"
        first = (str(e).strip().splitlines() or [""])[0]
        reason = f"{type(e).__name__}: {first}" if first else type(e).__name__
        if debug:
            echo(text.rstrip())
        echo(f"FAILED {exp.name} after {took:.1f} s: {reason} ({saved})")
        return Outcome(exp.name, "failed", took, f"{reason} ({saved})",
                       description=exp.description)
    took = time.perf_counter() - t0
    echo(result.markdown)
    echo(f"({exp.name} took {took:.1f} s)")
    return Outcome(exp.name, "ok", took, markdown=result.markdown,
                   description=exp.description)


def _write_report(summary: Summary, header: list[str], interrupted: str = "") -> None:
    rows = ["| experiment | status | time (s) | note |", "| --- | --- | --- | --- |"]
    for o in summary.outcomes:
        rows.append(f"| {o.name} | {o.status} | {o.seconds:.1f} | "
                    f"{o.reason.replace('|', '/')} |")
    parts = [*header, "## Status\n", "\n".join(rows) + "\n"]
    if interrupted:
        parts.append(f"Interrupted while running {interrupted}; the rows above finished.\n")
    not_run = [o for o in summary.outcomes if o.status != "ok"]
    if not_run:
        parts.append("## Skipped or failed\n")
        parts.append("\n".join(f"- **{o.name}** ({o.status}): {o.reason}" for o in not_run)
                     + "\n")
    for o in summary.outcomes:
        if o.status == "ok":
            md = o.markdown.replace("](", f"]({o.name}/")  # figures relative to the report
            parts.append(f"## {o.name}\n\n{o.description}. Took {o.seconds:.1f} s.\n\n{md}\n")
    tmp = summary.report.with_name(f".{summary.report.name}.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(summary.report)
