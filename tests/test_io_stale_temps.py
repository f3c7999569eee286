"""save_model's temporary files: one left by a killed save is removed by the next save
of the same file; one a running save holds, links, and other files are left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from compactnn.io import load_model, save_model

fcntl = pytest.importorskip("fcntl")


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_save_killed_halfway_leaves_a_temp_file_the_next_save_removes(tmp_path):
    path = tmp_path / "model.safetensors"
    killed = textwrap.dedent(f'''
        import os, signal
        import safetensors.torch as st
        from torch import nn
        from compactnn.io import save_model

        def half(tensors, filename, metadata=None):
            with open(filename, "wb") as f:
                f.write(b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)

        st.save_file = half
        save_model(nn.Linear(4, 3), {str(path)!r})
    ''')
    got = subprocess.run([sys.executable, "-c", killed], capture_output=True, timeout=300)
    assert got.returncode == -signal.SIGKILL
    (left,) = temps(tmp_path)
    assert left.startswith(".model.safetensors.") and not path.exists()
    m = model()
    save_model(m, path)
    assert temps(tmp_path) == []
    other = model(1)
    load_model(other, path)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(),
                                                 other.state_dict().values(), strict=True))


def test_a_temp_file_a_running_save_holds_is_left_alone(tmp_path):
    path = tmp_path / "model.safetensors"
    busy = tmp_path / ".model.safetensors.abcd_123.tmp"
    busy.write_bytes(b"being written")
    with open(busy, "rb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # as the save writing it holds it
        save_model(model(), path)
        assert busy.read_bytes() == b"being written"
    save_model(model(), path)  # released (the writer ended): now it is stale
    assert not busy.exists()


def test_only_this_files_unheld_temp_files_are_removed(tmp_path):
    path = tmp_path / "model.safetensors"
    victim = tmp_path / "precious"
    victim.write_bytes(b"keep")
    keep = [".other.safetensors.abcd1234.tmp",  # another file's save
            ".model.safetensors.tmp",  # not a save_model name
            ".model.safetensors.ABCD1234.tmp",
            ".model.safetensors.abcd12345.tmp",
            "model.safetensors.abcd1234.tmp"]
    for name in keep:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".model.safetensors.link1234.tmp").symlink_to(victim)
    (tmp_path / ".model.safetensors.dir_1234.tmp").mkdir()
    stale = tmp_path / ".model.safetensors.zz9_0000.tmp"
    stale.write_bytes(b"stale")
    save_model(model(), path)
    assert not stale.exists()
    assert all((tmp_path / name).read_bytes() == b"x" for name in keep)
    assert (tmp_path / ".model.safetensors.link1234.tmp").is_symlink()
    assert victim.read_bytes() == b"keep"
    assert (tmp_path / ".model.safetensors.dir_1234.tmp").is_dir()


def test_a_failed_save_removes_its_own_temp_file(tmp_path, monkeypatch):
    import safetensors.torch as st

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st, "save_file", broken)
    with pytest.raises(OSError, match="No space"):
        save_model(model(), tmp_path / "model.safetensors")
    assert temps(tmp_path) == [] and os.listdir(tmp_path) == []
