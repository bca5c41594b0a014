"""Allocation benchmark: do per-unit ratios chosen by robustness sensitivity beat uniform ratios at equal FLOPs?

A grid on the compare harness (``nni_mrs_plugin.job.compare``): every row is a job run folder that prunes a shared
PGD-trained dense model, removes the channels, re-estimates BatchNorm on 512 training images
(``pruning.adapt_bn``), is evaluated right after the removal (``eval.after_pruning``), fine-tuned identically
(PGD-AT) and evaluated again. Models with room to allocate (``MODELS``: VGG16-bn and ResNet18, CIFAR-style,
narrowed by ``--width``), Fashion-MNIST at eps = 0.1, 5,000 training images held out for validation
(``data.validation``); the job config of every row is ``BASE``.

Phases, each a compare grid per (model, seed) in ``OUTPUT/<phase>/<model>-seed<seed>/``:
  select   the first seed, ``--select-target``, validation images: every MRS candidate (``CANDIDATES``) and
           uniform ratios with each of ``--select-criteria``; the ``--select`` candidates with the best fine-tuned
           PGD-20 (mean over models, l1 channels) go on, and with two criteria the better one is chosen too.
  default  every seed, ``--select-target``, validation images: uniform ratios, the first release's default
           (``SHIPPED``) and the selected candidates with the chosen criterion; the best mean fine-tuned PGD-20 over
           (model, seed) is what ``MRSPruner`` should ship. Uniform ratios are a candidate.
  report   every seed and target, the test images, read once: uniform ratios and the selected candidates with l1
           and Taylor channels, and ``BASELINES`` (global L1, random channels, HARP learning rates and channels for
           ``--harp-epochs`` under the fine-tuning objective).
Then ``summary.json``/``summary.md``: paired per-seed differences (``job.stats``: 95% t-interval, win/tie/loss) to
uniform-l1 and to the uniform row with the same criterion, whether fine-tuning keeps the order pruning made
(Spearman's rho per seed) and seconds per stage; each grid folder keeps its ``compare.md`` and ``compare.png``.

    python benchmarks/allocation.py --output runs/benchmarks/allocation                 # CPU: many hours
    python benchmarks/allocation.py --output runs/benchmarks/allocation-fast --width 0.0625 --select 1 \\
        --set finetune.method=fast                                                       # the 3-hour CPU setting
    python benchmarks/allocation.py --output runs/benchmarks/allocation-gpu --set device=cuda

Every row is a resumable run folder: rerun the same command to finish. A folder holding rows of another recipe
refuses it in one line (the job's fingerprint). ``--summary-only`` rewrites the summary from what is finished.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from scipy.stats import spearmanr

from grid import (Grid, add_grid_arguments, provenance, run_then_summarise, save_summary, stage_seconds,
                  summary_header, verdict_table)
from nni_mrs_plugin.checkpoint import atomic_json
from nni_mrs_plugin.job.compare import compare_verdicts
from nni_mrs_plugin.job.stats import mean_std, paired

BASE: Dict[str, Any] = {
    "data": {"dataset": "fashion_mnist", "train_subset": 20000, "validation": 5000, "test_subset": 2000},
    "pretrain": {"epochs": 10, "method": "pgd", "steps": 5, "lr": 0.05},
    "pruning": {"budget": "flops", "r_max": 0.9, "adapt_bn": 512},
    "finetune": {"epochs": 3, "method": "pgd", "steps": 5, "lr": 0.01},
    "eval": {"attacks": ["clean", "pgd20", "autoattack"], "samples": 2000, "autoattack_samples": 500,
             "after_pruning": ["clean", "pgd20"]},
    "device": "cpu", "progress": False,
}
PHASES = {  # what each phase changes in BASE: choices are made on validation images, without AutoAttack
    "select": {"eval.split": "validation", "eval.attacks": ["clean", "pgd20"]},
    "default": {"eval.split": "validation", "eval.attacks": ["clean", "pgd20"]},
    "report": {},
}
MODELS = {"vgg16_bn": [0.75, 0.9, 0.95], "resnet18": [0.9]}  # report targets: fractions of the FLOPs removed
CANDIDATES: Dict[str, Dict[str, Any]] = {  # MRSPruner options; the channel criterion comes from the row's name
    "power-weight": {"rule": "power", "estimator": "weight", "tau": 1.0},  # the first release's default
    "power-feature": {"rule": "power", "estimator": "feature", "tau": 1.0},
    "budget-curve": {"rule": "budget", "estimator": "curve"},
    "budget-curve-bn": {"rule": "budget", "estimator": "curve", "recalibrate": True},
    "joint-bn": {"rule": "joint", "recalibrate": True},  # the trade measured on the model pruned so far
    "budget-curve-reattack": {"rule": "budget", "estimator": "curve", "reattack": True},
}
MEASURE_ONLY = {"budget-curve-reattack"}  # measured, not eligible: re-attacking every probe costs ~25x the curves
BASELINES = ["l1-global", "random", "harp"]
REFERENCE = "uniform-l1"
SHIPPED = "power-feature"


def variant(row: str, harp_epochs: int = 1, n_samples: int = 512) -> Dict[str, Any]:
    """The config overrides of a row: '<candidate or uniform>-<criterion>' or a baseline's registry name."""
    if row == "harp":  # rates and channels learned from uniform-L1 gates under the fine-tuning objective
        return {"pruning.pruner": "harp", "pruning.options": {"epochs": harp_epochs}}
    if row in BASELINES:
        return {"pruning.pruner": row, "pruning.options": {}}
    name, criterion = row.rsplit("-", 1)
    options = {"tau": 0.0} if name == "uniform" else dict(CANDIDATES[name])
    return {"pruning.pruner": "mrs", "pruning.options": {**options, "criterion": criterion, "n_samples": n_samples}}


