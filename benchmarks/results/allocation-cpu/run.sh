#!/usr/bin/env bash
# The CPU run of the whole allocation benchmark, 2 processes of one thread on the 2-core CPU (each phase split
# in 2 shards per model, so that neither core waits for the other's longer model). Resumable on any
# machine: rerun it; finished dense models and rows are skipped
# (benchmarks/run_folder.sh: the run folder, or the tree's rows.tar.gz on a new machine). Intervals go to wall.log.
set -uo pipefail
cd "$(dirname "$0")/../../.."
source benchmarks/run_folder.sh allocation-cpu
SHARDS=2 JOBS=2 bash benchmarks/allocation_parallel.sh $run dense select report
publish_run $?
