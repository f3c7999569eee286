"""The DSelect-k study's driver: cell names, choices on validation, remedies, resuming,
and the planted-experts additions (frozen ground-truth experts, spare experts,
saturation history)."""

import math

import numpy as np
import pytest
import torch

from compactnn.data.planted import make_planted_experts, planted_expert_outputs
from compactnn.experiments import mtl_dselect as M
from compactnn.experiments.planted_moe import PlantedExperts, routing_matrix, train_routed


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(M, "PLANTED", {
        **M.PLANTED, "tasks": 8, "clusters": 2, "n_train": 128, "n_val": 32, "n_test": 32,
        "lrs": (3e-3, 1e-2), "epochs": 3, "patience": 2, "seeds": (0,),
        "remedy_seeds": (0,), "spare": 2, "remedy_epochs": 1, "batch_size": 64})
    monkeypatch.setattr(M, "DSK_GAMMAS", (0.1, 1.0))
    monkeypatch.setattr(M, "DSK_ENTROPIES", (0.1, 1.0, 5.0))
    monkeypatch.setattr(M, "TOPK_IMPORTANCE", (0.1,))


def test_cell_name_is_sorted_and_short():
    assert M.cell_name({"lr": 0.001, "arm": "topk", "seed": 3}) == "arm=topk+lr=0.001+seed=3"
    long = {f"key{i}": "v" * 10 for i in range(20)}
    name = M.cell_name(long)
    assert len(name) <= 150 and name == M.cell_name(dict(reversed(long.items())))
    assert M.cell_name({**long, "key0": "w" * 10}) != name


def test_best_by_val_skips_non_finite_and_filters():
    recs = {"a": {"params": {"arm": "x", "i": 1}, "result": {"val": 0.5}},
            "b": {"params": {"arm": "x", "i": 2}, "result": {"val": math.nan}},
            "c": {"params": {"arm": "x", "i": 3}, "result": {"val": 0.2}},
            "d": {"params": {"arm": "y", "i": 4}, "result": {"val": 0.1}}}
    assert M.best_by_val(recs, lambda p: p["arm"] == "x") == {"arm": "x", "i": 3}
    assert M.best_by_val(recs, lambda p: p["arm"] == "x", lower=False) == {"arm": "x", "i": 1}
    assert M.best_by_val(recs, lambda p: p["arm"] == "z") is None


def test_remedy_params():
    assert M.remedy_params("none", 10, 3) == {}
    assert M.remedy_params("entropy_ramp", 10, 3) == {"entropy_reg_start": 0.0,
                                                      "schedule_steps": 30}
    assert M.remedy_params("warmup_box", 10, 3)["warmup_steps"] == 30
    assert M.remedy_params("gate_lr_warmup", 10, 3)["gate_warmup_epochs"] == 3
    with pytest.raises(ValueError, match="unknown remedy"):
        M.remedy_params("magic", 10, 3)


def test_planted_parts_run_in_order_and_resume(tiny, tmp_path, monkeypatch):
    study = M.Study(tmp_path, log=lambda _m: None)
    n = study.run_part("planted_select")
    # per lr: oracle, random, softmax, 1 top-k, 2 gammas; then 2 more entropies per lr
    assert n == 2 * (3 + 1 + 2) + 2 * 2
    sel = study.store.finished("planted_select")
    assert len(sel) == n
    dsk = [r for r in sel.values() if r["params"]["arm"] == "dselect_k"]
    for rec in dsk:
        assert rec["params"]["gamma"] in (0.1, 1.0)
        hist = rec["result"]["saturation_history"]
        assert len(hist) == rec["result"]["epochs_run"]
        assert all(0.0 <= s <= 1.0 for s in hist)
    choice = study.planted_choice("dselect_k")
    assert choice["arm"] == "dselect_k"
    assert choice["seed"] == M.PLANTED["select_seed"]
    assert study.run_part("planted_eval") == 5
    ev = study.store.finished("planted_eval")
    assert {r["params"]["seed"] for r in ev.values()} == {0}
    # a restarted driver runs nothing again
    calls = []
    monkeypatch.setattr(M, "run_planted_cell", lambda *a: calls.append(a) or {"val": 0.0})
    study2 = M.Study(tmp_path, log=lambda _m: None)
    study2.run_part("planted_select")
    study2.run_part("planted_eval")
    assert calls == []
    status = study2.status()
    assert status["planted_select"] == (n, n) and status["planted_eval"] == (5, 5)
    planned = study2.planned()
    assert planned["planted_select"] == n and planned["planted_eval"] == 5


