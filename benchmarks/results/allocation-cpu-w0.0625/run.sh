#!/usr/bin/env bash
# The CPU run of the whole allocation benchmark at width 0.0625 (both models), the narrowest measured width: does
# the benchmark fit the issue's 3 hours there? 2 processes of one thread on the 2-core CPU (each phase split
# in 2 shards per model, so that neither core waits for the other's longer model). Resumable on any
# machine: rerun it; finished dense models and rows (tracked in git) are skipped. Intervals go to wall.log.
set -uo pipefail
here=benchmarks/results/allocation-cpu-w0.0625
cd "$(dirname "$0")/../../.."
source .venv/bin/activate
echo "start $(date -u +%FT%TZ) code $(git rev-parse --short HEAD)$(git diff --quiet -- nni_mrs_plugin benchmarks/*.py benchmarks/*.sh || echo +dirty)" >> $here/wall.log
SHARDS=2 JOBS=2 WIDTH=0.0625 bash benchmarks/allocation_parallel.sh $here dense select report
echo "end $(date -u +%FT%TZ) rc $?" >> $here/wall.log
