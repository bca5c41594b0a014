"""MRPF against baselines at equal FLOPs budgets, all with identical adversarial fine-tuning, plus natural
training rows (pruning as the only defence): clean, PGD-20 and AutoAttack accuracy, mean ± std over seeds.

    python benchmarks/robustness.py --output runs/robustness            # CPU-sized: the shipped config
    python benchmarks/robustness.py --output runs/robustness-full --set data.train_subset=null \\
        --set data.test_subset=null --set pretrain.epochs=10 --set finetune.epochs=5   # full Fashion-MNIST, GPU

Methods (registry names): ``mrs`` (MRPF: allocation by MRS, ``pruning.options.tau`` 1 unless ``--set`` gives it), ``l1``
(uniform ratios, = MRS with tau 0 and l1 channels), ``l1-global`` (one L1 ranking across layers), ``taylor``
(NNI TaylorPruner, uniform ratios, adversarial gradients) and ``random``.
Natural rows (``--natural``) pre-train and fine-tune without attacks. Every run is a resumable run folder
(``nni_mrs_plugin.job.compare``): rerun the same command to finish an interrupted benchmark. Verdicts compare MRS
with each baseline per (target, attack) by the rule of every benchmark (``nni_mrs_plugin.job.stats``): the paired
per-seed difference, a win or a loss when its 95% t-interval excludes zero, a tie otherwise.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from nni_mrs_plugin.checkpoint import atomic_json
from nni_mrs_plugin.job.cli import add_set_argument
from nni_mrs_plugin.job.compare import compare, compare_verdicts
from nni_mrs_plugin.job.config import ConfigError, load_config

METHODS = ["mrs", "l1", "l1-global", "taylor", "random"]


def verdicts(runs: List[Dict[str, Any]], ours: str = "mrs") -> List[Dict[str, Any]]:
    """``ours`` against every other adversarially fine-tuned method at each target and attack: the paired per-seed
    difference and its 95% t-interval (``nni_mrs_plugin.job.stats``, the rule of every benchmark)."""
    baselines = sorted({run["variant"] for run in runs} - {ours})
    return [dict(v, baseline=v["reference"]) for baseline in baselines if not baseline.endswith("-natural")
            for v in compare_verdicts(runs, baseline) if v["variant"] == ours]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="YAML config (default: the shipped Fashion-MNIST one)")
    parser.add_argument("--methods", nargs="+", default=METHODS, help=f"default: {' '.join(METHODS)}")
    parser.add_argument("--natural", nargs="*", default=["mrs", "l1"],
                        help="methods also run with natural pre-training and fine-tuning (default: mrs l1)")
    parser.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add_set_argument(parser, "override a config key of every run, e.g. --set finetune.epochs=5")
    parser.add_argument("--output", default="runs/robustness")
    args = parser.parse_args(argv)

    variants = {name: {"pruning.pruner": name} for name in args.methods}
    variants.update({f"{name}-natural": {"pruning.pruner": name, "pretrain.method": "natural",
                                         "finetune.method": "natural"} for name in args.natural})
    if "pruning.options.tau" not in dict(args.overrides):  # ``mrs`` is MRPF: ratios by MRS, not uniform ones
        for variant in variants.values():
            if variant["pruning.pruner"] == "mrs":
                variant["pruning.options.tau"] = 1.0
    started = time.time()
    try:
        config = load_config(args.config, {**dict(args.overrides), "progress": False})
        result = compare(config, variants, args.targets, args.output, args.seeds,
                         on_run=lambda i, n, label: print(f"[{i}/{n}] {label} ({time.time() - started:.0f} s)",
                                                          flush=True))
    except ConfigError as err:
        print(f"robustness: {err}", file=sys.stderr)
        return 2
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    summary = {"command": " ".join(["python", "benchmarks/robustness.py", *(argv or sys.argv[1:])]),
               "date": time.strftime("%Y-%m-%d"), "commit": commit, "machine": platform.platform(),
               "seconds": round(time.time() - started), "verdicts": verdicts(result["runs"])}
    atomic_json(Path(args.output) / "robustness.json", summary)
    print(Path(args.output, "compare.md").read_text())
    print("| target | baseline | attack | MRS - baseline (points) | 95% interval | verdict |\n"
          "|---:|---|---|---:|---|---|")
    for v in summary["verdicts"]:
        print(f"| {v['target']:g} | {v['baseline']} | {v['attack']} | {100 * v['diff']:+.2f} | "
              f"{100 * v['low']:+.2f} to {100 * v['high']:+.2f} | {v['verdict']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
