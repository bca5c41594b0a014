#!/usr/bin/env bash
# The main job: the MRPF run of the default config (`nni-mrs run`). Extra arguments go to `nni-mrs run`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec .venv/bin/nni-mrs run "$@"