def test_remedy_cells_cover_experts_spares_and_remedies(tiny, tmp_path, monkeypatch):
    study = M.Study(tmp_path, log=lambda _m: None)
    study.run_part("planted_select")
    choice = study.planted_choice("dselect_k")
    for lr in M.PLANTED["lrs"]:  # the remedies' DSelect-k: its best at remedy_lr
        monkeypatch.setitem(M.PLANTED, "remedy_lr", lr)
        base = study.remedy_base()
        assert base["lr"] == lr and base["arm"] == "dselect_k"
        cells = list(study.planted_remedies())
        dsk = [c for c in cells if c["arm"] == "dselect_k"]
        assert {c["lr"] for c in dsk} == {lr}
        # 4 expert settings x 5 remedies, less the one planted_eval has when the
        # remedies' configuration is the evaluated one
        assert len(dsk) == 4 * len(M.REMEDIES) - (base == choice)
        assert len(cells) - len(dsk) == 4 * 3  # the other four arms, less learned / no spare
        assert study.planned()["planted_remedies"] == len(cells)
        ramp = [c for c in dsk if c["remedy"] == "gamma_ramp"][0]
        assert ramp["gamma_start"] == min(10 * ramp["gamma"], 1e4)
        assert ramp["schedule_steps"] == 128 // 64 * 1
        assert {(c["experts"], c["spare"]) for c in cells} == {
            ("learned", 0), ("learned", 2), ("frozen", 0), ("frozen", 2)}
        g1 = list(study.planted_remedies_g1())
        assert len(g1) == study.planned()["planted_remedies_g1"] == 2 * len(M.REMEDIES)
        assert {(c["gamma"], c["lr"], c["spare"]) for c in g1} == {(M.EARLY_GAMMA, lr, 0)}
        assert {(c["experts"], c["remedy"]) for c in g1} == {
            (e, r) for e in ("learned", "frozen") for r in M.REMEDIES}
        ramp = [c for c in g1 if c["remedy"] == "gamma_ramp"][0]
        assert ramp["gamma_start"] == 10 * M.EARLY_GAMMA
        assert all(c["entropy_reg"] == base["entropy_reg"] for c in g1)


def test_frozen_planted_experts_compute_the_generator_and_oracle_recovers_exactly(tiny):
    data = make_planted_experts(8, 2, 2, input_dim=16, n_train=128, n_val=32, n_test=32,
                                seed=0)
    bank = PlantedExperts(data.meta["experts"])
    x = data.test.x
    np.testing.assert_allclose(bank(x).numpy(), planted_expert_outputs(data.meta["experts"],
                                                                        x.numpy()),
                               rtol=1e-4, atol=1e-5)
    assert not list(bank.parameters())
    params = {"arm": "oracle", "seed": 0, "lr": 3e-3, "batch_size": 64, "epochs": 2,
              "patience": 2, "experts": "frozen", "spare": 2}
    # frozen experts keep the planted ids: the oracle routes to each task's planted pair
    out = M.run_planted_cell(data, params)
    assert out["exact"] == 1.0 and out["precision"] == 1.0 and out["recall"] == 1.0
    assert out["ari"] == 1.0
    # with learned experts the oracle reserves experts c k .. c k + k - 1 instead
    learned = M.run_planted_cell(data, {**params, "experts": "learned", "spare": 0})
    oracle = routing_matrix("oracle", 8, data.meta["clusters"], 4, 2)
    assert learned["experts_per_task"] == 2.0
    assert np.allclose(oracle.sum(1), 1.0)
    assert out["saturation_history"] == []


def test_frozen_experts_do_not_train_and_spares_are_extra(tiny):
    from compactnn.data.planted import with_spare_experts

    data = make_planted_experts(8, 2, 2, input_dim=16, n_train=128, n_val=32, n_test=32,
                                seed=0)
    frozen = with_spare_experts(data.meta["experts"], 2, seed=0)
    r = train_routed(data, gate="dselect_k", gate_params={"gamma": 1.0}, num_experts=6,
                     epochs=2, batch_size=64, frozen_experts=frozen, patience=None)
    torch.testing.assert_close(r["model"].experts.w1, torch.as_tensor(frozen["w1"]).float())
    assert r["weights"].shape == (8, 6)
    assert len(r["saturation_history"]) == 2
    with pytest.raises(ValueError, match="frozen_experts holds 6"):
        train_routed(data, gate="softmax", num_experts=4, epochs=1, batch_size=64,
                     frozen_experts=frozen)


