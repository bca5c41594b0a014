"""Verified-robustness benchmark: does pruning keep what certified training bought, and does MRS allocation help?

Sehwag et al. 2019 (and HYDRA) prune under verifiable robust training and report verified accuracy beside clean
and empirical robust accuracy. This grid, on the compare harness (``grid.py``): the small CNN trained by IBP
(``pretrain.method: ibp``, CROWN-IBP's ε/κ ramp) on Fashion-MNIST at ε = 0.1 (the ε CROWN-IBP reports for
Fashion-MNIST), pruned at ``TARGETS`` of its FLOPs with uniform ratios (the job's default: adversarial Taylor
channels) and with MRS allocation (``tau=1``, ``feature``), then fine-tuned by IBP; every row of a seed starts
from the same dense model. Each row: clean, PGD-20 and IBP-verified accuracy right after the removal and after
fine-tuning, on the test images (read once: nothing is chosen here); 3 seeds; MRS against uniform as paired
per-seed differences (95% t-interval, win/tie/loss).

    python benchmarks/verified.py --output runs/benchmarks/verified            # 2-core CPU: hours; resumable
    python benchmarks/verified.py --output runs/benchmarks/verified --summary-only

Every row is a resumable job run folder: rerun the same command to finish.
"""
from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional

from grid import (Grid, dense_line, markdown, provenance, report_main, save_summary, summary_header, verdict_data,
                  verdict_table)
from nni_mrs_plugin.job.compare import compare_verdicts
from nni_mrs_plugin.job.stats import mean_std

ATTACKS = ["clean", "pgd20", "ibp"]
BASE: Dict[str, Any] = {
    "data": {"dataset": "fashion_mnist", "train_subset": 20000, "test_subset": 2000},
    "pretrain": {"epochs": 10, "method": "ibp", "eps": 0.1, "lr": 0.05},
    "pruning": {"budget": "flops", "adapt_bn": 512, "options": {"n_samples": 512}},
    "finetune": {"epochs": 3, "method": "ibp", "eps": 0.1, "lr": 0.01},
    "eval": {"attacks": ATTACKS, "after_pruning": ATTACKS, "samples": 2000},
    "device": "cpu", "progress": False,
}
TARGETS = [0.5, 0.75]
ROWS = {"uniform": {}, "mrs": {"pruning.options.tau": 1.0, "pruning.options.estimator": "feature"}}


def table(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Mean ± std over seeds per (target, row): after the removal, then after fine-tuning."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["target"], run["variant"]), []).append(run)
    rows = []
    for (target, row), members in sorted(groups.items()):
        cells = [mean_std([m[key][a] for m in members]) for key in ("accuracy_after_pruning", "accuracy")
                 for a in ATTACKS]
        rows.append([f"{target:g}", row, len(members),
                     *(f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}" for c in cells)])
    return {"columns": ["target", "row", "seeds", *(f"{a} after removal" for a in ATTACKS),
                        *(f"{a} fine-tuned" for a in ATTACKS)], "rows": rows}


def write_summary(grid: Grid, argv: Optional[List[str]]) -> Dict[str, Any]:
    summary: Dict[str, Any] = provenance("benchmarks/verified.py", argv)
    text = summary_header(summary)
    runs = grid.runs("report")
    if runs:
        dense = grid.runs("report", key="dense")
        verdicts = [dict(v, model="small_cnn") for v in compare_verdicts(runs, "uniform")]
        summary["report"] = {"rows": len(runs), "verdicts": verdicts,
                             "dense": [{"seed": d["seed"], "accuracy": d["accuracy"]} for d in dense]}
        means = table(runs)
        summary["runs"] = [  # as data, for benchmarks/render.py
            {"label": "Mean ± std over seeds", "caption": "Test accuracy (%) of the small CNN right after the removal "
             "and after IBP fine-tuning; ibp: verified at the training radius.", **means},
            {"label": "MRS allocation against uniform ratios", "caption": "Fine-tuned; paired per-seed differences "
             "in points, 95% t-interval.", **verdict_data(verdicts)}]
        text += ["Mean ± std over seeds (test images):", "", *markdown(means), "",
                 dense_line(dense), "",
                 "MRS allocation against uniform ratios (fine-tuned):", "", *verdict_table(verdicts), ""]
    return save_summary(grid, summary, text)


def main(argv=None) -> int:
    return report_main("verified", __doc__, BASE, ROWS, TARGETS, ["small_cnn"], write_summary, argv, width=None)


if __name__ == "__main__":
    sys.exit(main())
