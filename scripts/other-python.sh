#!/usr/bin/env bash
# Check the compat layer and the architecture matrix on another Python:
#   bash scripts/other-python.sh PYTHON [torch==X torchvision==Y]
# builds .venv-<version> with that interpreter (torch/torchvision from the registry: the pair given, or the
# pair in constraints.txt), installs this package editable with its test extras, and runs the tests that
# depend on the interpreter: the compat fixes (NNI's tracer), the speedup/removal tests (torchvision matrix,
# ViT, MobileViT, slow ones included) and the models. Python 3.9 needs torch<=2.8 (e.g. torch==2.8.0
# torchvision==0.23.0).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${1:?usage: scripts/other-python.sh PYTHON [torch==X torchvision==Y]}
shift
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
venv=.venv-$version
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
if [[ $# -gt 0 ]]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"
else
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt torch torchvision
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$venv/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_compat.py tests/test_speedup.py tests/test_models.py