@pytest.mark.parametrize("kwargs, match", [
    ({"gate_warmup_epochs": 2}, "needs a learned gate"),
    ({"gate": "softmax", "gate_warmup_epochs": 5}, "gate_warmup_epochs"),
    ({"gate": "softmax", "gate_warmup_factor": 0.0}, "gate_warmup_factor"),
    ({"gate": "softmax", "aux_per_task": 1}, "aux_per_task"),
])
def test_train_routed_refuses_bad_options(kwargs, match):
    data = make_planted_experts(4, 2, 2, input_dim=4, n_train=16, n_val=4, n_test=4, seed=0)
    if "gate" not in kwargs:
        kwargs["routing"] = np.full((4, 4), 0.25)
    with pytest.raises((ValueError, TypeError), match=match):
        train_routed(data, num_experts=4, epochs=2, batch_size=8, **kwargs)


def test_aux_per_task_divides_the_regularizer_by_the_number_of_tasks():
    data = make_planted_experts(4, 2, 2, input_dim=4, n_train=16, n_val=4, n_test=4, seed=0)

    def run(weight, flag):
        return train_routed(data, gate="dselect_k", gate_params={"entropy_reg": weight},
                            num_experts=4, epochs=3, batch_size=8, lr=0.05, patience=None,
                            aux_per_task=flag)

    per_task, summed = run(5.0, True), run(5.0 / 4, False)
    torch.testing.assert_close(per_task["model"].gates.z_logits,
                               summed["model"].gates.z_logits)
    assert per_task["val_history"] == pytest.approx(summed["val_history"])


def test_aux_per_task_leaves_the_cross_task_balancing_term_alone():
    data = make_planted_experts(4, 2, 2, input_dim=4, n_train=16, n_val=4, n_test=4, seed=0)

    def run(flag):
        return train_routed(data, gate="topk", gate_params={"importance_reg": 0.5},
                            num_experts=4, epochs=2, batch_size=8, lr=0.05, patience=None,
                            aux_per_task=flag)

    a, b = run(True), run(False)
    torch.testing.assert_close(a["model"].gates.gate_logits, b["model"].gates.gate_logits)
    assert a["val_history"] == b["val_history"]


def test_a_failing_configuration_is_recorded_and_skipped_but_missing_data_stops(
        tiny, tmp_path, monkeypatch):
    calls = []

    def diverges(data, params):
        calls.append(params)
        raise RuntimeError("loss became NaN")

    monkeypatch.setattr(M, "run_planted_cell", diverges)
    study = M.Study(tmp_path, log=lambda _m: None)
    n = study.run_part("planted_select")
    recs = study.store.finished("planted_select")
    assert len(recs) == n == len(calls)
    rec = next(iter(recs.values()))["result"]
    assert rec["failed"] == "RuntimeError: loss became NaN" and math.isnan(rec["val"])
    assert study.planted_choice("dselect_k") is None  # nothing finite to choose from
    study.run_part("planted_select")
    assert len(calls) == n  # recorded failures are not retried

    def missing(data, params):
        raise FileNotFoundError("no data")

    monkeypatch.setattr(M, "run_real_cell", missing)
    monkeypatch.setattr(M.Study, "real_data", lambda self, ds: None)
    with pytest.raises(FileNotFoundError):
        study.run_part("fashion_select")
    assert study.store.finished("fashion_select") == {}


