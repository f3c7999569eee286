"""``compactnn mtl``: an option that does not apply to the chosen data set, gate or
expert architecture is an error naming it, never silently ignored."""

from __future__ import annotations

import dataclasses
import itertools
from typing import get_args, get_type_hints

import pytest

from compactnn.cli import main
from compactnn.config import ConfigError, build_config, parse_overrides
from compactnn.tasks.mtl import MTLConfig
from compactnn.tasks.mtl.config import (
    DATA_OPTIONS,
    EXPERT_OPTIONS,
    GATE_OPTIONS,
    DataConfig,
    ExpertConfig,
    GateConfig,
)

# one valid value other than the default for each option owned by some choices
NON_DEFAULT = {
    "gate": {"k": "3", "gamma": "2.0", "entropy_reg": "0.5", "reduction": "sum",
             "noisy": "false", "importance_reg": "0.5", "load_reg": "0.2"},
    "data": {"n_train": "300", "n_val": "20", "n_test": "30", "input_dim": "12",
             "correlation": "0.9", "noise_std": "0.3", "num_tasks": "6", "num_clusters": "2",
             "root": "/nowhere", "val_size": "100", "negatives": "3",
             "rating_threshold": "3.5"},
    "experts": {"hidden": "[7]", "dropout": "0.2", "channels": "[4]"},
}
TABLES = {"gate": ("name", GATE_OPTIONS, GateConfig), "data": ("name", DATA_OPTIONS, DataConfig),
          "experts": ("arch", EXPERT_OPTIONS, ExpertConfig)}


def build(*overrides: str) -> MTLConfig:
    return build_config(MTLConfig, parse_overrides(list(overrides)))


def _grid():
    for section, (selector, table, _) in TABLES.items():
        for choice, option in itertools.product(table, NON_DEFAULT[section]):
            yield section, selector, choice, option


@pytest.mark.parametrize("section,selector,choice,option", list(_grid()))
def test_an_option_is_accepted_exactly_where_it_applies(section, selector, choice, option):
    extra = ["gate.per_example=true"] if (section, option) == ("gate", "reduction") else []
    overrides = [f"{section}.{selector}={choice}", *extra,
                 f"{section}.{option}={NON_DEFAULT[section][option]}"]
    if option in TABLES[section][1][choice]:
        build(*overrides)
    else:
        with pytest.raises(ConfigError, match=rf"^{section}\.{option} applies to .* only, "
                                              rf"not {section}\.{selector}={choice} \(got "):
            build(*overrides)


@pytest.mark.parametrize("overrides,message", [
    (["data.num_tasks=4"], "data.num_tasks applies to clustered data only, not "
                           "data.name=synthetic (got data.num_tasks=4)"),
    (["data.num_clusters=2"], "data.num_clusters applies to clustered data only"),
    (["data.val_size=100"], "data.val_size applies to multi_fashion_mnist data only"),
    (["data.negatives=2"], "data.negatives applies to movielens and movielens_1m data only"),
    (["data.name=movielens", "data.root=/data"],
     "data.root applies to multi_fashion_mnist and census data only, not "
     "data.name=movielens"),
    (["gate.name=topk", "gate.entropy_reg=0.5"],
     "gate.entropy_reg applies to dselect_k gates only, not gate.name=topk "
     "(got gate.entropy_reg=0.5)"),
    (["gate.name=topk", "gate.gamma=2"], "gate.gamma applies to dselect_k gates only"),
    (["gate.name=softmax", "gate.k=3"],
     "gate.k applies to dselect_k and topk gates only, not gate.name=softmax (got gate.k=3)"),
    (["gate.noisy=false"], "gate.noisy applies to topk gates only, not gate.name=dselect_k "
                           "(got gate.noisy=false)"),
    (["gate.importance_reg=0.5"], "gate.importance_reg applies to topk gates only"),
    (["gate.name=dselect_k", "gate.reduction=sum"],
     "gate.reduction applies to per-example gates only, not gate.per_example=false"),
    (["experts.channels=[4,8]"], "experts.channels applies to conv and lenet experts only, "
                                 "not experts.arch=mlp (got experts.channels=[4, 8])"),
    (["experts.arch=conv", "experts.hidden=[5]"],
     "experts.hidden applies to mlp and lenet experts only, not experts.arch=conv"),
    (["loss.weights=0,0"], "loss.weights=[0.0, 0.0] are all 0: no task would be trained"),
])
def test_the_reported_ignored_options_are_errors_naming_them(overrides, message, capsys):
    with pytest.raises(ConfigError) as info:
        build(*overrides)
    assert str(info.value).startswith(message)
    # the command line reports it as one line and exit code 2, before any work
    assert main(["mtl", *overrides, "out=/nonexistent/never_created"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message) and len(err.strip().splitlines()) == 1


def test_defaults_and_partial_zero_weights_are_accepted():
    """An option at its default is not 'set'; one task weighted 0 still trains another."""
    build("gate.name=softmax", "gate.k=2")
    build("gate.name=topk", "gate.gamma=1.0", "gate.entropy_reg=0")
    cfg = build("data.name=clustered", "data.num_tasks=4", "data.num_clusters=2",
                "loss.weights=0,0,1,0")
    assert cfg.loss.weights == [0.0, 0.0, 1.0, 0.0]
    build("gate.per_example=true", "gate.reduction=sum")


def test_the_tables_name_real_options_and_every_choice():
    """A misspelt option in a table would exempt nothing and check nothing."""
    for _section, (selector, table, cls) in TABLES.items():
        names = {f.name for f in dataclasses.fields(cls)}
        choices = set(get_args(get_type_hints(cls)[selector]))
        assert set(table) == choices
        for options in table.values():
            assert set(options) <= names - {selector}
