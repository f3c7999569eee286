"""A missing package of the ``lm`` extra is one clear error, and importing
``compactnn.lm`` needs none of them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from compactnn.lm import INSTALL_HINT, LMUnavailable, load_gguf_llama, require


def test_a_missing_module_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails
    with pytest.raises(LMUnavailable, match=r"transformers is needed .*pip install "
                                            r"'compactnn\[lm\]'") as e:
        require("transformers")
    assert isinstance(e.value, ImportError) and "\n" not in str(e.value)
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(LMUnavailable, match="gguf is needed"):
        load_gguf_llama(f)
    assert INSTALL_HINT == "pip install 'compactnn[lm]'"


def test_importing_compactnn_lm_loads_no_optional_package():
    code = ("import sys, compactnn.lm; "
            "print(sorted(m for m in ('transformers', 'gguf', 'tokenizers', 'accelerate') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
