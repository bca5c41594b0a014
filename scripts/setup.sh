#!/usr/bin/env bash
# Idempotent setup, sourced by scripts/main.sh and scripts/test.sh:
#   .venv with this package installed editable (re-installed only when the packaging files change),
#   and Debian's dataset-fashion-mnist and openssh-server when apt and root are available.
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

# Debian's packages: Fashion-MNIST, and OpenSSH's server (the test of NNI's remote training service logs in over
# SSH on loopback)
fmnist=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
missing=()
[[ -f $fmnist || -n "${NNI_MRS_FASHION_MNIST:-}" ]] || missing+=(dataset-fashion-mnist)
[[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
if (( ${#missing[@]} )); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]} (apt-get install)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: ${missing[*]} missing and apt-get as root is not available here; install them with apt" \
         "(for Fashion-MNIST you may instead set NNI_MRS_FASHION_MNIST to a folder holding its four .gz files)" >&2
  fi
fi
