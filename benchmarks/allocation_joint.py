"""Is the budget rule's objective what pruning does? Single-unit curves against joint removal, per report row.

The ``budget`` rule minimises sum_u Delta L_u(r_u): each unit's loss rise measured with every other unit intact.
For every report row of an allocation run (``benchmarks/allocation.py``) whose channels are ranked by L1 inside
each unit (``uniform-l1``, ``power-feature-l1``, ``budget-curve-bn-l1``, ``joint-bn-l1``, ``l1-global``), this
script removes all of the row's channels at once from the dense model, the way the curves remove one unit's
(removal-equivalent masking, then adaptive BN on the same 512 clean samples, drawn from the row's own training
loader as its pruner drew them), and measures the rise of the adversarial loss on the same X'. Next to it: the
sum the rule predicts from that seed's budget-row curves, and the row's test PGD-20 right after pruning. Forward
passes and one calibration attack per (model, seed): minutes on one CPU thread.

    python benchmarks/allocation_joint.py --output runs/benchmarks/allocation   # writes joint.json, joint.md

``l1-global`` ranks channels across layers; the channels it takes inside a unit are re-derived here as that unit's
lowest-L1 ones at the row's ratio, which is what a per-layer L1 ranking of that count removes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from grid import finished  # the run's report rows
from nni_mrs_plugin.checkpoint import atomic_json, atomic_write, load_pruned
from nni_mrs_plugin.job import build
from nni_mrs_plugin.job.config import load_config
from nni_mrs_plugin.job.pipeline import Pipeline
from nni_mrs_plugin.mrs.allocator import MRSSparsityAllocator
from nni_mrs_plugin.evaluate import mean_loss
from nni_mrs_plugin.mrs.costaware import predicted_rise
from nni_mrs_plugin.mrs.curves import DEFAULT_RATIOS, prune_count
from nni_mrs_plugin.mrs.joint import JointLoss
from nni_mrs_plugin.host.speedup import trace

ROWS = ("uniform-l1", "power-feature-l1", "budget-curve-bn-l1", "joint-bn-l1", "l1-global")
CURVES = "budget-curve-bn-l1"  # the row whose measured curves (adaptive BN in every probe) make the prediction


def joint_rise(model: torch.nn.Module, counts: Dict, x, x_adv, y, base: float) -> float:
    """Loss rise on X' with ``counts[unit]`` channels per block of every unit removed at once (L1 channels, adaptive
    BN on ``x``): the ``joint`` rule's own measurement, ``JointLoss``; the model is restored."""
    measure = JointLoss(model, list(counts), x, x_adv, y, "l1", trace(model, x[:1]), recalibrate=True)
    return measure({unit.name: count for unit, count in counts.items()}) - base


def rank_correlation(xs: List[float], ys: List[float]) -> float:
    return float(spearmanr(xs, ys).statistic)


def allocation(run: dict) -> dict:
    return json.loads((Path(run["folder"]) / "allocation.json").read_text())


def measure(out: Path, model_name: str, seed: int, results: List[dict]) -> List[dict]:
    """One entry per (target, row) of this model and seed: predicted and joint rise, PGD-20 after pruning."""
    mine = [r for r in results if r["model"] == model_name and r["seed"] == seed]
    source = next((r for r in mine if r["variant"] == CURVES), None)
    if source is None:
        return []
    curves = allocation(source)["curves"]
    dense = load_pruned(out / "dense" / f"{model_name}-seed{seed}" / "dense.pt").eval()
    config = load_config(Path(source["folder"]) / "config.yaml")
    allocator = MRSSparsityAllocator(estimator="curve", rule="budget", criterion="l1", eps=build.eps(config, None),
                                     n_samples=512, seed=seed, progress=False)
    loader = Pipeline(config, source["folder"]).loaders[0]  # the training loader the row's pruner calibrated on
    x, x_adv, y = allocator.calibration_set(dense, loader)
    _, units, _, _ = allocator.units(dense, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.9}], x[:1])
    base = float(mean_loss(dense, x_adv, y))
    # one unit alone must reproduce the stored curve, or this script does not remove what the rule measured
    widest = max(units, key=lambda u: u.per_block)
    alone = joint_rise(dense, {widest: prune_count(widest, 0.5)}, x, x_adv, y, base)
    stored = curves[widest.name][list(DEFAULT_RATIOS).index(0.5)]
    if abs(alone - stored) > 1e-3 + 1e-2 * abs(stored):
        raise RuntimeError(f"{model_name} seed {seed}: {widest.name} at 0.5 gives {alone:.4f} here, the run's curve "
                           f"{stored:.4f}: the calibration data or removal differ from the run's")
    entries = []
    for r in tqdm([r for r in mine if r["variant"] in ROWS], desc=f"{model_name} seed {seed}", leave=False):
        ratios = {u["unit"]: u["ratio"] for u in allocation(r)["units"]}
        counts = {u: round(ratios[u.name] * u.per_block) for u in units}
        entries.append({"model": model_name, "seed": seed, "target": r["target"], "row": r["variant"],
                        "predicted": predicted_rise(curves, DEFAULT_RATIOS, ratios),
                        "joint": joint_rise(dense, counts, x, x_adv, y, base),
                        "pruned_pgd20": r["accuracy_after_pruning"]["pgd20"], "dense_loss": base,
                        "unit_check": [widest.name, alone, stored]})
    return entries


