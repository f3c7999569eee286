"""The ``compactnn`` command."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from compactnn.utils import machine_info

__all__ = ["main"]


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from compactnn.experiments import registry

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
    out.mkdir(parents=True, exist_ok=True)
    print(f"compactnn reproduce ({mode} mode): {len(chosen)} experiment(s) -> {out}")
    sections = [f"# compactnn reproduce ({mode} mode)\n",
                f"Command: `compactnn reproduce{' --full' if args.full else ''}"
                f"{' --only ' + ' '.join(args.only) if args.only else ''} --seed {args.seed}"
                f"{f' --jobs {args.jobs}' if args.jobs > 1 else ''}`  ",
                f"Machine: {machine_info()}  ", f"Date: {datetime.now():%Y-%m-%d %H:%M}\n"]
    t_all = time.perf_counter()
    for exp in chosen:
        t0 = time.perf_counter()
        print(f"\n== {exp.name}: {exp.description}")
        sub = out / exp.name
        sub.mkdir(exist_ok=True)
        kwargs = {"jobs": args.jobs} if exp.parallel else {}
        result = exp.run(sub, quick, args.seed, **kwargs)
        took = time.perf_counter() - t0
        print(result.markdown)
        print(f"({exp.name} took {took:.1f} s)")
        # Figures are referenced relative to the report.
        md = result.markdown.replace("](", f"]({exp.name}/")
        sections.append(f"## {exp.name}\n\n{exp.description}. Took {took:.1f} s.\n\n{md}\n")
    report = out / "report.md"
    report.write_text("\n".join(sections))
    print(f"\nAll done in {time.perf_counter() - t_all:.1f} s. Report: {report}")
    return 0


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

    try:
        base = load_config_file(args.config) if args.config else {}
        cfg = build_config(config_cls, parse_overrides(args.overrides, base))
        if args.print_config:
            print(json.dumps(config_to_dict(cfg), indent=2))
            return 0
        result = run(cfg).metrics
    except (ValueError, FileNotFoundError, ImportError) as e:  # ConfigError is a ValueError
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    for key in drop:  # large arrays also saved to files
        result.pop(key, None)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from compactnn.tasks.classify import TrainConfig, train

    return _run_configured(args, TrainConfig, train, ())


def _cmd_mtl(args: argparse.Namespace) -> int:
    from compactnn.tasks.mtl import MTLConfig, train_mtl

    # expert weights are written to OUT/gate_weights.csv
    return _run_configured(args, MTLConfig, train_mtl, ("expert_weights",))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compactnn",
        description="Compact neural networks by structure: experiments and tools.")
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
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser(
        "train", help="train a dense, low-rank or sparse classifier (torchrun-ready)",
        description="Train with a typed config: a TOML/JSON file and/or section.key=value "
                    "overrides, e.g. `compactnn train model.name=resnet20 "
                    "lowrank.param_ratio=0.1 lowrank.frobenius_decay=1e-4 optim.epochs=5`. "
                    "Runs unchanged under `torchrun --nproc_per_node=N`. Resumes from "
                    "OUT/checkpoint.safetensors when present.")
    p.add_argument("--config", help="a .toml or .json config file")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides such as optim.lr=0.1 (see --print-config)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "mtl", help="multi-task training: DSelect-k / Top-k / softmax gates (torchrun-ready)",
        description="Train a multi-gate mixture of experts on multi-task data with a typed "
                    "config: a TOML/JSON file and/or section.key=value overrides, e.g. "
                    "`compactnn mtl data.name=census gate.name=dselect_k gate.k=2 "
                    "experts.num=8 optim.epochs=5`. Runs unchanged under `torchrun "
                    "--nproc_per_node=N`. Resumes from OUT/checkpoint.safetensors when "
                    "present. See docs/mtl.md.")
    p.add_argument("--config", help="a .toml or .json config file")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides such as gate.name=topk (see --print-config)")
    p.set_defaults(func=_cmd_mtl)

    p = sub.add_parser("list", help="list the registered experiments",
                       description="List the experiments `compactnn reproduce` can run.")
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs and checkpoints are kept; run the same command "
              "again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