def test_movielens_cells_name_their_data_and_choices_never_mix_data_sets(tmp_path):
    """A study on MovieLens-1M labels its cells ``data=movielens_1m`` and chooses only among
    them, even when a better-scoring cell of the 100k sample lies in the same folder."""
    with pytest.raises(ValueError, match="movielens_data"):
        M.Study(tmp_path, log=lambda _m: None, movielens_data="movielens_20m")
    study = M.Study(tmp_path, log=lambda _m: None, movielens_data="movielens_1m")
    first = next(study.real_select("movielens"))
    assert first["data"] == "movielens_1m" and first["dataset"] == "movielens"
    assert "data=movielens_1m" in M.cell_name(first)
    fashion = next(study.real_select("fashion"))
    assert "data" not in fashion  # only MovieLens has two data sets
    sample = M.Study(tmp_path, log=lambda _m: None)
    vals = {"movielens": (0.5, 0.4, 0.1), "movielens_1m": (0.3, 0.2, 0.25)}
    for st in (study, sample):  # the softmax grid of each data set, in one folder
        cells = [c for c in st.real_select("movielens") if c["gate"] == "softmax"]
        for c, val in zip(cells, vals[st.movielens_data], strict=True):
            st.store.write("movielens_select", M.cell_name(c), c, {"val": val})
    evals = [p for p in study.real_eval("movielens") if p["gate"] == "softmax"]
    assert evals and {(p["data"], p["lr"]) for p in evals} == {("movielens_1m", 1.6e-4)}
    evals = [p for p in sample.real_eval("movielens") if p["gate"] == "softmax"]
    assert {(p["data"], p["lr"]) for p in evals} == {("movielens", 5e-4)}


def _finish(study, part, params, val):
    study.store.write(part, M.cell_name(params), params, {"val": val})


def test_real_choices_wait_for_the_whole_grid_and_ignore_cells_outside_it(tmp_path):
    """Stage B (a gate's own grid) is listed only once the gate's every learning-rate cell
    is finished, the evaluation seeds only once stage B is; a finished cell outside the
    planned grid (left by an earlier provisional choice) never becomes the choice."""
    study = M.Study(tmp_path, log=lambda _m: None)
    stage_a = list(study.real_select("fashion"))
    assert len(stage_a) == 9 and all(c["epochs"] == M.REAL["fashion"]["select_epochs"]
                                      for c in stage_a)
    dsk = [c for c in stage_a if c["gate"] == "dselect_k"]
    for c, val in zip(dsk[:2], (0.5, 0.4), strict=True):
        _finish(study, "fashion_select", c, val)
    stale = {**dsk[0], "gamma": 0.01}  # a better-scoring cell at a lr that did not win
    _finish(study, "fashion_select", stale, 0.01)
    assert len(list(study.real_select("fashion"))) == 9  # no stage B on a partial grid
    assert study.real_choice("fashion", "dselect_k") is None
    assert list(study.real_eval("fashion")) == []
    _finish(study, "fashion_select", dsk[2], 0.3)  # lr 1e-3 wins stage A
    stage_b = list(study.real_select("fashion"))[9:]
    assert [c["gamma"] for c in stage_b] == [0.01, 0.1, 5.0, 10.0]
    assert {c["lr"] for c in stage_b} == {dsk[2]["lr"]}
    assert study.real_choice("fashion", "dselect_k") is None  # stage B not finished
    for c, val in zip(stage_b, (0.35, 0.2, 0.25, 0.4), strict=True):
        _finish(study, "fashion_select", c, val)
    choice = study.real_choice("fashion", "dselect_k")
    assert (choice["lr"], choice["gamma"]) == (dsk[2]["lr"], 0.1)  # not the stale 0.01
    evals = list(study.real_eval("fashion"))
    assert [c["seed"] for c in evals] == list(M.REAL["fashion"]["seeds"])
    assert all(c["epochs"] == M.REAL["fashion"]["epochs"] and c["gamma"] == 0.1
               for c in evals)


def test_planted_entropy_stage_waits_for_every_gamma_of_its_lr(tiny, tmp_path):
    study = M.Study(tmp_path, log=lambda _m: None)
    grid = list(study.planted_select())
    assert len(grid) == 2 * (3 + 1 + 2)  # nothing finished: no entropy cells yet
    lr = M.PLANTED["lrs"][0]
    gammas = [c for c in grid if c["arm"] == "dselect_k" and c["lr"] == lr]
    _finish(study, "planted_select", gammas[0], 0.5)
    assert len(list(study.planted_select())) == len(grid)
    _finish(study, "planted_select", gammas[1], 0.4)
    ents = list(study.planted_select())[len(grid):]
    assert [(c["gamma"], c["entropy_reg"]) for c in ents] == [(1.0, 1.0), (1.0, 5.0)]
    for c in grid:  # every other selection cell, worse than the chosen DSelect-k
        if c not in gammas:
            _finish(study, "planted_select", c, 0.9)
    assert study.planted_choice("dselect_k") is None  # its entropy stage is unfinished
    assert all(c["arm"] != "dselect_k" for c in study.planted_eval())
    assert study.planted_choice("topk") is not None
