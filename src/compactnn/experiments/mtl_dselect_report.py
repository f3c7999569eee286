"""The report of the DSelect-k study (:mod:`compactnn.experiments.mtl_dselect`) from
whatever cells have finished: progress and CPU time per part, the configurations chosen
on validation, paired comparisons over the seeds every arm has finished, best epochs,
the remedies' table and the saturation plot.

``python -m compactnn.experiments.mtl_dselect_report [--root DIR] [--figure PNG]``
prints the markdown.
"""

from __future__ import annotations

import argparse
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compactnn.experiments.mtl_dselect import PARTS, REMEDIES, Study, cell_name

__all__ = ["mean_curve", "paired_values", "report", "saturation_figure", "update_block"]

ARM_LABELS = {"oracle": "oracle routing", "random": "random routing",
              "dselect_k": "DSelect-k", "topk": "Top-k", "softmax": "softmax"}
GATE_KEYS = ("gamma", "entropy_reg", "importance_reg")


def _fmt(v: Any, spec: str = "{:.4f}") -> str:
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else spec.format(v)
    return str(v)


def paired_values(records: Sequence[Mapping[str, Any]], key_of, metric: str
                  ) -> dict[str, list[float]]:
    """``{arm: [metric at each seed]}`` over the seeds that every arm has finished
    (``key_of(params)`` names the arm; None drops the record), seeds in ascending order."""
    by_arm: dict[str, dict[int, float]] = defaultdict(dict)
    for rec in records:
        arm = key_of(rec["params"])
        value = rec["result"].get(metric)
        if arm is not None and isinstance(value, (int, float)):
            by_arm[arm][int(rec["params"]["seed"])] = float(value)
    if not by_arm:
        return {}
    common = sorted(set.intersection(*(set(v) for v in by_arm.values())))
    return {arm: [v[s] for s in common] for arm, v in by_arm.items()}


def mean_curve(histories: Sequence[Sequence[float]]) -> np.ndarray:
    """The mean over runs at each epoch; a run that stopped early holds its last value
    (its routing no longer changes once training has stopped)."""
    histories = [list(h) for h in histories if len(h)]
    if not histories:
        return np.zeros(0)
    n = max(len(h) for h in histories)
    padded = np.array([h + [h[-1]] * (n - len(h)) for h in histories], dtype=np.float64)
    return padded.mean(axis=0)


def late_gain(history: Sequence[float]) -> float | None:
    """How much lower (relatively) the best validation loss is than the best one before
    the last 10% of the epochs run: what stopping 10% earlier would have lost. None for
    a history too short to tell or not finite."""
    h = [float(v) for v in history]
    if len(h) < 10 or not all(math.isfinite(v) for v in h):
        return None
    before = min(h[: math.ceil(0.9 * len(h))])
    best = min(h)
    return (before - best) / abs(best) if best else None


def _best_epochs(records: Sequence[Mapping[str, Any]]) -> str:
    best = [int(r["result"].get("best_epoch", 0)) for r in records]
    late = sum(bool(r["result"].get("best_in_last_10pct")) for r in records)
    if not best:
        return "-"
    gains = [g for r in records if (g := late_gain(r["result"].get("val_history") or []))
             is not None]
    out = f"median {int(np.median(best))}, max {max(best)}" + (
        f" ({late} in the last 10%" if late else "")
    if late and gains:
        out += (f"; the last 10% of epochs lowered the validation loss by a median "
                f"{100 * float(np.median(gains)):.2f}%, at most {100 * max(gains):.2f}%")
    return out + (")" if late else "")


def _cpu_hours(records: Mapping[str, Mapping[str, Any]]) -> float:
    return sum(float(r["result"].get("cpu_seconds", 0.0)) for r in records.values()) / 3600


def _progress(study: Study) -> str:
    from compactnn.experiments.reporting import markdown_table

    rows = []
    status, planned = study.status(), study.planned()
    for part in PARTS[:-1]:
        done = status[part][0]
        recs = study.store.finished(part)
        wall = sum(float(r["result"].get("seconds", 0)) for r in recs.values()) / 3600
        rows.append([part, f"{done} of {planned[part]}", f"{_cpu_hours(recs):.2f}",
                     f"{wall:.2f}"])
    rows.append(_tuned_progress(study))
    return markdown_table(["part", "cells done", "CPU-hours",
                           "wall hours"], rows)


