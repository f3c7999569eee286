"""DSelect-k at the authors' settings (issue 22): a resumable study, one cell at a time.

Every cell (one configuration at one seed) is written to its own JSON under the results
folder (:class:`~compactnn.experiments.cells.CellStore`); a restarted driver skips the
finished cells, and stages that choose a configuration read it from the finished
validation cells of the stage before. The parts run in this order:

1. ``planted_select`` / ``planted_eval``: **matched settings** on planted experts
   (:mod:`compactnn.experiments.planted_moe`). Every arm is trained on one grid of the
   shared hyper-parameters (learning rate; batch, epoch cap and patience fixed) with
   early stopping on the validation MSE (the validation loss) and long patience; each
   gate's own parameters come from the authors' categorical grids (DSelect-k: gamma at a
   fixed entropy weight, then the entropy weight at the best gamma, per learning rate;
   Top-k: its balancing weight). Selection is on validation MSE at a selection seed whose
   data is not used for evaluation; the chosen configuration of each arm is re-trained
   at the evaluation seeds.
2. ``planted_remedies`` (and ``planted_remedies_g1``): the saturation study. DSelect-k
   at its best configuration at lr 3e-3 (:meth:`Study.remedy_base`) with each remedy
   (none, entropy-weight ramp, gamma ramp, warm-up box, routing learning-rate warm-up),
   with learned or frozen ground-truth experts, without or with spare experts; the
   other arms at their chosen configurations in the same expert
   settings. Every DSelect-k cell logs the fraction of saturated selector logits after
   each epoch. ``planted_remedies_g1`` repeats the remedies at the authors' default
   gamma, where the logits saturate early (learned and frozen experts, no spare).
3. ``fashion_*`` and ``movielens_*``: the same matched-settings protocol through
   ``compactnn mtl`` (stage A: the learning-rate grid at each gate's default parameters;
   stage B: the gate's own grid at its best learning rate; then the evaluation seeds).
4. ``planted_tuned``: the tuned comparison (15 trials per gate, gamma and the entropy
   weight categorical), last.

``python -m compactnn.experiments.mtl_dselect run [--root DIR] [--only PART ...]`` runs
(or resumes) the study; ``... status`` prints how many cells are done per part. Workers
may share a folder: each passes over the cells another is running (the cells' claims),
and a later run completes what the others left.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from compactnn._checks import check_choice
from compactnn.experiments.cells import CellStore
from compactnn.experiments.mtl_dselect_cells import (
    CELL_ERRORS,
    run_planted_cell,
    run_real_cell,
    timed,
)

__all__ = ["ARMS", "CELL_ERRORS", "DSK_ENTROPIES", "DSK_GAMMAS", "EARLY_GAMMA", "PARTS",
           "PLANTED", "REAL", "REMEDIES", "Study", "best_by_val", "cell_name", "main",
           "remedy_params"]

#: The authors' categorical grids (their follow-up code's random search draws from these).
DSK_GAMMAS = (1e-3, 1e-2, 0.1, 1.0, 5.0, 10.0)
DSK_ENTROPIES = (0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
TOPK_IMPORTANCE = (0.01, 0.1, 1.0)
DSK_DEFAULT = {"gamma": 1.0, "entropy_reg": 0.1}
TOPK_DEFAULT = {"importance_reg": 0.1}

PLANTED: dict[str, Any] = {
    "tasks": 128, "clusters": 8, "k": 2, "input_dim": 16, "n_train": 3000, "n_val": 500,
    "n_test": 1000, "hidden": 16, "out": 8, "batch_size": 128, "lrs": (1e-3, 3e-3, 1e-2),
    "epochs": 600, "patience": 60, "select_seed": 100, "seeds": tuple(range(10)),
    "remedy_seeds": tuple(range(5)), "spare": 8, "remedy_epochs": 30, "remedy_lr": 3e-3}

#: The planted-experts arms: routing controls first, then the gates.
ARMS = ("oracle", "random", "dselect_k", "topk", "softmax")

#: Remedies of DSelect-k's early saturation (gate options; lengths in epochs).
REMEDIES = ("none", "entropy_ramp", "gamma_ramp", "warmup_box", "gate_lr_warmup")

#: The smooth-step width of the remedies' second test (``planted_remedies_g1``): the
#: authors' default, at which the selection runs saturated within the first 10 epochs,
#: so that a remedy acting early has a saturation to act on (at the chosen, wider
#: gamma nothing saturates before epoch 300).
EARLY_GAMMA = 1.0

REAL: dict[str, dict[str, Any]] = {
    # Multi-Fashion-MNIST: LeNet experts, lr 1e-4..1e-3 (the authors' range)
    "fashion": {"lrs": (1e-4, 3e-4, 1e-3), "batch_size": 256, "select_epochs": 15,
                "epochs": 30, "patience": 8, "seeds": tuple(range(5)), "max_train": 10_000,
                "max_eval": 5000, "metric": "val_mean_loss", "test": "test_mean_accuracy"},
    # MovieLens, the authors' layout on the installable 100k sample; Adam 5e-5..5e-4
    "movielens": {"lrs": (5e-5, 1.6e-4, 5e-4), "batch_size": 512, "select_epochs": 12,
                  "epochs": 40, "patience": 8, "seeds": tuple(range(3)), "max_train": None,
                  "max_eval": None, "metric": "val_watch_loss", "test": "test_watch_auc"},
}

PARTS = ("planted_select", "planted_eval", "planted_remedies", "planted_remedies_g1",
         "fashion_select", "fashion_eval", "movielens_select", "movielens_eval", "planted_tuned")


def cell_name(params: Mapping[str, Any]) -> str:
    """A file name from the cell's parameters (sorted ``key=value`` joined by ``+``)."""
    import hashlib

    def show(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    name = "+".join(f"{k}={show(params[k])}" for k in sorted(params))
    if len(name) > 150:  # file names stay short: a readable head and a hash of the whole
        name = name[:130] + "+h" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return name


def best_by_val(records: Mapping[str, Mapping[str, Any]], keep: Callable[[dict], bool],
                lower: bool = True) -> dict[str, Any] | None:
    """The params of the finished record with the best finite validation score among
    those ``keep(params)`` accepts (ties: the first in name order); None when none."""
    best, best_val = None, math.inf
    for name in sorted(records):
        rec = records[name]
        val = rec["result"].get("val")
        if not keep(rec["params"]) or not isinstance(val, (int, float)) \
                or not math.isfinite(val):
            continue
        score = val if lower else -val
        if score < best_val:
            best, best_val = dict(rec["params"]), score
    return best


def remedy_params(remedy: str, steps_per_epoch: int, epochs: int) -> dict[str, Any]:
    """The gate options (or trainer options) of a remedy, over the first ``epochs``."""
    steps = steps_per_epoch * epochs
    if remedy == "none":
        return {}
    if remedy == "entropy_ramp":  # no push to one-hot until the experts have formed
        return {"entropy_reg_start": 0.0, "schedule_steps": steps}
    if remedy == "gamma_ramp":  # a 10x wider smooth-step at first, narrowing
        return {"gamma_start": "10x", "schedule_steps": steps}
    if remedy == "warmup_box":
        return {"warmup_steps": steps, "warmup_margin": 0.5}
    if remedy == "gate_lr_warmup":
        return {"gate_warmup_epochs": epochs, "gate_warmup_factor": 0.1}
    raise ValueError(f"unknown remedy {remedy!r}; remedies: {', '.join(REMEDIES)}")


class Study:
    """The cells of every part, in order (see the module doc)."""

    def __init__(self, root: str | Path, log: Callable[[str], None] = print,
                 movielens_data: str = "movielens") -> None:
        from compactnn.data.movielens import MOVIELENS_DATASETS

        #: which MovieLens the movielens parts train on: the installable 100k sample, or
        #: MovieLens-1M (``compactnn data fetch movielens_1m``), the authors' data set
        self.movielens_data = check_choice("movielens_data", movielens_data,
                                           MOVIELENS_DATASETS)
        self.store = CellStore(root)
        self.log = log
        self._planted_data: dict[int, Any] = {}
        self._real_data: dict[str, Any] = {}

    # -- planted experts

    def planted_data(self, seed: int):
        from compactnn.data.planted import make_planted_experts

        if seed not in self._planted_data:
            p = PLANTED
            self._planted_data = {seed: make_planted_experts(
                p["tasks"], p["clusters"], p["k"], input_dim=p["input_dim"],
                n_train=p["n_train"], n_val=p["n_val"], n_test=p["n_test"], seed=seed)}
        return self._planted_data[seed]

    def planted_cell(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Train one planted-experts cell (see :func:`run_planted_cell`)."""
        return run_planted_cell(self.planted_data(int(params["seed"])), params)

    def _planted_base(self, arm: str, lr: float, seed: int, **extra: Any) -> dict[str, Any]:
        p = PLANTED
        return {"arm": arm, "lr": lr, "seed": seed, "batch_size": p["batch_size"],
                "epochs": p["epochs"], "patience": p["patience"], "experts": "learned",
                "spare": 0, **extra}

    @staticmethod
    def chosen(done: Mapping[str, Mapping[str, Any]], cells: list[dict[str, Any]]
               ) -> dict[str, Any] | None:
        """The params of the best of ``cells`` by validation score among the finished
        records ``done``, once every one of them is finished; None before. A choice is
        never made on a partial grid (a resumed or shared run would otherwise build on a
        provisional winner), and finished cells outside ``cells`` never enter it."""
        names = [cell_name(c) for c in cells]
        if not names or any(n not in done for n in names):
            return None
        return best_by_val({n: done[n] for n in names}, lambda q: True)

    def _planted_grid(self, lr: float) -> list[dict[str, Any]]:
        s = PLANTED["select_seed"]
        cells = [self._planted_base(arm, lr, s) for arm in ("oracle", "random", "softmax")]
        cells += [self._planted_base("topk", lr, s, importance_reg=imp)
                  for imp in TOPK_IMPORTANCE]
        cells += [self._planted_base("dselect_k", lr, s, gamma=gamma,
                                     entropy_reg=DSK_DEFAULT["entropy_reg"])
                  for gamma in DSK_GAMMAS]
        return cells

    def _planted_selection(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """The selection cells listed now, and the finished ones (one read of the folder)."""
        done = self.store.finished("planted_select")
        grids = [self._planted_grid(lr) for lr in PLANTED["lrs"]]
        cells = [c for grid in grids for c in grid]
        for grid in grids:  # the entropy weight at the best gamma of this lr
            best = self.chosen(done, [c for c in grid if c["arm"] == "dselect_k"])
            if best is not None:
                cells += [{**best, "entropy_reg": ent} for ent in DSK_ENTROPIES
                          if ent != DSK_DEFAULT["entropy_reg"]]
        return cells, done

    def planted_select(self) -> Iterator[dict[str, Any]]:
        yield from self._planted_selection()[0]

    def planted_choices(self) -> dict[str, dict[str, Any] | None]:
        """Each arm's configuration chosen on validation (None until its every selection
        cell, the entropy stage included, is finished), and under ``"remedy_base"``
        DSelect-k's best at learning rate ``PLANTED["remedy_lr"]``: the remedies ran at
        3e-3, the learning rate chosen before the selection grid was complete; the
        completed grid chose 1e-2 by a validation MSE 1.3% lower, and the remedies'
        comparisons are within DSelect-k."""
        cells, done = self._planted_selection()
        out = {arm: self.chosen(done, [c for c in cells if c["arm"] == arm])
               for arm in ARMS}
        out["remedy_base"] = self.chosen(done, [
            c for c in cells if c["arm"] == "dselect_k" and c["lr"] == PLANTED["remedy_lr"]])
        return out

    def planted_choice(self, arm: str) -> dict[str, Any] | None:
        """``arm``'s configuration chosen on validation (see :meth:`planted_choices`)."""
        return self.planted_choices()[arm]

    def remedy_base(self) -> dict[str, Any] | None:
        """DSelect-k's configuration in the remedies' parts (see :meth:`planted_choices`)."""
        return self.planted_choices()["remedy_base"]

    def planted_eval(self) -> Iterator[dict[str, Any]]:
        choices = self.planted_choices()
        for seed in PLANTED["seeds"]:
            for arm in ARMS:
                if choices[arm] is not None:
                    yield {**choices[arm], "seed": seed}

    @staticmethod
    def _remedy_cell(base: Mapping[str, Any], remedy: str, **setting: Any) -> dict[str, Any]:
        """``base`` in ``setting`` (seed, experts, spare) with ``remedy``'s options for the
        first ``PLANTED["remedy_epochs"]`` epochs; the gamma ramp starts at 10x gamma."""
        p = PLANTED
        extra = remedy_params(remedy, p["n_train"] // p["batch_size"], p["remedy_epochs"])
        if extra.get("gamma_start") == "10x":
            extra["gamma_start"] = min(10 * base["gamma"], 1e4)
        return {**base, **setting, "remedy": remedy, **extra}

    def planted_remedies(self) -> Iterator[dict[str, Any]]:
        p = PLANTED
        choices = self.planted_choices()
        bases = {arm: choices[arm] for arm in ARMS if arm != "dselect_k"}
        bases["dselect_k"] = choices["remedy_base"]
        for seed in p["remedy_seeds"]:
            for experts in ("learned", "frozen"):
                for spare in (0, p["spare"]):
                    for arm, base in bases.items():
                        if base is None:
                            continue
                        for remedy in REMEDIES if arm == "dselect_k" else ("none",):
                            if (experts, spare, remedy) == ("learned", 0, "none") \
                                    and base == choices[arm]:
                                continue  # the planted_eval cell of this seed
                            yield self._remedy_cell(base, remedy, seed=seed, experts=experts,
                                                    spare=spare)

    def planted_remedies_g1(self) -> Iterator[dict[str, Any]]:
        """The remedies again where saturation comes early: the remedies' DSelect-k
        (:meth:`remedy_base`) at gamma :data:`EARLY_GAMMA`, each remedy, learned or frozen
        ground-truth experts, no spare (the other arms' cells of these settings are in
        ``planted_eval`` and ``planted_remedies``)."""
        base = self.remedy_base()
        if base is None:
            return
        base = {**base, "gamma": EARLY_GAMMA}
        for seed in PLANTED["remedy_seeds"]:
            for experts in ("learned", "frozen"):
                for remedy in REMEDIES:
                    yield self._remedy_cell(base, remedy, seed=seed, experts=experts, spare=0)

    # -- real data through compactnn mtl

    def real_data(self, dataset: str):
        if dataset not in self._real_data:
            r = REAL[dataset]
            if dataset == "fashion":
                from compactnn.data.multi_fashion_mnist import load_multi_fashion_mnist

                data = load_multi_fashion_mnist(seed=0, max_train=r["max_train"],
                                                max_val=r["max_eval"], max_test=r["max_eval"])
            else:
                from compactnn.data.movielens import load_movielens

                data = load_movielens(seed=0, ids_only=True, dataset=self.movielens_data)
            self._real_data = {dataset: data}
        return self._real_data[dataset]

    def real_cell(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return run_real_cell(self.real_data(params["dataset"]), params)

    def _real_base(self, dataset: str, gate: str, lr: float, seed: int, epochs: int,
                   **extra: Any) -> dict[str, Any]:
        r = REAL[dataset]
        data = {"data": self.movielens_data} if dataset == "movielens" else {}
        return {"dataset": dataset, **data, "gate": gate, "lr": lr, "seed": seed,
                "batch_size": r["batch_size"], "epochs": epochs, "patience": r["patience"],
                **extra}

    def _real_selection(self, dataset: str
                        ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """The selection cells listed now (stage A, then each gate's own grid at its best
        learning rate once stage A of that gate is finished), and the finished ones."""
        r = REAL[dataset]
        done = self.store.finished(f"{dataset}_select")
        defaults = {"dselect_k": DSK_DEFAULT, "topk": TOPK_DEFAULT, "softmax": {}}
        cells = [self._real_base(dataset, gate, lr, 0, r["select_epochs"], **extra)
                 for lr in r["lrs"] for gate, extra in defaults.items()]
        for gate, grid in (("dselect_k", [{"gamma": g, "entropy_reg": 0.1}
                                          for g in (0.01, 0.1, 5.0, 10.0)]),
                           ("topk", [{"importance_reg": v} for v in (0.01, 1.0)])):
            best = self.chosen(done, [c for c in cells if c["gate"] == gate])
            if best is not None:
                cells += [{**best, **extra} for extra in grid]
        return cells, done

    def real_select(self, dataset: str) -> Iterator[dict[str, Any]]:
        yield from self._real_selection(dataset)[0]

    def real_choices(self, dataset: str) -> dict[str, dict[str, Any] | None]:
        """Each gate's configuration chosen on validation; None until its every selection
        cell (its own grid included) is finished."""
        cells, done = self._real_selection(dataset)
        return {gate: self.chosen(done, [c for c in cells if c["gate"] == gate])
                for gate in ("dselect_k", "topk", "softmax")}

    def real_choice(self, dataset: str, gate: str) -> dict[str, Any] | None:
        return self.real_choices(dataset)[gate]

    def real_eval(self, dataset: str) -> Iterator[dict[str, Any]]:
        r = REAL[dataset]
        choices = self.real_choices(dataset)
        for seed in r["seeds"]:
            for best in choices.values():
                if best is not None:
                    yield {**best, "seed": seed, "epochs": r["epochs"]}

    # -- the tuned comparison

    def planted_tuned(self):
        """Run (or, when finished, reload) the tuned comparison; its ``TuneReport``."""
        from compactnn.tune import Categorical, LogUniform, Method, tune

        p = PLANTED
        common = {"lr": LogUniform(1e-3, 1e-2)}
        spaces = {"dselect_k": Method({**common, "gamma": Categorical(DSK_GAMMAS),
                                       "entropy_reg": Categorical(DSK_ENTROPIES)}),
                  "topk": Method({**common, "importance_reg": Categorical(TOPK_IMPORTANCE)}),
                  "softmax": Method(dict(common))}

        def run(method: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
            cell = self._planted_base(method, float(params["lr"]), seed,
                                      **{k: v for k, v in params.items() if k != "lr"})
            return timed(self.planted_cell)(cell)

        # 15 random trials (no model-based phase), chosen on the selection seed's data
        return tune(spaces, run, self.store.root / "planted_tuned", n_trials=15,
                    seeds=list(p["seeds"]), direction="minimize", sampler_seed=0,
                    tune_seed=p["select_seed"], n_startup_trials=15, log=self.log)

    # -- driving

    def cells(self, part: str) -> Iterator[dict[str, Any]]:
        if part in ("planted_select", "planted_eval", "planted_remedies",
                    "planted_remedies_g1"):
            return getattr(self, part)()
        dataset, stage = part.rsplit("_", 1)
        return self.real_select(dataset) if stage == "select" else self.real_eval(dataset)

    def run_part(self, part: str) -> int:
        """Run every unfinished cell of ``part``; returns how many cells it has."""
        if part == "planted_tuned":
            from compactnn.tune.storage import TuneFolderBusy

            try:
                self.planted_tuned()
            except TuneFolderBusy:
                self.log("skipping planted_tuned: another worker is running it")
            return 1
        fn = self.real_cell if part.split("_")[0] in REAL else self.planted_cell
        count, seen = 0, set()
        # cells of a stage may depend on its own earlier cells: list them again until no
        # new one appears
        while True:
            new = [c for c in self.cells(part) if cell_name(c) not in seen]
            if not new:
                return count
            for params in new:
                seen.add(cell_name(params))
                count += 1
                # another worker's cell is passed over; a later pass or rerun finds it
                self.store.try_run(part, cell_name(params), params, timed(fn), self.log)

    def planned(self) -> dict[str, int]:
        """How many cells each part has once every choice is made (what ``status``
        lists grows to this)."""
        p, arms = PLANTED, len(ARMS)
        n_dsk = len(DSK_GAMMAS) + len(DSK_ENTROPIES) - (DSK_DEFAULT["entropy_reg"]
                                                       in DSK_ENTROPIES)
        out = {"planted_select": len(p["lrs"]) * (3 + len(TOPK_IMPORTANCE) + n_dsk),
               "planted_eval": arms * len(p["seeds"]),
               "planted_remedies": len(p["remedy_seeds"])
               * (4 * (arms - 1 + len(REMEDIES)) - arms),
               "planted_remedies_g1": len(p["remedy_seeds"]) * 2 * len(REMEDIES)}
        choices = self.planted_choices()
        if choices["remedy_base"] not in (None, choices["dselect_k"]):
            out["planted_remedies"] += len(p["remedy_seeds"])  # its own no-remedy cells
        for ds, r in REAL.items():
            out[f"{ds}_select"] = 3 * len(r["lrs"]) + 4 + 2
            out[f"{ds}_eval"] = 3 * len(r["seeds"])
        return out

    def status(self) -> dict[str, tuple[int, int]]:
        """``{part: (finished, listed)}`` (dependent cells are listed once their inputs
        are finished)."""
        out = {}
        for part in PARTS[:-1]:
            names = {cell_name(c) for c in self.cells(part)}
            done = set(self.store.finished(part))
            out[part] = (len(names & done), len(names))
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compactnn.experiments.mtl_dselect",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("run", "status"))
    ap.add_argument("--root", default="results/mtl_dselect")
    ap.add_argument("--only", nargs="*", choices=PARTS, default=None)
    ap.add_argument("--movielens-data", choices=("movielens", "movielens_1m"),
                    default="movielens",
                    help="the MovieLens of the movielens parts: the installable 100k sample "
                         "(default) or MovieLens-1M, the authors' data set (`compactnn data "
                         "fetch movielens_1m` first); its cells are told apart by their data")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    study = Study(args.root, log, movielens_data=args.movielens_data)
    if args.command == "status":
        planned = study.planned()
        for part, (done, listed) in study.status().items():
            print(f"{part}: {done} of {planned[part]} cells done ({listed} listed so far; "
                  "later ones wait for the choices they depend on)")
        return 0
    for part in args.only or PARTS:
        try:
            n = study.run_part(part)
        except FileNotFoundError as e:  # a data set that is not installed
            log(f"skipping {part}: {e}")
            continue
        log(f"finished {part} ({n} cells)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
