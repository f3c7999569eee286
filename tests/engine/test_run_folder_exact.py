"""Run-folder writes exactly: the JSON text, the temp name a failed write leaves, and a
folder that could not be locked leaves nothing behind."""

from __future__ import annotations

import re

import pytest

from compactnn.engine import run_folder as rf
from compactnn.engine.run_folder import OUTPUT_FILES, RunFolder, RunFolderError, write_json


def test_json_is_indented_and_strict(tmp_path) -> None:
    write_json(tmp_path / "r.json", {"a": 1, "b": [1.5, float("nan")]})
    assert (tmp_path / "r.json").read_text() == (
        '{\n  "a": 1,\n  "b": [\n    1.5,\n    null\n  ]\n}\n')
    folder = RunFolder(tmp_path)
    folder.write_text("factorize_report.md", "# report\n")
    assert (tmp_path / "factorize_report.md").read_text() == "# report\n"


def test_a_failed_write_is_named_and_leaves_a_cleanable_temp_file(tmp_path, monkeypatch):
    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rf.os, "replace", fail)
    want = f"cannot write {tmp_path / 'result.json'}: No space left on device"
    with pytest.raises(RunFolderError, match="^" + re.escape(want) + "$"):
        write_json(tmp_path / "result.json", {"a": 1})
    (left,) = tmp_path.iterdir()
    assert left.name == "result.json.tmp" and left.name.partition(".tmp")[0] in OUTPUT_FILES


def test_a_folder_that_cannot_be_locked_is_removed_again(tmp_path, monkeypatch) -> None:
    def no_lock(path, mode="r", *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rf, "open", no_lock, raising=False)
    out = tmp_path / "a" / "b"
    want = f"cannot write to the run folder {str(out)!r}: Permission denied"
    with pytest.raises(RunFolderError, match="^" + re.escape(want) + "$"):
        with RunFolder(out):
            pass
    assert list(tmp_path.iterdir()) == []


def test_every_unfinished_save_next_to_an_output_is_cleaned(tmp_path) -> None:
    names = ["metrics.csv.tmp", "model.safetensors.tmp.tmp", "result.json.tmpab12",
             "notes.txt.tmp", "keep.csv"]
    for n in names:
        (tmp_path / n).write_text("x")
    with RunFolder(tmp_path):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "keep.csv", "notes.txt.tmp"]


def test_release_twice_and_an_empty_out(tmp_path) -> None:
    with RunFolder(tmp_path) as folder:
        folder.release()  # __exit__ releases again: harmless
    with pytest.raises(RunFolderError, match=r"^out must name a folder, got an empty string$"):
        RunFolder("  ")


def test_a_stale_file_removed_by_someone_else_meanwhile_is_fine(tmp_path, monkeypatch):
    from pathlib import Path

    (tmp_path / "metrics.csv.tmp").write_text("x")
    real = Path.is_file

    def vanish(self):  # another process removes it between the check and the unlink
        found = real(self)
        if self.name == "metrics.csv.tmp":
            self.unlink()
        return found

    monkeypatch.setattr(Path, "is_file", vanish)
    with RunFolder(tmp_path):
        pass
    assert not (tmp_path / "metrics.csv.tmp").exists()


def test_busy_and_uncreatable_folders_are_named(tmp_path) -> None:
    from compactnn.engine.run_folder import RunFolderBusy

    with RunFolder(tmp_path):
        want = (f"another run is using {str(tmp_path)!r} (it holds {tmp_path / '.lock'}); "
                "wait for it to finish or choose another out")
        with pytest.raises(RunFolderBusy, match="^" + re.escape(want) + "$"):
            with RunFolder(tmp_path):
                pass
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    want = f"cannot create the run folder {str(out)!r}: Not a directory"
    with pytest.raises(RunFolderError, match="^" + re.escape(want) + "$"):
        with RunFolder(out):
            pass


def test_a_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch) -> None:
    from pathlib import Path

    real = Path.write_text

    def refuse_probe(self, *args, **kwargs):
        if self.name == ".write-test":
            raise PermissionError(13, "Permission denied")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", refuse_probe)
    want = f"cannot write to the run folder {str(tmp_path)!r}: Permission denied"
    with pytest.raises(RunFolderError, match="^" + re.escape(want) + "$"):
        with RunFolder(tmp_path):
            pass