def _tuned_progress(study: Study) -> list[str]:
    """The tuned part's row: finished or not; the CPU-hours of its re-trained seeds and
    the wall hours of search and re-training (trials record wall time only)."""
    from compactnn.tune.summary import load_tuning

    folder = study.store.root / "planted_tuned"
    if not (folder / "tuning.json").exists():
        return ["planted_tuned", "pending", "-", "-"]
    d = load_tuning(folder)
    finals = [r for runs in d["final"].values() for r in runs]
    wall = (sum(float(m["search_seconds"]) for m in d["methods"].values())
            + sum(float(r["seconds"]) for r in finals)) / 3600
    cpu = sum(float(r.get("cpu_seconds", 0.0)) for r in finals) / 3600
    return ["planted_tuned", "finished", f"{cpu:.2f} (re-training only)", f"{wall:.2f}"]


def _choices(study: Study) -> str:
    from compactnn.experiments.reporting import markdown_table

    done = study.store.finished("planted_select")
    choices = study.planted_choices()
    rows = []
    for arm in ARM_LABELS:
        c = choices[arm]
        if c is None:
            continue
        val = done[cell_name(c)]["result"]["val"]
        own = ", ".join(f"{k} {c[k]:g}" for k in GATE_KEYS if k in c) or "-"
        rows.append([ARM_LABELS[arm], f"{c['lr']:g}", own, _fmt(val)])
    return markdown_table(["arm", "lr", "own parameters", "validation MSE"], rows)


def _planted_eval(study: Study) -> str:
    from compactnn.experiments.stats import comparison_markdown

    recs = _listed(study, "planted_eval")
    if not recs:
        return "pending: no evaluation cell finished yet.\n"
    parts = []
    for metric, lower, title in (("test", True, "test MSE"),
                                 ("exact", False, "exact support recovered"),
                                 ("ari", False, "ARI of the supports vs the clusters")):
        vals = paired_values(recs, lambda p: p["arm"], metric)
        gates = {k: v for k, v in vals.items() if k in ("dselect_k", "topk", "softmax",
                                                         "random", "oracle")}
        if "dselect_k" not in gates or len(gates["dselect_k"]) < 2:
            parts.append(f"{title}: pending (fewer than 2 seeds with every arm)\n")
            continue
        parts.append(f"**{title}** ({len(gates['dselect_k'])} seeds)\n\n" + comparison_markdown(
            gates, "dselect_k", lower_is_better=lower, labels=ARM_LABELS))
    by_arm = defaultdict(list)
    for r in recs:
        by_arm[r["params"]["arm"]].append(r)
    parts.append("Best epochs: " + "; ".join(
        f"{ARM_LABELS[a]} {_best_epochs(rs)}" for a, rs in by_arm.items()))
    return "\n\n".join(parts) + "\n"


def _setting(p: Mapping[str, Any]) -> str:
    return f"{p.get('experts', 'learned')} experts, {p.get('spare', 0)} spare"


def _remedy_label(p: Mapping[str, Any], gamma: bool = False) -> str:
    if p["arm"] != "dselect_k":
        return ARM_LABELS[p["arm"]]
    return "DSelect-k " + (f"gamma {p['gamma']:g} " if gamma else "") + p.get("remedy", "none")


def _listed(study: Study, part: str) -> list[dict[str, Any]]:
    """The finished cells ``part`` lists now (cells of an earlier, provisional choice that
    no longer belong to it are left out)."""
    done = study.store.finished(part)
    return [done[n] for n in (cell_name(c) for c in study.cells(part)) if n in done]


def _remedy_records(study: Study) -> list[dict[str, Any]]:
    """The remedies' cells, with the evaluation cells of their seeds standing for the
    learned / no-spare / no-remedy setting of the arms that part does not repeat."""
    recs = _listed(study, "planted_remedies")
    seeds = {int(r["params"]["seed"]) for r in recs}
    own = {r["params"]["arm"] for r in recs
           if (r["params"]["experts"], r["params"]["spare"]) == ("learned", 0)}
    for r in _listed(study, "planted_eval"):
        if int(r["params"]["seed"]) in seeds and r["params"]["arm"] not in own:
            recs.append({"params": {**r["params"], "remedy": "none"}, "result": r["result"]})
    return recs


