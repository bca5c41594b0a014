#!/usr/bin/env bash
# Run benchmarks/allocation.py as parallel processes on one machine (one GPU shared, one CPU thread each): small
# models leave a GPU launch-bound, so several processes fill it. Stages wait for each other: dense models
# (one process per model and seed), the select phase (SHARDS per model, then one to write selected.json), the
# report (SHARDS per model, seed and target); the default phase (one per model and seed, then one to write
# default.json).
# Resumable like the script itself: rerun to finish.
#   [SHARDS=N] [JOBS=N] [WIDTH=W] bash benchmarks/allocation_parallel.sh OUTPUT STAGE... -- [allocation.py options]
# JOBS caps the processes running at once (default: no cap); on the 2-core CPU, JOBS=2. WIDTH is both models'
# width multiplier (default 0.125).
# STAGE: dense, select, default, report. Logs go to OUTPUT/logs.
set -uo pipefail
out=$1; shift
stages=()
while [[ $# -gt 0 && $1 != "--" ]]; do stages+=("$1"); shift; done
[[ ${1:-} == "--" ]] && shift
opts=("$@")
w=${WIDTH:-0.125}
mkdir -p "$out/logs"
export OMP_NUM_THREADS=1
run() {  # name, args...
  local name=$1; shift
  while (( $(jobs -rp | wc -l) >= ${JOBS:-1000} )); do wait -n; done
  python benchmarks/allocation.py --output "$out" "${opts[@]}" "$@" >"$out/logs/$name.log" 2>&1 &
}
for stage in "${stages[@]}"; do
  case $stage in
    dense)
      for m in vgg16_bn resnet18; do for s in 0 1 2; do
        run "dense-$m-$s" --models "$m" --widths "$w" --seeds "$s" --phases dense
      done; done; wait ;;
    select)  # SHARDS processes per model, the longer model first
      n=${SHARDS:-1}
      for m in resnet18 vgg16_bn; do for i in $(seq 0 $((n - 1))); do
        run "select-$m-$i" --models "$m" --widths "$w" --seeds 0 --phases select --shard "$i/$n"
      done; done
      wait
      python benchmarks/allocation.py --output "$out" "${opts[@]}" --widths "$w" "$w" --seeds 0 --phases select \
        >"$out/logs/select.log" 2>&1 ;;
    default)  # after select: MRSPruner's default decided on validation, every seed
      for s in 0 1 2; do for m in resnet18 vgg16_bn; do
        run "default-$m-$s" --models "$m" --widths "$w" --seeds "$s" --phases default
      done; done
      wait
      python benchmarks/allocation.py --output "$out" "${opts[@]}" --widths "$w" "$w" --phases default \
        >"$out/logs/default.log" 2>&1 ;;
    report)  # SHARDS processes per model, seed and target (default 1), each taking every SHARDS-th row
      n=${SHARDS:-1}
      for s in 0 1 2; do for i in $(seq 0 $((n - 1))); do
        for t in 0.75 0.9 0.95; do
          run "report-vgg-$s-$t-$i" --models vgg16_bn --widths "$w" --seeds "$s" --vgg-targets "$t" --phases report \
            --shard "$i/$n"
        done
        run "report-resnet-$s-$i" --models resnet18 --widths "$w" --seeds "$s" --phases report --shard "$i/$n"
      done; done; wait ;;
    *) echo "unknown stage $stage (dense, select, default, report)" >&2; exit 2 ;;
  esac
done
python benchmarks/allocation.py --output "$out" "${opts[@]}" --widths "$w" "$w" --summary-only \
  >"$out/logs/summary.log" 2>&1
tail -n 60 "$out/summary.md"
