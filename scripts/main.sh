#!/usr/bin/env bash
# The main job: train, prune with NNI, remove the channels, fine-tune, report. Extra arguments go to `nni-mrs run`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec .venv/bin/nni-mrs run "$@"
