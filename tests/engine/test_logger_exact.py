"""The metrics log's rewrites go through the temporary name the run folder cleans."""

from __future__ import annotations

from pathlib import Path

import pytest

from compactnn.engine.logger import MetricLogger
from compactnn.engine.run_folder import OUTPUT_FILES


def _fail(self, target):
    raise OSError("disk gone")


@pytest.mark.parametrize("rewrite", ["foreign header", "truncate"])
def test_a_rewrite_cut_short_leaves_a_cleanable_temp_file(tmp_path, monkeypatch, rewrite):
    path = tmp_path / "metrics.csv"
    if rewrite == "foreign header":
        path.write_text("a,b\n1,2\n")
    else:
        path.write_text("epoch,step,loss\n0,1,0.5\n1,2,0.4\n")
    logger = MetricLogger(tmp_path, tensorboard=False)
    monkeypatch.setattr(Path, "replace", _fail)
    with pytest.raises(OSError, match="disk gone"):
        if rewrite == "foreign header":
            logger.log({"epoch": 0, "step": 1, "loss": 0.5})
        else:
            logger.truncate_after(1)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["metrics.csv", "metrics.csv.tmp"]
    stem, dot_tmp, _ = left[1].partition(".tmp")
    assert stem in OUTPUT_FILES and dot_tmp
