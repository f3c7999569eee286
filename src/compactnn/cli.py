"""The ``compactnn`` command."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from compactnn.cli_errors import EXIT_CODES_HELP, pop_debug_flag, run_guarded
from compactnn.data.commands import add_data_parser
from compactnn.utils import machine_info

__all__ = ["main"]


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from compactnn.experiments import registry, reproduce

    exps = registry()
    if args.only:
        unknown = [n for n in args.only if n not in exps]
        if unknown:
            print(f"error: unknown experiment(s) {', '.join(unknown)}; "
                  f"available: {', '.join(exps)}", file=sys.stderr)
            return 2
        chosen = [exps[n] for n in args.only]
    else:
        chosen = [e for e in exps.values() if e.in_quick or args.full]
    quick = not args.full
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    mode = "quick" if quick else "full"
    out = Path(args.out) if args.out else Path("runs") / f"reproduce-{mode}-{stamp}"
    command = (f"compactnn reproduce{' --full' if args.full else ''}"
               f"{' --only ' + ' '.join(args.only) if args.only else ''} --seed {args.seed}"
               f"{f' --jobs {args.jobs}' if args.jobs > 1 else ''}"
               f"{f' --threads {args.threads}' if args.threads != 1 else ''}"
               f"{' --fetch' if args.fetch else ''}")
    print(f"compactnn reproduce ({mode} mode): {len(chosen)} experiment(s) -> {out}")
    t_all = time.perf_counter()
    summary = reproduce(chosen, out, quick, args.seed, jobs=args.jobs, fetch=args.fetch,
                        command=command, machine=machine_info(), debug=args.debug,
                        threads=args.threads)
    ran, skipped, failed = (summary.by_status(s) for s in ("ok", "skipped", "failed"))
    print(f"\nDone in {time.perf_counter() - t_all:.1f} s: {len(ran)} ran, {len(skipped)} "
          f"skipped, {len(failed)} failed. Report: {summary.report}")
    for o in skipped + failed:
        print(f"  {o.status} {o.name}: {o.reason}")
    return summary.exit_code


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _cmd_list(args: argparse.Namespace) -> int:
    from compactnn.experiments import registry

    for exp in registry().values():
        flag = "" if exp.in_quick else "  (full mode only)"
        print(f"{exp.name:24s} {exp.description}{flag}")
    return 0


def _run_configured(args: argparse.Namespace, config_cls: type, run, drop: tuple[str, ...]) -> int:
    """Shared body of ``train`` and ``mtl``: build a typed config from ``--config`` and
    overrides, print it or run it, and report bad input as one ``error:`` line."""
    import json

    from compactnn.config import (
        build_config,
        config_to_dict,
        load_config_file,
        parse_overrides,
    )
    from compactnn.engine import TrainingDiverged, exit_code, json_safe

    def error(e: BaseException, code: int) -> int:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return code

    try:
        base = load_config_file(args.config) if args.config else {}
        cfg = build_config(config_cls, parse_overrides(args.overrides, base))
        if args.print_config:
            print(json.dumps(config_to_dict(cfg), indent=2))
            return 0
        result = run(cfg).metrics
    except TrainingDiverged as e:
        return error(e, 1)
    except BrokenPipeError:
        raise  # a closed stdout: run_guarded ends quietly
    # ConfigError is a ValueError; RunFolderError (out unusable or busy) an OSError
    except (ValueError, OSError, ImportError) as e:
        return error(e, 2)
    for key in drop:  # large arrays also saved to files
        result.pop(key, None)
    print(json.dumps(json_safe(result), indent=2, allow_nan=False))
    if result.get("signal"):  # stopped by SIGINT/SIGTERM after saving: say so to the caller
        return exit_code(result["signal"])
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from compactnn.tasks.classify import TrainConfig, train

    return _run_configured(args, TrainConfig, train, ())


def _cmd_mtl(args: argparse.Namespace) -> int:
    from compactnn.tasks.mtl import MTLConfig, train_mtl

    # expert weights are written to OUT/gate_weights.csv
    return _run_configured(args, MTLConfig, train_mtl, ("expert_weights",))


def _add_configured(sub, name: str, func, example: str, help: str, description: str) -> None:
    """A subcommand run from a typed config (``train``, ``mtl``)."""
    p = sub.add_parser(name, help=help, description=(
        f"{description} Overrides may stand before and after --config. Runs unchanged "
        "under `torchrun --nproc_per_node=N`. Resumes from OUT/checkpoint.safetensors when "
        "present; exits 1 if the loss diverges, 130/143 after saving on SIGINT/SIGTERM."))
    p.add_argument("--config", help="a .toml or .json config file")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help=f"config overrides such as {example} (see --print-config)")
    p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compactnn",
        description="Compact neural networks by structure: experiments and tools.",
        epilog=EXIT_CODES_HELP)
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks for user errors too (anywhere on the line; "
                             "or COMPACTNN_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("reproduce", help="run the experiments that reproduce the papers' claims",
                       description="Run the registered experiments (quick mode by default) and "
                                   "write tables, plots and a markdown report to a run folder.")
    p.add_argument("--full", action="store_true",
                   help="the papers' scale: more seeds, epochs and sizes (slow)")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="run only these experiments (see `compactnn list`)")
    p.add_argument("--out", help="run folder (default: runs/reproduce-<mode>-<time>)")
    p.add_argument("--seed", type=int, default=0, help="base random seed (default 0)")
    p.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                   help="worker processes (one thread each) for experiments made of many "
                        "independent trainings, e.g. lowrank_grid (default 1)")
    p.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                   help="torch threads for each experiment (default 1: the small models "
                        "here gain little from more, and on a busy machine several threads "
                        "per process wait on each other many times over)")
    p.add_argument("--fetch", action="store_true",
                   help="download missing data sets first (`compactnn data fetch`); without "
                        "it, experiments whose data is missing are skipped (exit code 3)")
    p.set_defaults(func=_cmd_reproduce)

    _add_configured(
        sub, "train", _cmd_train, "optim.lr=0.1",
        help="train a dense, low-rank or sparse classifier (torchrun-ready)",
        description="Train with a typed config: a TOML/JSON file and/or section.key=value "
                    "overrides, e.g. `compactnn train model.name=resnet20 "
                    "lowrank.param_ratio=0.1 lowrank.frobenius_decay=1e-4 optim.epochs=5`.")
    _add_configured(
        sub, "mtl", _cmd_mtl, "gate.name=topk",
        help="multi-task training: DSelect-k / Top-k / softmax gates (torchrun-ready)",
        description="Train a multi-gate mixture of experts on multi-task data with a typed "
                    "config: a TOML/JSON file and/or section.key=value overrides, e.g. "
                    "`compactnn mtl data.name=census gate.name=dselect_k gate.k=2 "
                    "experts.num=8 optim.epochs=5`. See docs/mtl.md.")

    p = sub.add_parser("list", help="list the registered experiments",
                       description="List the experiments `compactnn reproduce` can run.")
    p.set_defaults(func=_cmd_list)
    add_data_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv, debug = pop_debug_flag(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `train`/`mtl` take KEY=VALUE overrides on both sides of --config
        if args.command in ("train", "mtl") and all("=" in a and not a.startswith("-")
                                                    for a in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.debug = debug
    return run_guarded(lambda: args.func(args), debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