def _g1_records(study: Study) -> list[dict[str, Any]]:
    """The remedies at gamma EARLY_GAMMA beside every other arm (DSelect-k without remedy at
    its own gamma included) in the same two settings and seeds."""
    recs = _listed(study, "planted_remedies_g1")
    seeds = {int(r["params"]["seed"]) for r in recs}
    recs += [r for r in _remedy_records(study)
             if int(r["params"]["seed"]) in seeds and r["params"]["spare"] == 0
             and r["params"].get("remedy", "none") == "none"]
    return recs


SATURATION_EPOCHS = (1, 10, 40, 100, 300, 600)


def _remedy_table(recs: Sequence[Mapping[str, Any]], label, reference: str,
                  metrics: Sequence[tuple[str, bool, str]]) -> str:
    from compactnn.experiments.reporting import markdown_table
    from compactnn.experiments.stats import comparison_markdown

    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in recs:
        groups[(_setting(r["params"]), label(r["params"]))].append(r)
    rows = []
    for (setting, name), rs in sorted(groups.items()):
        res = [r["result"] for r in rs]

        def m(key: str, res=res) -> str:
            v = [x[key] for x in res if isinstance(x.get(key), (int, float))]
            return _fmt(float(np.mean(v))) if v else "-"

        curve = mean_curve([x.get("saturation_history") or [] for x in res])

        def at(e: int, curve=curve) -> str:
            return _fmt(float(curve[min(e, len(curve)) - 1]), "{:.2f}") if len(curve) else "-"

        rows.append([setting, name, len(rs), m("test"), m("exact"), m("ari"),
                     *(at(e) for e in SATURATION_EPOCHS), _best_epochs(rs)])
    table = markdown_table(["experts", "arm", "seeds", "test MSE", "exact", "ARI",
                            *(f"saturated @{e}" for e in SATURATION_EPOCHS),
                            "best epochs"], rows)
    comps = []
    for setting in sorted({s for s, _ in groups}):
        sub = [r for r in recs if _setting(r["params"]) == setting]
        for metric, lower, title in metrics:
            vals = paired_values(sub, label, metric)
            vals = {k: v for k, v in vals.items() if not k.startswith(("oracle", "random"))}
            if reference in vals and len(vals[reference]) >= 2:
                comps.append(f"**{setting}**, {title}, paired over {len(vals[reference])} "
                             f"seeds (reference: {reference})\n\n" + comparison_markdown(
                                 vals, reference, lower_is_better=lower))
    return table + "\n\n" + "\n\n".join(comps) + "\n"


def _remedies(study: Study) -> str:
    recs = _remedy_records(study)
    if not recs:
        return "pending: no remedy cell finished yet.\n"
    return _remedy_table(recs, _remedy_label, "DSelect-k none",
                         [("test", True, "test MSE")])


def _remedies_g1(study: Study) -> str:
    from compactnn.experiments.mtl_dselect import EARLY_GAMMA

    if not _listed(study, "planted_remedies_g1"):
        return "pending: no cell finished yet.\n"
    return _remedy_table(_g1_records(study), lambda p: _remedy_label(p, gamma=True),
                         f"DSelect-k gamma {EARLY_GAMMA:g} none",
                         [("test", True, "test MSE"), ("exact", False, "exact support")])


def _selection_curves(study: Study) -> tuple[str, dict[str, list[list[float]]]]:
    """DSelect-k's saturation histories on the selection seed at the lr it chose (the
    first lr with any DSelect-k cell before a choice exists), one entry per gamma at the
    fixed entropy weight."""
    recs = [r for r in study.store.finished("planted_select").values()
            if r["params"]["arm"] == "dselect_k"]
    if not recs:
        return "", {}
    chosen = study.planted_choice("dselect_k")
    lr = chosen["lr"] if chosen else recs[0]["params"]["lr"]
    entropy = 0.1
    curves = {f"gamma {r['params']['gamma']:g}": [r["result"].get("saturation_history") or []]
              for r in sorted(recs, key=lambda r: r["params"]["gamma"])
              if r["params"]["lr"] == lr and r["params"]["entropy_reg"] == entropy}
    return f"selection seed, lr {lr:g}, entropy {entropy:g}", curves


