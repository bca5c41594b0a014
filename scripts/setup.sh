#!/usr/bin/env bash
# Idempotent setup, sourced by scripts/main.sh and scripts/test.sh:
#   .venv with this package installed editable (re-installed only when the packaging files change),
#   and Fashion-MNIST from Debian's dataset-fashion-mnist when apt and root are available.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi

stamp=.venv/.nni-mrs-plugin-installed
want=$(cat pyproject.toml setup.py constraints.txt | sha256sum | cut -d' ' -f1)
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "setup: installing nni-mrs-plugin and its dependencies into .venv (first time: a few minutes, ~5 GB)"
  # torch/torchvision come as the registry's CUDA build pair in constraints.txt: it also runs on CPU,
  # and PyPI has no CPU build of torchvision.
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test,deploy]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  echo "$want" > "$stamp"
fi

fmnist=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [[ ! -f $fmnist && -z "${NNI_MRS_FASHION_MNIST:-}" ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "setup: installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: Fashion-MNIST is missing and apt-get as root is not available here;" \
         "install dataset-fashion-mnist, or set NNI_MRS_FASHION_MNIST to a folder holding its four .gz files" >&2
  fi
fi
