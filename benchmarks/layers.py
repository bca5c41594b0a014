"""Layer-pruning benchmark: does pruning filters and layers of a naturally trained network raise its robustness?

Jordao & Pedrini 2021 report that it does. This grid, on the compare harness (``grid.py``): ResNet18 (width
0.125) trained naturally on 20,000 Fashion-MNIST images for 10 epochs, pruned at ``TARGETS`` of its FLOPs by
filters (NNI's L1 filters, uniform ratios), by layers (``LayerPruner``: whole blocks ranked by the adversarial loss
their removal adds) and by both (half of the target by blocks, ``pruning.layers``, the rest by L1 filters), then
fine-tuned naturally; every row of a seed starts from the same dense model. Layer pruning meets a target to one
block's share (0.126 or 0.164 of this model's FLOPs), so each row's FLOPs removed is reported. Clean, FGSM, PGD-20
and AutoAttack accuracy at ε = 8/255 (the blocks are ranked at that radius too) on the test images (read once:
nothing is chosen here), 3 seeds; each row against the dense model, and layers/both against filters, as paired
per-seed differences (95% t-interval, win/tie/loss).

    python benchmarks/layers.py --output runs/benchmarks/layers            # resumable
    python benchmarks/layers.py --output runs/benchmarks/layers --summary-only

Every row is a resumable job run folder: rerun the same command to finish.
"""
from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional

from grid import (Grid, dense_line, markdown, provenance, report_main, save_summary, summary_header, verdict_data,
                  verdict_table)
from nni_mrs_plugin.job.compare import compare_verdicts
from nni_mrs_plugin.job.stats import mean_std, paired

ATTACKS = ["clean", "fgsm", "pgd20", "autoattack"]
EPS = 8 / 255  # a naturally trained model has no robustness left at Fashion-MNIST's usual 0.1
BASE: Dict[str, Any] = {
    "data": {"dataset": "fashion_mnist", "train_subset": 20000, "test_subset": 1000},
    "pretrain": {"epochs": 10, "method": "natural", "lr": 0.05},
    "pruning": {"pruner": "layer", "budget": "flops", "adapt_bn": 512},
    "finetune": {"epochs": 2, "method": "natural", "lr": 0.01, "eps": EPS},
    "eval": {"attacks": ATTACKS, "samples": 1000, "autoattack_samples": 100, "eps": EPS},
    "device": "cpu", "progress": False,
}
TARGETS = [0.25]
ROWS = {"filters": {"pruning.pruner": "l1"},
        "layers": {},
        "both": {"pruning.pruner": "l1", "pruning.layers": 0.125}}


def table(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Mean ± std over seeds per (target, row): FLOPs removed and accuracy after fine-tuning."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["target"], run["variant"]), []).append(run)
    attacks = [a for a in ATTACKS if a in runs[0]["accuracy"]]
    rows = []
    for (target, row), members in sorted(groups.items()):
        removed = mean_std([1 - m["pruned"]["flops"] / m["dense_measure"]["flops"] for m in members])
        cells = [mean_std([m["accuracy"][a] for m in members]) for a in attacks]
        rows.append([f"{target:g}", row, len(members), f"{100 * removed['mean']:.1f}%",
                     *(f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}" for c in cells)])
    return {"columns": ["target", "row", "seeds", "FLOPs removed", *attacks], "rows": rows}


def against_dense(runs: List[Dict[str, Any]], dense: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Each row's accuracy minus its seed's dense model's, paired over seeds, per attack."""
    reference = {d["seed"]: d["accuracy"] for d in dense}
    groups: Dict[tuple, Dict[int, Dict[str, float]]] = {}
    for run in runs:
        groups.setdefault((run["variant"], run["target"]), {})[run["seed"]] = run["accuracy"]
    out = []
    for (variant, target), by_seed in sorted(groups.items()):
        for attack in next(iter(by_seed.values())):
            result = paired({s: a[attack] for s, a in by_seed.items()},
                            {s: a[attack] for s, a in reference.items() if attack in a})
            if result is not None:
                out.append({"model": "resnet18", "variant": variant, "reference": "dense", "target": target,
                            "attack": attack, **result})
    return out


def write_summary(grid: Grid, argv: Optional[List[str]]) -> Dict[str, Any]:
    summary: Dict[str, Any] = provenance("benchmarks/layers.py", argv)
    text = summary_header(summary)
    runs = grid.runs("report")
    if runs:
        dense = grid.runs("report", key="dense")
        verdicts = against_dense(runs, dense) + [dict(v, model="resnet18") for v in compare_verdicts(runs, "filters")]
        summary["report"] = {"rows": len(runs), "verdicts": verdicts,
                             "dense": [{"seed": d["seed"], "accuracy": d["accuracy"]} for d in dense]}
        means = table(runs)
        summary["runs"] = [  # as data, for benchmarks/render.py
            {"label": "Mean ± std over seeds", "caption": "Test accuracy (%) after natural fine-tuning.", **means},
            {"label": "Against the dense model, and against filters", "caption": "Paired per-seed differences in "
             "points, 95% t-interval.", **verdict_data(verdicts)}]
        text += ["Mean ± std over seeds (test images, after natural fine-tuning):", "", *markdown(means), "",
                 dense_line(dense), "",
                 "Paired differences (each row against the dense model; layers and both against filters):", "",
                 *verdict_table(verdicts), ""]
    return save_summary(grid, summary, text)


def main(argv=None) -> int:
    return report_main("layers", __doc__, BASE, ROWS, TARGETS, ["resnet18"], write_summary, argv)


if __name__ == "__main__":
    sys.exit(main())
