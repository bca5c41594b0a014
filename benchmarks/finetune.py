"""Fine-tuning benchmark: which recipe makes a pruned model the most robust, and at what compute?

A grid on the compare harness (``grid.py``): the job's default pruning (uniform ratios, adversarial Taylor
channels) at ``MODELS``' targets, every row pruned from the same PGD-trained dense model of its seed, BatchNorm
re-estimated after the removal, then fine-tuned by one recipe (``RECIPES``: PGD, TRADES, RSLAD distilling from the
dense model, weight averaging, N-FGSM) for each of ``--epochs``. Fashion-MNIST at eps = 0.1, VGG16-bn and ResNet18
at width 0.125, 20,000 training images, 5,000 held out for validation, 2,000 test images, AutoAttack on 500.

Phases, each a compare grid per (model, seed) in ``OUTPUT/<phase>/<model>-seed<seed>/``:
  select   the first seed, validation images: every recipe at every epoch count; the best mean fine-tuned PGD-20
           over (model, target) per epoch count is the recipe to beat pgd with (``selected.json``).
  report   every seed, the test images, read once: every recipe and epoch count, and at the largest epoch count
           the selected recipe with MRS allocation (``tau=1``, ``feature``) and, with ``--harp-epochs N``, HARP
           learning rates on its reference schedule for N epochs (20 is the reference): does allocation matter
           once fine-tuning is long? With ``--round-to N``, the selected recipe with every pruned unit keeping a
           multiple of N channels: what the alignment that speeds up deployment costs in robustness. With one
           recipe there is nothing to select, and ``--phases report`` runs alone.
Then ``summary.json``/``summary.md``: each recipe's paired per-seed difference to pgd at the same epochs (95%
t-interval, win/tie/loss), the allocation rows against their uniform recipe, the dense model's accuracy (the
ceiling) and the mean seconds of each row's fine-tuning (robustness against compute).

    python benchmarks/finetune.py --output runs/benchmarks/finetune                   # CPU: many hours
    python benchmarks/finetune.py --output runs/benchmarks/finetune-3 --epochs 3 --models vgg16_bn   # a cut
    python benchmarks/finetune.py --output runs/benchmarks/finetune-gpu --set device=cuda --set data.train_subset=null
    python benchmarks/finetune.py --output runs/benchmarks/round-to --recipes pgd --epochs 3 --phases report \
        --no-allocation --round-to 8 --models vgg16_bn --targets 0.75    # what pruning.round_to costs

Every row is a resumable job run folder: rerun the same command to finish; another recipe in the same folder is
refused in one line (the job's fingerprint).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional, Sequence, Union

from grid import (Grid, add_grid_arguments, dense_line, markdown, provenance, run_then_summarise, save_summary,
                  stage_seconds, summary_header, verdict_data, verdict_table)
from nni_mrs_plugin.checkpoint import atomic_json
from nni_mrs_plugin.harp import HARPPruner
from nni_mrs_plugin.job.compare import compare_verdicts
from nni_mrs_plugin.job.stats import mean_std

BASE: Dict[str, Any] = {
    "data": {"dataset": "fashion_mnist", "train_subset": 20000, "validation": 5000, "test_subset": 2000},
    "pretrain": {"epochs": 10, "method": "pgd", "steps": 5, "lr": 0.05},
    "pruning": {"budget": "flops", "r_max": 0.9, "adapt_bn": 512, "options": {"n_samples": 512}},
    "finetune": {"method": "pgd", "steps": 5, "lr": 0.01},
    "eval": {"attacks": ["clean", "pgd20", "autoattack"], "samples": 2000, "autoattack_samples": 500},
    "device": "cpu", "progress": False,
}
PHASES = {"select": {"eval.split": "validation", "eval.attacks": ["clean", "pgd20"]}, "report": {}}
MODELS = {"vgg16_bn": [0.75, 0.9], "resnet18": [0.9]}
EMA = 0.995  # averages over about 200 steps: under the 470 of 3 epochs of 20,000 images at batch 128
RECIPES: Dict[str, Dict[str, Any]] = {
    "pgd": {"finetune.method": "pgd"},
    "trades": {"finetune.method": "trades"},
    "rslad": {"finetune.method": "rslad"},  # the run's dense model is the teacher
    "rslad-ema": {"finetune.method": "rslad", "finetune.ema": EMA},
    "pgd-ema": {"finetune.method": "pgd", "finetune.ema": EMA},
    "nfgsm": {"finetune.method": "nfgsm"},
}
ALLOCATION = {"mrs": {"pruning.options.tau": 1.0, "pruning.options.estimator": "feature"}}


def variants(recipes: List[str], epochs: List[int]) -> Dict[str, Dict[str, Any]]:
    return {f"{r}-{e}": {**RECIPES[r], "finetune.epochs": e} for e in epochs for r in recipes}


def choose(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per epoch count, the recipe with the best mean fine-tuned PGD-20 over (model, target) on validation."""
    scores: Dict[int, Dict[str, List[float]]] = {}
    for run in runs:
        recipe, epochs = run["variant"].rsplit("-", 1)
        scores.setdefault(int(epochs), {}).setdefault(recipe, []).append(run["accuracy"]["pgd20"])
    means = {e: {r: sum(v) / len(v) for r, v in by.items()} for e, by in scores.items()}
    return {"best": {str(e): max(m, key=m.get) for e, m in means.items()},
            "validation_pgd20": {str(e): m for e, m in means.items()}}


