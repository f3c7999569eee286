#!/usr/bin/env bash
# Install compactnn with its core dependencies only (no extras) into a fresh venv
# holding another torch release than the Makefile's, and run the smoke test
# (layers, factorize, progress bars, save/load, gates).
#
#   bash scripts/smoke_other_torch.sh [TORCH_VERSION]     # default 2.12.1
#   TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/smoke_other_torch.sh 2.12.1+cpu
#
# TORCH_INDEX picks where torch comes from (unset: the configured pip index; PyPI's
# Linux wheels are CUDA builds with several GB of dependencies, the CPU index's are
# ~200 MB). SMOKE_VENV names the venv (default: a temporary folder, removed after).
set -euo pipefail
version="${1:-2.12.1}"
python="${PYTHON:-python3}"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${SMOKE_VENV:-}"
if [[ -z "$venv" ]]; then
    venv="$(mktemp -d)/venv"
    trap 'rm -rf "$(dirname "$venv")"' EXIT
fi
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
if [[ -n "${TORCH_INDEX:-}" ]]; then
    "${pip[@]}" "torch==$version" --index-url "$TORCH_INDEX"
else
    "${pip[@]}" "torch==$version"
fi
# Core install only: no [experiments], no [test]; torch must stay the one above.
"${pip[@]}" "$root"
installed="$("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
if [[ "$installed" != "$version"* ]]; then
    echo "error: the venv holds torch $installed, not $version" >&2
    exit 1
fi
# Run from outside the tree so the installed package, not src/, is imported.
cd "$(dirname "$venv")"
"$venv/bin/python" "$root/scripts/smoke_test.py"