def same_criterion(row: str) -> Optional[str]:
    """The uniform row with the row's own channel criterion: the difference to it is the allocation's alone."""
    criterion = row.rsplit("-", 1)[-1]
    return f"uniform-{criterion}" if criterion in ("l1", "taylor") and row != "l1-global" else None


# -- choices --------------------------------------------------------------------------------------------------
def choose_candidates(runs: List[Dict[str, Any]], keep: int) -> Dict[str, Any]:
    """The ``keep`` eligible candidates with the best mean fine-tuned PGD-20 over models (l1 rows), and with
    several criteria the one with the best mean over the (model, allocation) pairs every criterion has."""
    scores: Dict[str, List[float]] = {}
    by_criterion: Dict[str, Dict[str, float]] = {}
    for run in runs:
        name, criterion = run["variant"].rsplit("-", 1)
        if name in CANDIDATES and criterion == "l1":
            scores.setdefault(name, []).append(run["accuracy"]["pgd20"])
        by_criterion.setdefault(criterion, {})[f"{run['model']}/{name}"] = run["accuracy"]["pgd20"]
    ranked = sorted(scores, key=lambda c: -sum(scores[c]) / len(scores[c]))
    record: Dict[str, Any] = {"selected": [c for c in ranked if c not in MEASURE_ONLY][:keep],
                              "validation_pgd20": {c: scores[c] for c in ranked}}
    pairs = set.intersection(*(set(v) for v in by_criterion.values())) if by_criterion else set()
    if len(by_criterion) > 1 and pairs:
        means = {k: sum(v[p] for p in pairs) / len(pairs) for k, v in by_criterion.items()}
        record.update(criterion=max(means, key=means.get), criterion_pgd20=means, criterion_pairs=sorted(pairs))
    return record


