"""Collapse benchmark: do the fast fine-tuning runs that fell to chance still collapse, with the collapse guard or
with N-FGSM?

The allocation benchmark's 3-hour setting (``allocation.py --width 0.0625 --set finetune.method=fast``: VGG16-bn
at width 0.0625, Fashion-MNIST at eps = 0.1, PGD-trained dense model, 3 epochs of FGSM fine-tuning with a random
start) saw 3 of 84 fine-tuned rows end at chance (``CASES``). Each case is re-run here on the compare harness with
its recipe (``allocation.BASE``, the row's pruner and options from ``allocation.variant``) three ways
(``RECIPES``): as it was (``fast``, no guard), with ``fit``'s collapse guard (``finetune.collapse_retries: 2``:
an epoch at chance rolls back and trains again at half the learning rate) and with N-FGSM (``nfgsm``). The
training subset is now drawn per seed (it was one draw for every seed), so an unguarded row need not collapse
again: the table says whether it did. Collapsed: test clean accuracy at most 1/classes + 2 points, the guard's
own test.

    python benchmarks/collapse.py --output runs/benchmarks/collapse        # resumable
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from allocation import BASE, variant
from grid import Grid, add_grid_arguments, dense_line, markdown, provenance, run_then_summarise, save_summary, \
    summary_header
from nni_mrs_plugin import TrainingCollapsedError
from nni_mrs_plugin.checkpoint import atomic_json

CASES = [("uniform-l1", 0.9, 1), ("l1-global", 0.9, 2), ("l1-global", 0.95, 1)]  # (row, target, seed) at chance
RECIPES: Dict[str, Dict[str, Any]] = {"fast": {"finetune.method": "fast"},  # the guarded row last: it may give up
                                      "nfgsm": {"finetune.method": "nfgsm"},
                                      "guarded": {"finetune.method": "fast", "finetune.collapse_retries": 2}}
ATTACKS = ("clean", "pgd20", "autoattack")
CHANCE = 0.1 + 0.02  # ten classes


def case_name(row: str, target: float, seed: int) -> str:
    return f"{row}-{target:g}-seed{seed}"


def run(grid: Grid) -> None:
    """Every case of ``--seeds``; a guarded row whose retries fail too is recorded in ``gave-up.json``."""
    for row, target, seed in CASES:
        phase = case_name(row, target, seed)
        if seed not in grid.args.seeds or (grid.output / phase / "gave-up.json").is_file():
            continue
        rows = {f"{row}.{recipe}": {**variant(row), **overrides} for recipe, overrides in RECIPES.items()}
        try:
            grid.run(phase, rows, {model: [target] for model in grid.args.models}, [seed])
        except TrainingCollapsedError as err:
            atomic_json(grid.output / phase / "gave-up.json", {"row": f"{row}.guarded", "error": str(err)})


def retries(folder: str) -> Dict[str, Any]:
    """What the guard did in a row's fine-tuning: epochs retried and the learning-rate scale it ended at."""
    finetune = json.loads((Path(folder) / "stages.json").read_text())["stages"]["finetune"]
    history = finetune["fit"]["history"]
    return {"retried_epochs": [row["epoch"] for row in history if row.get("collapse_retries")],
            "lr_scale": min([row.get("lr_scale", 1.0) for row in history] or [1.0]), "seconds": finetune["seconds"]}


def write_summary(grid: Grid, argv: Optional[List[str]]) -> Dict[str, Any]:
    summary: Dict[str, Any] = provenance("benchmarks/collapse.py", argv)
    text = summary_header(summary)
    table: List[List[Any]] = []
    dense: List[Dict[str, Any]] = []
    attacks: List[str] = []
    for row, target, seed in CASES:
        phase = case_name(row, target, seed)
        dense += [d for d in grid.runs(phase, key="dense") if d["seed"] not in {e["seed"] for e in dense}]
        for run in grid.runs(phase):
            guard, accuracy = retries(run["folder"]), run["accuracy"]
            attacks = attacks or [a for a in ATTACKS if a in accuracy]
            table.append([row, f"{target:g}", seed, run["variant"].split(".", 1)[1],
                          *(f"{100 * accuracy[a]:.2f}" for a in attacks), "yes" if accuracy["clean"] <= CHANCE else "no",
                          ", ".join(map(str, guard["retried_epochs"])) or "-", f"{guard['lr_scale']:g}",
                          f"{guard['seconds']:.0f}"])
        gave_up = grid.output / phase / "gave-up.json"
        if gave_up.is_file():
            table.append([row, f"{target:g}", seed, "guarded", *("-" for _ in attacks), "gave up: "
                          + json.loads(gave_up.read_text())["error"], "-", "-", "-"])
    data = {"columns": ["row", "target", "seed", "recipe", *attacks, "collapsed", "epochs retried", "lr scale",
                        "fine-tuning s"], "rows": table}
    summary["runs"] = [{"label": "The collapsed rows re-run", "caption": "Test accuracy (%) after 3 epochs of "
                        "fine-tuning; collapsed: clean at most 12%.", **data}]
    summary["dense"] = [{"seed": d["seed"], "accuracy": d["accuracy"]} for d in dense]
    text += ["Test accuracy (%) after fine-tuning, per collapsed case and recipe:", "", *markdown(data), "",
             dense_line(dense), ""]
    return save_summary(grid, summary, text)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_grid_arguments(parser, "runs/benchmarks/collapse", ["vgg16_bn"], width=0.0625,
                       seeds=sorted({seed for _, _, seed in CASES}))
    args = parser.parse_args(argv)
    grid = Grid(BASE, {case_name(*case): {} for case in CASES}, args)
    return run_then_summarise("collapse", grid, lambda: run(grid), lambda: write_summary(grid, argv))


if __name__ == "__main__":
    sys.exit(main())
