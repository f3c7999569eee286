"""A practitioner's first two hours: the README's and docs/usage.md's Python
snippets run as shown (in order, one namespace per file, in a scratch folder),
the commands the README lists answer, and the packaging promises hold (the core
dependencies cover the core API; torch is a range, not a pin)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

import compactnn as cn
from compactnn.cli import main

ROOT = Path(__file__).resolve().parents[1]
# subprocesses keep the suite's one intra-op thread (see conftest.py)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def python_blocks(path: Path) -> list[str]:
    return [textwrap.dedent(b) for b in
            re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)]


def usage_namespace() -> dict[str, object]:
    """What docs/usage.md's fragments assume the reader already has: a model with
    convolutions and an `fc` head, a task loss, and the model's class."""

    class MyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 3, padding=1)
            self.conv2 = nn.Conv2d(64, 64, 3, padding=1)
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv2(self.conv1(x).relu()).mean((2, 3)))

    model = MyNet()
    return {"torch": torch, "nn": nn, "cn": cn, "MyNet": MyNet, "model": model,
            "task_loss": model(torch.randn(2, 3, 8, 8)).square().mean()}


# usage.md's Frobenius decay fragment runs on the reader's model, dense here
@pytest.mark.filterwarnings("ignore:frobenius_decay. the model .MyNet. has no low-rank")
@pytest.mark.parametrize("doc", ["README.md", "docs/usage.md"])
def test_the_python_snippets_run_as_shown(doc, tmp_path, monkeypatch):
    blocks = python_blocks(ROOT / doc)
    assert blocks, f"{doc} has no python snippet"
    monkeypatch.chdir(tmp_path)  # snippets write files such as small.safetensors
    torch.manual_seed(0)
    namespace = usage_namespace() if doc == "docs/usage.md" else {}
    for i, code in enumerate(blocks):
        if not torch.cuda.is_available():  # the one GPU-only call, read on the CPU here
            code = code.replace('map_location="cuda"', 'map_location="cpu"')
        try:
            exec(compile(code, f"{doc} python block {i + 1}", "exec"), namespace)
        except Exception as e:  # name the snippet, not this harness
            raise AssertionError(f"{doc}, python block {i + 1} fails: {e!r}") from e


@pytest.mark.parametrize("argv", [
    ["--help"], ["list", "--help"], ["data", "list"], ["train", "--print-config"],
    ["mtl", "--print-config"], ["train", "lowrank.exclude=[head]", "--print-config"],
])
def test_the_commands_the_readme_lists_answer(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # --help
        code = e.code
    assert code == 0
    assert capsys.readouterr().out.strip()


def test_the_typing_script_runs():
    # tests/typing/readme_usage.py is what `make test` type-checks with mypy --strict
    done = subprocess.run([sys.executable, str(ROOT / "tests/typing/readme_usage.py")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-2000:]


def test_core_dependencies_cover_the_core_api_and_torch_is_a_range():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0]: d for d in meta["dependencies"]}
    # save_model / load_model and progress=True need these without any extra
    assert {"torch", "numpy", "safetensors", "tqdm"} <= set(core)
    assert ">=" in core["torch"] and "==" not in core["torch"]
    assert (ROOT / "src/compactnn/py.typed").exists()


def test_the_core_api_imports_nothing_from_the_extras(tmp_path):
    # as after `pip install compactnn` without extras: the optional packages fail to import
    script = f"""
import sys
for name in ("matplotlib", "sklearn", "pandas", "scipy", "optuna", "transformers",
             "tensorboard"):
    sys.modules[name] = None  # import fails, find_spec says absent: as if not installed
import torch
from torch import nn
import compactnn as cn
model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
small, _ = cn.factorize(model, rank=2, progress=True)
small, _ = cn.factorize(model, rank=2, init="nonlinear", calibration=torch.randn(64, 8),
                        steps=5)
cn.save_model(small, {str(tmp_path / "m.safetensors")!r})
cn.load_model(model, {str(tmp_path / "m.safetensors")!r})
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=ONE_THREAD)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