def allocation_rows(selected: Dict[str, Any], epochs: int, harp_epochs: int, allocation: bool = True,
                    round_to: Sequence[Union[int, str]] = ()) -> Dict[str, Dict[str, Any]]:
    """The selected recipe at ``epochs`` with MRS allocation (and HARP's learned rates), and with channel counts
    rounded to each of ``round_to`` (``pruning.round_to``), labelled after it."""
    recipe = selected["best"][str(epochs)]
    base = {**RECIPES[recipe], "finetune.epochs": epochs}
    rows = {f"{recipe}-{epochs}-{name}": {**base, **overrides} for name, overrides in ALLOCATION.items() if allocation}
    rows.update({f"{recipe}-{epochs}-r{n}": {**base, "pruning.round_to": n} for n in round_to})
    if harp_epochs:  # HARP's reference schedule (dense start, gamma + 0.01 per epoch) over harp_epochs epochs
        rows[f"{recipe}-{epochs}-harp"] = {**base, "pruning.pruner": "harp", "pruning.options": {
            **HARPPruner.REFERENCE, "epochs": harp_epochs, "stages": harp_epochs}}
    return rows


def verdicts(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per model: each recipe against pgd at the same epochs; each allocation row against its uniform recipe."""
    out = []
    for model in sorted({r["model"] for r in runs}):
        mine = [r for r in runs if r["model"] == model]
        for reference in sorted({r["variant"] for r in mine if r["variant"].startswith("pgd-")
                                 and r["variant"].count("-") == 1}):
            epochs = reference.rsplit("-", 1)[1]
            group = [r for r in mine if r["variant"].count("-") <= 2 and r["variant"].endswith(f"-{epochs}")]
            out += [dict(v, model=model) for v in compare_verdicts(group, reference)]
        for row in sorted({r["variant"] for r in mine if not r["variant"].rsplit("-", 1)[1].isdigit()}):
            uniform = row.rsplit("-", 1)[0]
            group = [r for r in mine if r["variant"] in (row, uniform)]
            out += [dict(v, model=model) for v in compare_verdicts(group, uniform) if v["variant"] == row]
    return out


def table(runs: List[Dict[str, Any]], seconds: Dict[str, Dict[str, float]]) -> Dict[str, Any]:
    """Mean ± std over seeds per (model, target, row), with the mean seconds of the row's fine-tuning."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["model"], run["target"], run["variant"]), []).append(run)
    attacks = sorted({a for r in runs for a in r["accuracy"]}, key=["clean", "pgd20", "autoattack"].index)
    rows = []
    for (model, target, row), members in sorted(groups.items()):
        cells = [mean_std([m["accuracy"][a] for m in members if a in m["accuracy"]]) for a in attacks]
        rows.append([model, f"{target:g}", row, len(members),
                     *(f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}" for c in cells),
                     f"{seconds.get(row, {}).get('finetune', float('nan')):.0f}"])
    return {"columns": ["model", "target", "row", "seeds", *attacks, "fine-tuning s"], "rows": rows}


def write_summary(grid: Grid, argv: Optional[List[str]]) -> Dict[str, Any]:
    summary: Dict[str, Any] = provenance("benchmarks/finetune.py", argv)
    text = summary_header(summary)
    if (grid.output / "selected.json").is_file():
        summary["selected"] = json.loads((grid.output / "selected.json").read_text())
        text += [f"Selected on validation (best recipe per epoch count): `{json.dumps(summary['selected']['best'])}`",
                 ""]
    runs = grid.runs("report")
    if runs:
        seconds = stage_seconds(runs, by="variant")
        dense = grid.runs("report", key="dense")
        summary["report"] = {"verdicts": verdicts(runs), "seconds": seconds, "rows": len(runs),
                             "dense": [{"model": d["model"], "seed": d["seed"], "accuracy": d["accuracy"]}
                                       for d in dense]}
        means = table(runs, seconds)
        summary["runs"] = [  # as data, for benchmarks/render.py
            {"label": "Mean ± std over seeds", "caption": "Test accuracy (%) after fine-tuning; fine-tuning s: the "
             "mean wall seconds of the row's fine-tuning.", **means},
            {"label": "Against pgd at the same epochs", "caption": "Paired per-seed differences in points, 95% "
             "t-interval; the allocation row against its uniform recipe.",
             **verdict_data(summary["report"]["verdicts"])}]
        text += ["Mean ± std over seeds (test images):", "", *markdown(means), "",
                 dense_line(dense, "Dense models (the ceiling)"), "",
                 "Against pgd at the same epochs, and allocation against its uniform recipe:", "",
                 *verdict_table(summary["report"]["verdicts"]), ""]
    return save_summary(grid, summary, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_grid_arguments(parser, "runs/benchmarks/finetune", list(MODELS))
    parser.add_argument("--targets", nargs="+", type=float, help="targets of every model (default: MODELS)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--epochs", nargs="+", type=int, default=[3, 10], help="fine-tuning epochs of every recipe")
    parser.add_argument("--harp-epochs", type=int, default=0,
                        help="add a HARP row on its reference schedule over this many epochs (the reference: 20)")
    parser.add_argument("--round-to", nargs="+", type=lambda text: text if text == "auto" else int(text), default=[],
                        help="add rows of the selected recipe with channel counts rounded to each N or auto (the "
                        "robustness cost of pruning.round_to)")
    parser.add_argument("--no-allocation", action="store_true", help="no MRS allocation row")
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES))
    args = parser.parse_args(argv)
    grid = Grid(BASE, PHASES, args)
    targets = {m: args.targets or MODELS.get(m, [0.9]) for m in args.models}

    def run() -> None:
        if "select" in args.phases:
            grid.run("select", variants(args.recipes, args.epochs), targets, args.seeds[:1])
            atomic_json(grid.output / "selected.json", choose(grid.runs("select")))
        if "report" in args.phases:
            path = grid.output / "selected.json"
            if not path.is_file() and len(args.recipes) == 1:  # one recipe: nothing to choose
                atomic_json(path, {"best": {str(e): args.recipes[0] for e in args.epochs}, "validation_pgd20": {}})
            if not path.is_file():
                parser.error(f"{path} is missing: run the select phase first")
            rows = {**variants(args.recipes, args.epochs),
                    **allocation_rows(json.loads(path.read_text()), max(args.epochs), args.harp_epochs,
                                      not args.no_allocation, args.round_to)}
            grid.run("report", rows, targets, args.seeds)

    return run_then_summarise("finetune", grid, run, lambda: write_summary(grid, argv))


if __name__ == "__main__":
    sys.exit(main())
