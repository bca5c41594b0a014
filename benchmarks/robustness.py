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
with each baseline per (target, metric): a win or loss when the means differ by more than the larger of
the two standard deviations, a tie otherwise.
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
from nni_mrs_plugin.job.compare import compare
from nni_mrs_plugin.job.config import ConfigError, load_config

METHODS = ["mrs", "l1", "l1-global", "taylor", "random"]


def verdicts(rows: List[Dict[str, Any]], reference: str = "mrs") -> List[Dict[str, Any]]:
    """MRS against every other adversarially fine-tuned method at each target and metric."""
    by_key = {(row["variant"], row["target"]): row for row in rows}
    out = []
    for (variant, target), row in by_key.items():
        if variant == reference or variant.startswith("dense") or variant.endswith("-natural"):
            continue
        ours = by_key.get((reference, target))
        if ours is None:
            continue
        for metric, theirs in row["accuracy"].items():
            mine = ours["accuracy"][metric]
            diff = mine["mean"] - theirs["mean"]
            spread = max(mine["std"], theirs["std"])
            verdict = "win" if diff > spread else "loss" if diff < -spread else "tie"
            out.append({"target": target, "baseline": variant, "metric": metric, "mrs": mine["mean"],
                        "baseline_mean": theirs["mean"], "difference": diff, "spread": spread, "verdict": verdict,
                        "n": min(mine["n"], theirs["n"])})
    return out


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
               "seconds": round(time.time() - started), "verdicts": verdicts(result["rows"])}
    atomic_json(Path(args.output) / "robustness.json", summary)
    print(Path(args.output, "compare.md").read_text())
    print("| target | baseline | metric | MRS | baseline | difference | verdict |\n|---:|---|---|---:|---:|---:|---|")
    for v in summary["verdicts"]:
        print(f"| {v['target']:g} | {v['baseline']} | {v['metric']} | {100 * v['mrs']:.2f}% | "
              f"{100 * v['baseline_mean']:.2f}% | {100 * v['difference']:+.2f} | {v['verdict']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