def saturation_figure(study: Study, path: str | Path) -> Path | None:
    """Mean saturated fraction of DSelect-k's selector logits per epoch: one panel of the
    selection runs (one line per gamma), then one panel per expert setting of the
    remedies (one line per remedy); None when no DSelect-k cell has a history yet."""
    from compactnn.experiments.reporting import new_figure

    panels: list[tuple[str, dict[str, list[list[float]]]]] = []
    title, curves = _selection_curves(study)
    if curves:
        panels.append((title, curves))
    for recs in (_remedy_records(study), _listed(study, "planted_remedies_g1")):
        recs = [r for r in recs if r["params"]["arm"] == "dselect_k"]
        for setting in sorted({_setting(r["params"]) for r in recs}):
            gamma = next(r["params"]["gamma"] for r in recs if _setting(r["params"]) == setting)
            panels.append((f"{setting}, gamma {gamma:g}", {remedy: [
                r["result"].get("saturation_history") or [] for r in recs
                if _setting(r["params"]) == setting and r["params"].get("remedy") == remedy]
                for remedy in REMEDIES}))
    if not panels:
        return None
    ncols = min(len(panels), 4)  # rows of at most four panels stay readable
    nrows = -(-len(panels) // ncols)
    fig, axes = new_figure(nrows=nrows, ncols=ncols, figsize=(3.6 * ncols, 3.2 * nrows),
                           squeeze=False)
    flat = axes.ravel()
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, lines) in zip(flat, panels, strict=False):
        for i, (label, hist) in enumerate(lines.items()):
            curve = mean_curve(hist)
            if len(curve):
                ax.plot(np.arange(1, len(curve) + 1), curve, color=f"C{i}",
                        label=f"{label} ({len([h for h in hist if len(h)])})")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=6)
    for row in axes:
        row[0].set_ylabel("saturated fraction of z")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _real(study: Study, dataset: str, metric: str, lower: bool, title: str) -> str:
    from compactnn.experiments.stats import comparison_markdown

    done = study.store.finished(f"{dataset}_eval")
    # only the evaluation cells of the current choices (by name: a cell of an earlier,
    # provisional choice never stands in for one of them)
    listed = [cell_name(c) for c in study.real_eval(dataset)]
    recs = [done[n] for n in listed if n in done]
    failed = [r for r in recs if not _finite(r["result"].get(metric))]
    recs = [r for r in recs if r not in failed]
    if dataset == "movielens":
        title += f" ({study.movielens_data})"
    sel = [c for c in study.real_select(dataset)]
    sel_done = study.store.finished(f"{dataset}_select")
    if not any(cell_name(c) in sel_done for c in sel):
        return f"{title}: pending (no cell finished).\n"
    lines = []
    for gate, best in study.real_choices(dataset).items():
        if best is None:
            lines.append(f"{ARM_LABELS[gate]}: pending (its selection grid is not finished)")
            continue
        own = ", ".join(f"{k} {best[k]:g}" for k in GATE_KEYS if k in best)
        lines.append(f"{ARM_LABELS[gate]}: lr {best['lr']:g}" + (f", {own}" if own else ""))
    out = f"{title}. Chosen on validation loss: " + "; ".join(lines) + ".\n\n"
    sel_recs = [sel_done[cell_name(c)] for c in sel if cell_name(c) in sel_done]
    out += f"Selection runs' best epochs: {_best_epochs(sel_recs)}.\n\n"
    if failed:
        out += ("Failed evaluation runs (left out of the comparison): "
                + ", ".join(f"{r['params']['gate']} seed {r['params']['seed']}"
                            for r in failed) + ".\n\n")
    vals = paired_values(recs, lambda p: p["gate"], metric)
    if "dselect_k" in vals and len(vals["dselect_k"]) >= 2 and len(vals) == 3:
        out += comparison_markdown(vals, "dselect_k", lower_is_better=lower,
                                   labels=ARM_LABELS) + "\n\n"
        by_gate = defaultdict(list)
        for r in recs:
            by_gate[r["params"]["gate"]].append(r)
        out += "Best epochs: " + "; ".join(
            f"{ARM_LABELS[g]} {_best_epochs(rs)}" for g, rs in by_gate.items()) + "\n"
    else:
        out += "Evaluation seeds: pending.\n"
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _tuned(study: Study) -> str:
    """Read from ``tuning.json`` (never through ``tune``, whose folder lock a running
    worker may hold); final runs that failed leave their seed out of the pairs."""
    from compactnn.experiments.stats import comparison_markdown
    from compactnn.tune.protocol import TuneReport
    from compactnn.tune.summary import load_tuning, wall_time_table

    folder = study.store.root / "planted_tuned"
    if not (folder / "tuning.json").exists():
        return "pending (runs after every other part).\n"
    d = load_tuning(folder)
    pr = d["protocol"]
    rep = TuneReport(pr["direction"], pr["n_trials"], pr["seeds"], pr["tune_seed"],
                     pr["sampler_seed"], pr["n_startup_trials"], d["methods"], d["final"])
    parts = [rep.markdown(), "Budget:\n\n" + wall_time_table(d)]
    gates = [g for g in ("dselect_k", "topk", "softmax") if g in d["final"]]
    for metric, lower, title in (("test", True, "test MSE"), ("exact", False, "exact support")):
        recs = [{"params": {"gate": g, "seed": s}, "result": r}
                for g in gates for s, r in zip(pr["seeds"], d["final"][g], strict=False)
                if _finite(r.get(metric))]
        vals = paired_values(recs, lambda q: q["gate"], metric)
        if "dselect_k" in vals and len(vals["dselect_k"]) >= 2 and len(vals) == len(gates):
            parts.append(f"**{title}** ({len(vals['dselect_k'])} seeds)\n\n"
                         + comparison_markdown(vals, "dselect_k", lower_is_better=lower,
                                               labels=ARM_LABELS))
    parts.append("Best epochs: " + "; ".join(
        f"{ARM_LABELS[g]} {_best_epochs([{'result': r} for r in d['final'][g]])}"
        for g in gates))
    return "\n\n".join(parts) + "\n"