def table(entries: List[dict]) -> str:
    """Per model and target, mean over seeds per row; then per model, Spearman's rho over the rows of each (target,
    seed) between minus the rise (predicted, joint) and PGD-20 right after pruning, averaged."""
    lines = ["| model | target | row | seeds | predicted rise | joint rise | PGD-20 after pruning (%) |",
             "|---|---|---|---:|---:|---:|---:|"]
    keys = sorted({(e["model"], e["target"], e["row"]) for e in entries}, key=lambda k: (k[0], k[1], ROWS.index(k[2])))
    for model, target, row in keys:
        mine = [e for e in entries if (e["model"], e["target"], e["row"]) == (model, target, row)]
        mean = {k: sum(e[k] for e in mine) / len(mine) for k in ("predicted", "joint", "pruned_pgd20")}
        lines.append(f"| {model} | {target} | {row} | {len(mine)} | {mean['predicted']:.3f} | {mean['joint']:.3f} | "
                     f"{100 * mean['pruned_pgd20']:.2f} |")
    rho_lines = ["| model | groups | rho(−predicted, PGD-20) | rho(−joint, PGD-20) | rho(predicted, joint) |",
                 "|---|---:|---:|---:|---:|"]
    for model in sorted({e["model"] for e in entries}):
        rhos: Dict[str, List[float]] = {"p": [], "j": [], "pj": []}
        for group in sorted({(e["target"], e["seed"]) for e in entries if e["model"] == model}):
            mine = [e for e in entries if e["model"] == model and (e["target"], e["seed"]) == group]
            if len(mine) < 3:
                continue
            acc = [e["pruned_pgd20"] for e in mine]
            rhos["p"].append(rank_correlation([-e["predicted"] for e in mine], acc))
            rhos["j"].append(rank_correlation([-e["joint"] for e in mine], acc))
            rhos["pj"].append(rank_correlation([e["predicted"] for e in mine], [e["joint"] for e in mine]))
        cells = [f"{sum(v) / len(v):+.2f}" if v else "" for v in (rhos["p"], rhos["j"], rhos["pj"])]
        rho_lines.append(f"| {model} | {len(rhos['p'])} | {' | '.join(cells)} |")
    return ("Adversarial loss rise on the calibration X' (nats), predicted by the sum of single-unit curves and "
            "measured with the row's channels removed together (mean over seeds):\n\n" + "\n".join(lines) +
            "\n\nRank correlation over the rows of each (target, seed), mean over the groups:\n\n" +
            "\n".join(rho_lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="an allocation run folder (its report rows)")
    args = parser.parse_args(argv)
    results = finished(args.output, "report")
    if not results:
        print(f"no report rows under {args.output}", file=sys.stderr)
        return 2
    entries = []
    for model_name, seed in sorted({(r["model"], r["seed"]) for r in results}):
        entries += measure(args.output, model_name, seed, results)
    atomic_json(args.output / "joint.json", entries)
    text = table(entries)
    atomic_write(args.output / "joint.md", lambda f: f.write(text.encode()))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