def choose_default(runs: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The row with the best mean fine-tuned PGD-20 over the (model, seed) pairs every row has, and each row's
    paired difference to uniform ratios."""
    by_row: Dict[str, Dict[tuple, float]] = {}
    for run in runs:
        by_row.setdefault(run["variant"], {})[(run["model"], run["seed"])] = run["accuracy"]["pgd20"]
    pairs = sorted(set.intersection(*(set(v) for v in by_row.values()))) if by_row else []
    if not pairs:
        return None
    means = {row: sum(v[p] for p in pairs) / len(pairs) for row, v in by_row.items()}
    uniform = next((row for row in by_row if row.startswith("uniform-")), None)
    versus = {row: paired({p: by_row[row][p] for p in pairs}, {p: by_row[uniform][p] for p in pairs})
              for row in by_row if uniform and row != uniform}
    return {"chosen": max(means, key=means.get), "validation_pgd20": means, "versus_uniform": versus,
            "pairs": [list(p) for p in pairs]}


def report_rows(selected: Dict[str, Any]) -> List[str]:
    chosen = selected["selected"]
    return ([REFERENCE] + [f"{c}-l1" for c in chosen] + ["uniform-taylor"] + [f"{c}-taylor" for c in chosen]
            + BASELINES)


# -- analysis -------------------------------------------------------------------------------------------------
def verdicts(runs: List[Dict[str, Any]], same: bool) -> List[Dict[str, Any]]:
    """Per model, each row against uniform-l1 (``same``: against the uniform row with its own criterion)."""
    out = []
    for model in sorted({r["model"] for r in runs}):
        mine = [r for r in runs if r["model"] == model]
        references = {same_criterion(r["variant"]) for r in mine} - {None} if same else {REFERENCE}
        for reference in sorted(references):
            group = [r for r in mine if not same or same_criterion(r["variant"]) == reference]
            out += [dict(v, model=model) for v in compare_verdicts(group, reference)]
    return out


def carry_over(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per model and target, Spearman's rho over the rows of each seed between PGD-20 right after pruning and
    after fine-tuning: near 1, fine-tuning keeps the order the allocation made; near 0, it erases it."""
    groups: Dict[tuple, List[float]] = {}
    for key in sorted({(r["model"], r["target"], r["seed"]) for r in runs}):
        rows = [r for r in runs if (r["model"], r["target"], r["seed"]) == key and "accuracy_after_pruning" in r]
        if len(rows) >= 3:
            rho = spearmanr([r["accuracy_after_pruning"]["pgd20"] for r in rows],
                            [r["accuracy"]["pgd20"] for r in rows]).statistic
            if rho == rho:  # constant columns give nan
                groups.setdefault(key[:2], []).append(float(rho))
    return [{"model": m, "target": t, "rho": mean_std(rhos)} for (m, t), rhos in groups.items()]


def write_summary(grid: Grid, argv: Optional[List[str]]) -> Dict[str, Any]:
    out = grid.output
    summary: Dict[str, Any] = provenance("benchmarks/allocation.py", argv)
    text = summary_header(summary)
    for name in ("selected", "default"):
        if (out / f"{name}.json").is_file():
            summary[name] = json.loads((out / f"{name}.json").read_text())
            text += [f"{name}: `{json.dumps(summary[name].get('selected', summary[name].get('chosen')))}`", ""]
    runs = grid.runs("report")
    if runs:
        summary["report"] = {"versus_uniform_l1": verdicts(runs, same=False), "same_criterion": verdicts(runs, True),
                             "carry_over": carry_over(runs), "seconds": stage_seconds(runs), "rows": len(runs)}
        text += ["Against uniform-l1:", "", *verdict_table(summary["report"]["versus_uniform_l1"]), "",
                 "Allocation alone, against the uniform row with the same criterion:", "",
                 *verdict_table(summary["report"]["same_criterion"]), "",
                 "Does fine-tuning keep the order right after pruning (Spearman's rho over rows, mean ± std over "
                 "seeds)?", "", "| model | target | rho |", "|---|---:|---|",
                 *(f"| {c['model']} | {c['target']:g} | {c['rho']['mean']:+.2f} ± {c['rho']['std']:.2f} |"
                   for c in summary["report"]["carry_over"]), "",
                 f"Mean seconds per row and stage: `{json.dumps(summary['report']['seconds'])}`", ""]
    return save_summary(grid, summary, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_grid_arguments(parser, "runs/benchmarks/allocation", list(MODELS))
    parser.add_argument("--targets", nargs="+", type=float, help="report targets of every model (default: MODELS)")
    parser.add_argument("--select-target", type=float, default=0.9)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--select", type=int, default=2, help="MRS candidates kept for the report")
    parser.add_argument("--select-criteria", nargs="+", default=["l1"], choices=["l1", "taylor"])
    parser.add_argument("--harp-epochs", type=int, default=1, help="passes over the training set of the harp row")
    parser.add_argument("--n-samples", type=int, default=512, help="calibration images of the MRS rows")
    parser.add_argument("--phases", nargs="+", default=["select", "report"], choices=list(PHASES))
    args = parser.parse_args(argv)
    grid, out = Grid(BASE, PHASES, args), Path(args.output)
    targets = {m: args.targets or MODELS.get(m, [args.select_target]) for m in args.models}
    select = {m: [args.select_target] for m in args.models}

    def rows(names: List[str]) -> Dict[str, Dict[str, Any]]:
        return {row: variant(row, args.harp_epochs, args.n_samples) for row in names}


    def run() -> None:
        if "select" in args.phases:
            grid.run("select", rows([f"{c}-{k}" for k in args.select_criteria
                                     for c in ["uniform", *args.candidates]]), select, args.seeds[:1])
            atomic_json(out / "selected.json", choose_candidates(grid.runs("select"), args.select))
        selected = json.loads((out / "selected.json").read_text()) if (out / "selected.json").is_file() else None
        if selected is None and set(args.phases) - {"select"}:
            parser.error(f"{out / 'selected.json'} is missing: run the select phase first")
        if "default" in args.phases:
            criterion = selected.get("criterion", "taylor")
            names = ["uniform", SHIPPED, *(c for c in selected["selected"] if c != SHIPPED)]
            grid.run("default", rows([f"{n}-{criterion}" for n in names]), select, args.seeds)
            atomic_json(out / "default.json", choose_default(grid.runs("default")))
        if "report" in args.phases:
            grid.run("report", rows(report_rows(selected)), targets, args.seeds)

    return run_then_summarise("allocation", grid, run, lambda: write_summary(grid, argv))


if __name__ == "__main__":
    sys.exit(main())