def report(root: str | Path, figure: str | Path | None = None,
           doc_dir: str | Path | None = None) -> str:
    """The markdown report of the finished cells under ``root``; the figure's link is
    relative to ``doc_dir`` (the folder of the document it goes into; default: the
    figure's own folder)."""
    study = Study(root, log=lambda _m: None)
    md = ["#### Progress\n", _progress(study), "\n#### Planted experts: chosen on validation "
          "(selection seed)\n", _choices(study), "\n#### Planted experts: matched settings, "
          "evaluation seeds\n", _planted_eval(study),
          "\n#### Planted experts: saturation and remedies\n", _remedies(study),
          "\n#### Planted experts: remedies where saturation comes early (gamma 1)\n",
          _remedies_g1(study)]
    if figure is not None:
        png = saturation_figure(study, figure)
        if png is not None:
            link = (Path(os.path.relpath(png, doc_dir)).as_posix() if doc_dir is not None
                    else png.name)
            md.append(f"\n![saturation]({link})\n")
    md += ["\n#### Planted experts: tuned comparison (15 random trials per gate)\n",
           _tuned(study)]
    md += ["\n#### Multi-Fashion-MNIST\n",
           _real(study, "fashion", "test", False, "mean test accuracy"),
           "\n#### MovieLens\n", _real(study, "movielens", "test", False, "test AUC, watch")]
    return "\n".join(md)


BEGIN, END = "<!-- mtl_dselect report: begin -->", "<!-- mtl_dselect report: end -->"


def update_block(path: str | Path, markdown: str) -> None:
    """Replace the text between the report markers of ``path`` (each on its own line,
    once) with ``markdown``; the file is left as it was when the markers are missing."""
    path = Path(path)
    text = path.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{path} needs one {BEGIN!r} line followed by one {END!r} line")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{markdown.strip()}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compactnn.experiments.mtl_dselect_report")
    ap.add_argument("--root", default="results/mtl_dselect")
    ap.add_argument("--figure", default=None, help="where to save the saturation plot")
    ap.add_argument("--update", default=None,
                    help="a markdown file whose report block to replace (else print)")
    args = ap.parse_args(argv)
    md = report(args.root, args.figure,
                Path(args.update).parent if args.update else Path.cwd())
    if args.update:
        update_block(args.update, md)
    else:
        print(md)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
