#!/usr/bin/env bash
# A benchmark's run folder: raw rows, checkpoints and logs live in runs/benchmarks/NAME (ignored by git); the tree
# keeps benchmarks/results/NAME: the summary (summary.json, summary.md), plots, settings, wall.log, and the rows
# (JSON only) as rows.tar.gz, so that a summary can be rebuilt and a run resumed on another machine.
# Sourced by a run.sh from the repository root:
#   source benchmarks/run_folder.sh NAME   # sets $run and $published; a new folder starts from the tree's rows
#   ... the benchmark, writing into "$run" ...
#   publish_run $?                         # logs the end in wall.log and copies the summary into the tree
name=$1
published=benchmarks/results/$name
run=runs/benchmarks/$name
if [[ ! -d $run ]]; then
  mkdir -p "$run"
  [[ -f $published/rows.tar.gz ]] && tar xzf "$published/rows.tar.gz" -C "$run"
  for file in wall.log settings.json selected.json; do
    [[ -f $published/$file ]] && cp "$published/$file" "$run/"
  done
fi
source .venv/bin/activate
echo "start $(date -u +%FT%TZ) code $(git rev-parse --short HEAD)$(git diff --quiet -- nni_mrs_plugin benchmarks/*.py benchmarks/*.sh || echo +dirty)" >> "$run/wall.log"

publish_run() {  # rc of the benchmark
  echo "end $(date -u +%FT%TZ) rc $1" >> "$run/wall.log"
  mkdir -p "$published"
  for file in summary.json summary.md selected.json settings.json joint.json joint.md wall.log; do
    [[ -f $run/$file ]] && cp "$run/$file" "$published/"
  done
  [[ -d $run/plots ]] && cp -r "$run/plots" "$published/"
  (cd "$run" && find . -path '*/seed*' -name '*.json' -not -path '*/t*/*/*' | sed 's|^\./||' | sort |
    tar cf - --owner=0 --group=0 --mtime=2026-01-01 -T - | gzip -n -9) > "$published/rows.tar.gz"
  return "$1"
}
