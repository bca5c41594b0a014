"""Allocation benchmark: do per-unit ratios chosen by robustness sensitivity beat uniform ratios at equal FLOPs?

Models with room to allocate (VGG16-bn and ResNet18, CIFAR-style, narrowed by ``--widths``), Fashion-MNIST at
eps = 0.1 with a validation split cut off the training set, one PGD-trained dense model per (model, seed), then,
per FLOPs target, every row prunes that dense model, removes the channels with ModelSpeedup, recalibrates
BatchNorm (adaptive BN on 512 training images), is evaluated right after pruning, fine-tuned identically
(PGD-AT) and evaluated again (clean, PGD-20; AutoAttack on the first ``--aa`` images).

Phases:
  select   seed 0, the 0.9 target, validation images only: every MRS candidate (``CANDIDATES``, l1 channels)
           and uniform ratios; the two candidates with the best fine-tuned PGD-20 validation accuracy (mean over
           the models) become the MRS rows of the report. Also measures fixed X' against re-attacked curves.
  default  every seed, the 0.9 target, validation images only: the shipped default (``SHIPPED``), the other
           selected allocations and uniform ratios, all with the criterion the select phase chose; the best mean
           fine-tuned PGD-20 over models and seeds is what ``MRSPruner`` should ship (``default.json``). Uniform
           ratios are a candidate: the default must at least not lose to them.
  report   every seed and target on the test images, read once: the selected MRS variants x {l1, taylor},
           uniform ratios x {l1, taylor}, global L1, random channels, and HARP (rates and channels learned
           for ``--harp-epochs`` under the fine-tuning objective, starting from uniform-L1 gates).
Then ``summary.json``/``summary.md`` (paired per-seed differences to uniform-l1 with 95% t-intervals, seconds per
stage, whether fine-tuning keeps the order pruning made, and the wall time from ``wall.log`` when the run keeps one)
and plots (accuracy against FLOPs removed, per-unit ratios, the measured per-unit loss-rise curves).

    python benchmarks/allocation.py --output runs/allocation    # width 0.125, PGD-5: over 6 h on 2 CPU cores
    bash benchmarks/results/allocation-cpu-w0.0625-fast/run.sh       # the whole CPU benchmark in 2 h 15 min (2 cores)
    python benchmarks/allocation.py --output runs/allocation-full --train-size 0 --device cuda   # full data
    bash benchmarks/results/allocation-cpu/run.sh    # the recorded CPU run: 2 processes, resumes from its run folder

Every finished piece (dense model, row) is a file in ``--output``; rerunning the same command skips them, and an
interrupted fine-tuning resumes from its last epoch. ``--summary-only`` rebuilds tables and plots. The folder's
``settings.json`` keeps the recipe (``RECIPE``) its rows were measured with; another recipe is refused.
``--finetune-method fast`` fine-tunes with FGSM + random start instead of PGD (the 3-hour CPU configuration,
``benchmarks/results/allocation-cpu-w0.0625-fast/run.sh``).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from nni_mrs_plugin.checkpoint import atomic_json, atomic_write, load_pruned, save_pruned
from nni_mrs_plugin.data import load_dataset
from nni_mrs_plugin.evaluate import count_flops, count_params, evaluate_robustness
from nni_mrs_plugin.models import build_model
from nni_mrs_plugin.budget.baselines import baseline_masks
from nni_mrs_plugin.mrs.curves import DEFAULT_RATIOS
from nni_mrs_plugin.host.registry import get_pruner
from nni_mrs_plugin.host.speedup import recalibrate_batchnorm, speedup_model
from nni_mrs_plugin.job.stats import interval, verdict
from nni_mrs_plugin.train.fit import fit
from nni_mrs_plugin.train.trainer import AdversarialTrainer

EPS = 0.1
SPLIT_SEED = 1234  # the validation/train/test draws: the same for every seed and row
# MRS candidates for the select phase: (options of MRSPruner); criterion comes from the row
CANDIDATES: Dict[str, Dict[str, Any]] = {
    "power-weight": {"rule": "power", "estimator": "weight", "tau": 1.0},  # the first release's default
    "power-feature": {"rule": "power", "estimator": "feature", "tau": 1.0},
    "budget-curve": {"rule": "budget", "estimator": "curve"},
    "budget-curve-bn": {"rule": "budget", "estimator": "curve", "recalibrate": True},
    # the budget rule's trade measured on the model pruned everywhere so far (NetAdapt's greedy), not summed curves
    "joint-bn": {"rule": "joint", "recalibrate": True},
    # the attack re-run on every pruned model instead of the dense model's X': does the cheap fixed X' suffice?
    "budget-curve-reattack": {"rule": "budget", "estimator": "curve", "reattack": True},
}
# measured in the select phase but not eligible for the report: re-attacking every probe costs ~25x the fixed-X'
# curves (see BENCHMARKS.md), far over the 5%-of-an-epoch bound on what the allocator may measure
MEASURE_ONLY = {"budget-curve-reattack"}
# harp learns rates and channels from uniform-L1 gates (HARPPruner): paired with uniform-l1, the difference is what
# the learning adds
BASELINES = ["uniform-l1", "uniform-taylor", "l1-global", "random", "harp"]
REFERENCE = "uniform-l1"
SHIPPED = "power-feature"  # MRSPruner's default before the default phase chose uniform ratios (tau 1, 'feature')


# -- data ---------------------------------------------------------------------------------------------------
def splits(train_size: int, val_size: int, test_size: int) -> Tuple[TensorDataset, Subset, Subset]:
    """(train, validation, test): validation is cut off the training set, before the training subset is drawn."""
    full = load_dataset("fashion_mnist", train=True)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    val, rest = order[:val_size], order[val_size:]
    train = rest[:train_size] if train_size > 0 else rest
    test = load_dataset("fashion_mnist", train=False)
    test_order = torch.randperm(len(test), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    return Subset(full, train), Subset(full, val), Subset(test, test_order[:test_size])


def tensors(dataset, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    x, y = next(iter(DataLoader(dataset, batch_size=n, shuffle=False)))
    return x, y


# -- one row --------------------------------------------------------------------------------------------------
def row_options(row: str) -> Tuple[str, Dict[str, Any]]:
    """(registry pruner, its options) for a row name: '<candidate>-<criterion>' or a baseline."""
    if row == "l1-global":
        return "l1-global", {}
    if row in ("random", "harp"):
        return row, {}
    name, criterion = row.rsplit("-", 1)
    if name == "uniform":
        return "mrs", {"tau": 0.0, "criterion": criterion}
    return "mrs", dict(CANDIDATES[name], criterion=criterion)


def prune(dense: torch.nn.Module, row: str, target: float, calibration, seed: int, device: str, train=None,
          args=None, work: Optional[Path] = None):
    """(pruned model after removal, allocation dict)."""
    name, options = row_options(row)
    model = copy.deepcopy(dense).to(device).eval()
    dummy = torch.zeros(1, 1, 28, 28, device=device)
    if name == "mrs":
        options = dict(options, calibration=calibration, eps=EPS, n_samples=512, progress=False)
    if name == "harp":  # the same objective as the fine-tuning, one pass over the training images
        loader = DataLoader(train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(seed))
        options = dict(train_data=loader, trainer=trainer(args), epochs=args.harp_epochs, progress=False,
                       checkpoint=work)
    if name in ("mrs", "random", "harp"):
        options["seed"] = seed
    allocation, masks = baseline_masks(model, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": target}], dummy,
                                       get_pruner(name), "flops", 0.9, **options)
    speedup_model(model, masks, dummy)
    return model, allocation.as_dict()


def evaluate(model, dataset, attacks, device, samples=None, aa=None, seconds=None) -> Dict[str, float]:
    """Accuracy per attack; each attack's wall time is added to ``seconds`` (a dict) when one is given."""
    loader = DataLoader(dataset, batch_size=500, shuffle=False)
    result = evaluate_robustness(model, loader, attacks, eps=EPS, max_samples=samples, autoattack_samples=aa,
                                 device=device, seconds=seconds)
    return {name: result[name]["accuracy"] for name in attacks}


def run_row(path: Path, dense_path: Path, row: str, target: float, seed: int, data, args, phase: str) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    train, val, test = data
    started = time.time()
    dense = load_pruned(dense_path)
    before = {"flops": count_flops(dense, torch.zeros(1, 1, 28, 28)), "params": count_params(dense)}
    calibration = tensors(Subset(train, range(seed * 512, seed * 512 + 512)), 512)
    harp_state = path.with_suffix(".harp.pt")  # HARPPruner's resume point, removed with the row's other leftovers
    stages: Dict[str, Any] = {}  # where the row's time went: what a CPU budget has to pay for
    clock = time.time()
    model, allocation = prune(dense, row, target, calibration, seed, args.device, train, args, harp_state)
    model.cpu()
    after = {"flops": count_flops(model, torch.zeros(1, 1, 28, 28)), "params": count_params(model)}
    recalibrate_batchnorm(model.to(args.device), calibration[0].to(args.device), 256)
    stages["prune"], clock = time.time() - clock, time.time()
    judged = test if phase == "report" else val
    pruned = evaluate(model, judged, ["clean", "pgd20"], args.device, samples=args.test_size,
                      seconds=stages.setdefault("pruned", {}))
    work = path.with_suffix("")
    clock = time.time()
    fit(model, DataLoader(train, batch_size=128, shuffle=True), None, args.finetune_epochs, trainer(args),
        lr=args.finetune_lr, checkpoint_dir=work, resume=True, seed=seed, device=args.device, progress=False,
        on_epoch=epoch_line(f"  fine-tuning {row}", args.finetune_epochs))
    stages["finetune"] = time.time() - clock  # a resumed fine-tuning counts only its last session's epochs
    attacks = ["clean", "pgd20"] + (["autoattack"] if phase == "report" and args.aa else [])
    tuned = evaluate(model, judged, attacks, args.device, samples=args.test_size, aa=args.aa,
                     seconds=stages.setdefault("finetuned", {}))
    result = {"row": row, "target": target, "seed": seed, "phase": phase,
              "flops_removed": 1 - after["flops"] / before["flops"], "params": after["params"],
              "dense_params": before["params"], "pruned": pruned, "finetuned": tuned,
              "ratios": {u["unit"]: u["ratio"] for u in allocation["units"]},
              "curves": allocation.get("curves", {}), "seconds": round(time.time() - started, 1),
              "stage_seconds": rounded(stages),
              "device": torch.cuda.get_device_name() if str(args.device).startswith("cuda") else platform.machine()}
    atomic_json(path, result)
    harp_state.unlink(missing_ok=True)
    for leftover in sorted(work.glob("*")) if work.is_dir() else []:  # the fine-tune's resume point, now spent
        leftover.unlink()
    if work.is_dir():
        work.rmdir()
    return result


def epoch_line(label: str, epochs: int) -> Callable[[Dict[str, Any]], None]:
    """A progress line per epoch of a fit that runs for minutes without a bar (bars garble the parallel logs)."""
    def line(row: Dict[str, Any]) -> None:
        robust = f", validation clean {row['clean_acc']:.3f} PGD {row['pgd_acc']:.3f}" if "pgd_acc" in row else ""
        print(f"{label}: epoch {row['epoch']}/{epochs} in {row['seconds']:.0f} s, loss {row['train_loss']:.3f}{robust}",
              flush=True)
    return line


def rounded(value: Any) -> Any:
    """Seconds to 0.1 s, through nested dicts."""
    return {k: rounded(v) for k, v in value.items()} if isinstance(value, dict) else round(value, 1)


def trainer(args, dense: bool = False) -> AdversarialTrainer:
    """PGD-AT for the dense fits; the fine-tuning (and HARP's learning) objective is ``--finetune-method``:
    'fast' (FGSM with random start, Wong et al. 2020) makes each step 2 passes instead of PGD's steps + 1."""
    if not dense and getattr(args, "finetune_method", "pgd") == "fast":
        return AdversarialTrainer("fast", eps=EPS)
    return AdversarialTrainer("pgd", eps=EPS, steps=args.train_steps)


# what a row's numbers depend on besides its name, model, seed and target: rows measured under other settings
# must not be mixed into one folder's tables
RECIPE = ("train_size", "val_size", "test_size", "aa", "train_steps", "pretrain_epochs", "pretrain_lr",
          "finetune_epochs", "finetune_lr", "finetune_method", "harp_epochs", "select")


def check_settings(out: Path, args) -> Optional[str]:
    """None, after recording the recipe in ``settings.json`` the first time; else the one-line reason why this
    invocation's settings differ from those the folder's rows were measured with."""
    path = out / "settings.json"
    mine = {k: getattr(args, k) for k in RECIPE}
    if not path.is_file():
        atomic_json(path, mine)
        return None
    theirs = dict({"finetune_method": "pgd"}, **json.loads(path.read_text()))  # folders older than the option
    differ = [f"--{k.replace('_', '-')} {mine[k]} (the folder's: {theirs.get(k)})" for k in RECIPE
              if mine[k] != theirs.get(k)]
    return (f"{out} holds rows measured with other settings: {', '.join(differ)}; use another --output or the "
            f"folder's settings ({path})") if differ else None


def dense_model(out: Path, model_name: str, width: float, seed: int, data, args) -> Path:
    """The PGD-trained dense model of (model, seed); the fit's per-epoch validation shows the plateau."""
    path = out / "dense.pt"
    if path.is_file():
        return path
    train, val, _ = data
    torch.manual_seed(seed)
    model = build_model(model_name, in_channels=1, width=width)
    fit(model, DataLoader(train, batch_size=128, shuffle=True), DataLoader(val, batch_size=500),
        args.pretrain_epochs, trainer(args, dense=True), lr=args.pretrain_lr, checkpoint_dir=out / "pretrain",
        resume=True, seed=seed, device=args.device, val_samples=1000, progress=False,
        on_epoch=epoch_line(f"[dense] {model_name} seed {seed}", args.pretrain_epochs))
    save_pruned(path, model.cpu(), model_name, in_channels=1, width=width)
    return path


# -- statistics and tables ------------------------------------------------------------------------------------
def metric_values(result: dict) -> Dict[str, float]:
    out = {f"pruned_{k}": v for k, v in result["pruned"].items()}
    out.update({f"tuned_{k}": v for k, v in result["finetuned"].items()})
    return out


def same_criterion(row: str) -> Optional[str]:
    """The uniform row with the row's own channel criterion (``power-feature-taylor`` -> ``uniform-taylor``):
    the difference to it is the allocation's share alone, the criterion held fixed."""
    criterion = row.rsplit("-", 1)[-1]
    return f"uniform-{criterion}" if criterion in ("l1", "taylor") and row != "l1-global" else None


def summarise(results: List[dict], reference_of: Callable[[str], Optional[str]] = lambda row: REFERENCE
              ) -> Dict[str, Any]:
    """Mean per (model, target, row, metric) and the paired per-seed difference to the row's reference
    (uniform-l1 unless ``reference_of`` says otherwise; rows without one are left out of the comparison)."""
    groups: Dict[Tuple[str, float, str], List[dict]] = {}
    for r in results:
        groups.setdefault((r["model"], r["target"], r["row"]), []).append(r)
    table = []
    for (model, target, row), runs in sorted(groups.items()):
        reference_row = reference_of(row)
        reference = {r["seed"]: r for r in groups.get((model, target, reference_row), [])}
        entry = {"model": model, "target": target, "row": row, "seeds": sorted(r["seed"] for r in runs),
                 "flops_removed": sum(r["flops_removed"] for r in runs) / len(runs),
                 "params": sum(r["params"] for r in runs) / len(runs), "metrics": {}}
        for metric in metric_values(runs[0]):
            values = [metric_values(r)[metric] for r in runs]
            diffs = [metric_values(r)[metric] - metric_values(reference[r["seed"]])[metric] for r in runs
                     if r["seed"] in reference and metric in metric_values(reference[r["seed"]])]
            entry["metrics"][metric] = {"mean": sum(values) / len(values), "diff": None, "low": None, "high": None,
                                        "verdict": "reference" if row == reference_row else "no reference"}
            if diffs and row != reference_row:
                mean, low, high = interval(diffs)
                entry["metrics"][metric].update(diff=mean, low=low, high=high, verdict=verdict(low, high))
        table.append(entry)
    return {"rows": table}


def markdown(summary: Dict[str, Any], phase: str) -> str:
    metrics = ["pruned_clean", "pruned_pgd20", "tuned_clean", "tuned_pgd20", "tuned_autoattack"]
    lines = ["| model | target | row | seeds | FLOPs removed | params | " + " | ".join(metrics) + " |",
             "|" + "---|" * (6 + len(metrics))]
    for e in summary["rows"]:
        cells = []
        for m in metrics:
            v = e["metrics"].get(m)
            if v is None:
                cells.append("")
            elif v["diff"] is None:
                cells.append(f"{100 * v['mean']:.2f}")
            else:
                half = (v["high"] - v["low"]) / 2
                cells.append(f"{100 * v['mean']:.2f} ({100 * v['diff']:+.2f} ± {100 * half:.2f}, {v['verdict']})"
                             if math.isfinite(half) else f"{100 * v['mean']:.2f} ({100 * v['diff']:+.2f})")
        lines.append(f"| {e['model']} | {e['target']} | {e['row']} | {len(e['seeds'])} | {e['flops_removed']:.3f} | "
                     f"{e['params']:,.0f} | " + " | ".join(cells) + " |")
    return f"### {phase}\n\n" + "\n".join(lines) + "\n"


def time_table(results: List[dict]) -> str:
    """Mean seconds per stage of the rows that recorded them (``stage_seconds``), per model: what a CPU budget
    pays for, and which part of it the issue's floors (AutoAttack on 500, PGD-20 on 2,000) fix."""
    by_model: Dict[str, List[List[float]]] = {}
    for r in results:
        stages = r.get("stage_seconds")
        if not stages:
            continue
        tuned = stages.get("finetuned", {})
        by_model.setdefault(r["model"], []).append(
            [stages["prune"], sum(stages["pruned"].values()), stages["finetune"],
             sum(v for k, v in tuned.items() if k != "autoattack"), tuned.get("autoattack", 0.0), r["seconds"]])
    if not by_model:
        return ""
    lines = ["| model | rows | prune, removal, adaptive BN | evaluation after pruning | fine-tuning | evaluation after "
             "fine-tuning | AutoAttack | row |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model, rows in sorted(by_model.items()):
        means = [sum(column) / len(rows) for column in zip(*rows)]
        lines.append(f"| {model} | {len(rows)} | " + " | ".join(f"{m:.1f}" for m in means) + " |")
    return "Mean seconds per row and stage:\n\n" + "\n".join(lines) + "\n"


def wall_time(log: Path) -> Optional[Dict[str, Any]]:
    """The run's wall time from its ``wall.log`` (``start``/``resume`` open an interval; ``pause``, ``stop`` and
    ``end`` close it): the sum of the closed intervals, so pauses and the gaps between sessions are not counted.
    A ``start`` while an interval is open (the machine was lost before ``stop`` was written) leaves that interval's
    end unknown: it is reported, not guessed."""
    if not log.is_file():
        return None
    from datetime import datetime

    seconds, intervals, unclosed, opened, word = 0.0, 0, [], None, ""
    for line in log.read_text().splitlines():
        word, _, rest = line.partition(" ")
        if word not in ("start", "resume", "pause", "stop", "end"):
            continue
        try:
            when = datetime.strptime(rest.split()[0], "%Y-%m-%dT%H:%M:%SZ")
        except (IndexError, ValueError):
            raise ValueError(f"{log}: cannot read the time in {line!r} (expected e.g. 'pause 2026-11-23T17:27:46Z')")
        if word in ("start", "resume"):
            if opened is not None:
                unclosed.append(opened.isoformat() + "Z")
            opened = when
        elif opened is not None:
            seconds, intervals, opened = seconds + (when - opened).total_seconds(), intervals + 1, None
    return {"seconds": seconds, "intervals": intervals, "unclosed": unclosed, "finished": word == "end",
            "running_since": opened.isoformat() + "Z" if opened is not None else None}


def wall_line(wall: Dict[str, Any]) -> str:
    hours, rest = divmod(round(wall["seconds"]), 3600)
    text = (f"Wall time (wall.log, pauses excluded): {hours} h {rest // 60} min {rest % 60} s in {wall['intervals']} "
            f"interval(s)" + ("; the run has finished" if wall["finished"] else "; not finished"))
    if wall["running_since"]:
        text += f", running since {wall['running_since']} (not counted)"
    if wall["unclosed"]:
        text += f"; interval(s) with no recorded end, not counted, from {', '.join(wall['unclosed'])}"
    return text + "\n"


def plots(results: List[dict], out: Path) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    models = sorted({r["model"] for r in results})
    for model in models:
        mine = [r for r in results if r["model"] == model]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for row in sorted({r["row"] for r in mine}):
            by_target: Dict[float, List[Tuple[float, float, float]]] = {}
            for r in mine:
                if r["row"] == row:
                    by_target.setdefault(r["target"], []).append(
                        (r["flops_removed"], r["pruned"]["pgd20"], r["finetuned"]["pgd20"]))
            xs = [sum(p[0] for p in v) / len(v) for _, v in sorted(by_target.items())]
            for axis, index in zip(axes, (1, 2)):
                ys = [sum(p[index] for p in v) / len(v) for _, v in sorted(by_target.items())]
                axis.plot(xs, ys, marker="o", label=row)
        for axis, title in zip(axes, ("PGD-20 right after pruning (adaptive BN)", "PGD-20 after fine-tuning")):
            axis.set_xlabel("FLOPs removed")
            axis.set_ylabel("accuracy")
            axis.set_title(f"{model}: {title}")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{model}-accuracy.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
        for target in sorted({r["target"] for r in mine}):
            runs = [r for r in mine if r["target"] == target and r["seed"] == min(x["seed"] for x in mine)]
            if not runs:
                continue
            units = list(runs[0]["ratios"])
            fig, axis = plt.subplots(figsize=(max(6, 0.45 * len(units)), 4))
            width = 0.8 / len(runs)
            for i, r in enumerate(sorted(runs, key=lambda r: r["row"])):
                axis.bar([u + i * width for u in range(len(units))], [r["ratios"].get(u, 0) for u in units], width,
                         label=r["row"])
            axis.set_xticks([u + 0.4 for u in range(len(units))], units, rotation=70, fontsize=6)
            axis.set_ylabel("channels removed (ratio)")
            axis.set_title(f"{model}, {target} of FLOPs removed: per-unit ratios (seed {runs[0]['seed']})")
            axis.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
            fig.tight_layout()
            path = out / f"{model}-ratios-{target}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
        path = curve_plot(mine, out, plt)
        if path is not None:
            written.append(path)
    return written


def rank_correlation(xs: List[float], ys: List[float]) -> float:
    """Spearman's rho (average ranks for ties): does the order right after pruning survive fine-tuning?"""
    def ranks(values: List[float]) -> "np.ndarray":
        values = np.asarray(values, dtype=float)
        order = values.argsort(kind="stable")
        r = np.empty(len(values))
        r[order] = np.arange(len(values), dtype=float)
        for v in np.unique(values):  # ties share their mean rank
            r[values == v] = r[values == v].mean()
        return r

    a, b = ranks(xs), ranks(ys)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def carry_over(results: List[dict]) -> str:
    """Per model and target, the mean over seeds of Spearman's rho between the rows' PGD-20 right after pruning and
    after fine-tuning: near 1, fine-tuning keeps the order the allocation made; near 0, it erases it."""
    groups: Dict[Tuple[str, float], List[Tuple[float, int]]] = {}  # (rho, rows) per seed
    for key in sorted({(r["model"], r["target"], r["seed"]) for r in results}):
        rows = [r for r in results if (r["model"], r["target"], r["seed"]) == key]
        if len(rows) >= 3:
            rho = rank_correlation([r["pruned"]["pgd20"] for r in rows], [r["finetuned"]["pgd20"] for r in rows])
            if math.isfinite(rho):
                groups.setdefault(key[:2], []).append((rho, len(rows)))
    if not groups:
        return ""
    lines = ["| model | target | seeds | rows per seed | Spearman's rho, mean (range) |", "|---|---|---:|---|---|"]
    for (model, target), seeds in sorted(groups.items()):
        rhos, counts = [rho for rho, _ in seeds], sorted({n for _, n in seeds})
        lines.append(f"| {model} | {target} | {len(rhos)} | {'/'.join(map(str, counts))} | "
                     f"{sum(rhos) / len(rhos):+.2f} ({min(rhos):+.2f} to {max(rhos):+.2f}) |")
    return ("Does fine-tuning keep the order right after pruning? PGD-20 right after pruning against after "
            "fine-tuning, rank correlation over the rows of each seed:\n\n" + "\n".join(lines) + "\n")


def curve_plot(results: List[dict], out: Path, plt) -> Optional[Path]:
    """What the budget rule saw and what it was judged on. Left: each unit's measured loss-rise curve (the first
    seed's budget-rule row, l1 channels preferred), the rule's ratio at the select target marked on each curve and
    uniform ratios as a dashed line. Right: every row's PGD-20 right after pruning (what the curves predict)
    against after fine-tuning (what the report judges), one colour per target."""
    seed = min(r["seed"] for r in results)
    measured = sorted((r for r in results if r.get("curves") and r["seed"] == seed),
                      key=lambda r: (abs(r["target"] - 0.9), not r["row"].endswith("-l1"), r["row"]))
    if not measured:
        return None
    shown = measured[0]
    grid = list(DEFAULT_RATIOS)  # the benchmark's rows measure the allocator's default grid
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.cm.viridis([i / max(1, len(shown["curves"]) - 1) for i in range(len(shown["curves"]))])
    for colour, (unit, curve) in zip(colours, shown["curves"].items()):
        axes[0].plot(grid, curve, color=colour, label=unit, linewidth=1)
        chosen = shown["ratios"].get(unit)
        if chosen is not None:
            axes[0].plot([chosen], [float(np.interp(chosen, grid, curve))], "o", color=colour, markersize=5)
    uniform = [r for r in results if r["row"] == "uniform-l1" and r["seed"] == seed and r["target"] == shown["target"]]
    if uniform:
        mean = sum(uniform[0]["ratios"].values()) / len(uniform[0]["ratios"])
        axes[0].axvline(mean, color="grey", linestyle="--", linewidth=1, label=f"uniform ({mean:.2f})")
    axes[0].set_xlabel("fraction of the unit's channels removed (r)")
    axes[0].set_yscale("symlog", linthresh=0.05)  # a few collapsing units would flatten every other curve
    axes[0].set_ylabel("adversarial loss rise ΔL_u(r) (symlog)")
    axes[0].set_title(f"{shown['model']}: curves of {shown['row']}, seed {seed}; dots: its ratios at {shown['target']}",
                      fontsize=9)
    axes[0].legend(fontsize=5, ncol=2)
    for target in sorted({r["target"] for r in results}):
        mine = [r for r in results if r["target"] == target]
        axes[1].scatter([100 * r["pruned"]["pgd20"] for r in mine], [100 * r["finetuned"]["pgd20"] for r in mine],
                        s=12, label=f"{target} of FLOPs")
    axes[1].set_xlabel("PGD-20 right after pruning (%)")
    axes[1].set_ylabel("PGD-20 after fine-tuning (%)")
    axes[1].set_title(f"{shown['model']}: every row, every seed", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{shown['model']}-curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- driver ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/allocation")
    parser.add_argument("--models", nargs="+", default=["vgg16_bn", "resnet18"])
    parser.add_argument("--widths", nargs="+", type=float, default=[0.125, 0.125], help="one per model")
    parser.add_argument("--vgg-targets", nargs="+", type=float, default=[0.75, 0.9, 0.95])
    parser.add_argument("--resnet-targets", nargs="+", type=float, default=[0.9])
    parser.add_argument("--select-target", type=float, default=0.9)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--train-size", type=int, default=20000, help="0: all 55,000 left after validation")
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--aa", type=int, default=500, help="AutoAttack images after fine-tuning (0: none)")
    parser.add_argument("--train-steps", type=int, default=5, help="PGD steps of adversarial training")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--pretrain-lr", type=float, default=0.05)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument("--finetune-method", default="pgd", choices=["pgd", "fast"],
                        help="adversarial fine-tuning (and HARP's objective): PGD with --train-steps, or fast "
                             "(FGSM with random start, about a third of PGD-5's cost); dense fits stay PGD")
    parser.add_argument("--harp-epochs", type=int, default=1, help="passes over the training set for the harp row")
    parser.add_argument("--select", type=int, default=2, help="MRS candidates kept for the report")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES),
                        help="MRS variants the select phase runs (rows already measured still count)")
    parser.add_argument("--select-criteria", nargs="+", default=["l1"], choices=["l1", "taylor"],
                        help="channel criteria of the select phase: with l1 and taylor, the validation split also "
                             "chooses the criterion (uniform and the chosen allocations, measured with each)")
    parser.add_argument("--phases", nargs="+", default=["select", "report"],
                        choices=["dense", "select", "default", "report"],
                        help="dense: only train the dense models (e.g. one process per model and seed); default: "
                             "decide MRSPruner's default on validation over every seed (after select)")
    parser.add_argument("--shard", default="0/1", metavar="I/N",
                        help="rows I, I+N, I+2N, ... of each model (and seed and target) of the select, default "
                             "and report phases, for parallel processes; then one unsharded run writes the choices")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--summary-only", action="store_true")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.widths) != len(args.models):
        parser.error(f"--widths needs one value per model ({len(args.models)}), got {args.widths}")
    try:
        shard, shards = (int(v) for v in args.shard.split("/"))
        assert 0 <= shard < shards
    except (ValueError, AssertionError):
        parser.error(f"--shard must be I/N with 0 <= I < N, got {args.shard!r}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        problem = check_settings(out, args)
        if problem:
            parser.error(problem)
    started = time.time()
    data = splits(args.train_size, args.val_size, args.test_size)
    widths = dict(zip(args.models, args.widths))

    def targets(model: str) -> List[float]:
        return args.vgg_targets if model.startswith("vgg") else args.resnet_targets

    def folder(model: str, seed: int) -> Path:
        return out / f"{model}-w{widths[model]}" / f"seed{seed}"

    plan: List[Tuple[str, str, int, float, str]] = []  # (phase, model, seed, target, row)
    if "select" in args.phases:
        plan += [("select", m, args.seeds[0], args.select_target, row) for m in args.models
                 for row in select_rows(args.candidates, shard, shards)]
    selected_path = out / "selected.json"

    def report_rows() -> List[str]:
        chosen = json.loads(selected_path.read_text())["selected"]
        # the reference and the l1 rows first: an interrupted run still has paired comparisons
        return ([REFERENCE] + [f"{c}-l1" for c in chosen] + ["uniform-taylor"] + [f"{c}-taylor" for c in chosen]
                + [b for b in BASELINES if b not in (REFERENCE, "uniform-taylor")])

    if not args.summary_only:
        if "dense" in args.phases:
            for model in args.models:
                for seed in args.seeds:
                    print(f"[dense] {model} seed {seed} ({time.time() - started:.0f} s)", flush=True)
                    dense_model(folder(model, seed), model, widths[model], seed, data, args)
        for i, (phase, model, seed, target, row) in enumerate(plan, 1):
            print(f"[select {i}/{len(plan)}] {model} seed {seed} target {target} {row} "
                  f"({time.time() - started:.0f} s)", flush=True)
            dense = dense_model(folder(model, seed), model, widths[model], seed, data, args)
            run_row(folder(model, seed) / "select" / f"t{target}" / f"{row}.json", dense, row, target, seed, data,
                    args, "select")
        if "select" in args.phases and shards == 1:  # a shard has part of the rows: the unsharded run chooses
            chosen = select_summary(collect(out, "select"), selected_path, args.select)
            # then the criterion, on validation too: uniform and the chosen allocations with each other criterion
            extra = [(m, f"{c}-{k}") for m in args.models for k in args.select_criteria if k != "l1"
                     for c in ["uniform"] + chosen]
            for i, (model, row) in enumerate(extra, 1):
                print(f"[select criterion {i}/{len(extra)}] {model} seed {args.seeds[0]} target "
                      f"{args.select_target} {row} ({time.time() - started:.0f} s)", flush=True)
                dense = dense_model(folder(model, args.seeds[0]), model, widths[model], args.seeds[0], data, args)
                run_row(folder(model, args.seeds[0]) / "select" / f"t{args.select_target}" / f"{row}.json", dense,
                        row, args.select_target, args.seeds[0], data, args, "select")
            if extra:
                select_summary(collect(out, "select"), selected_path, args.select)
        if "default" in args.phases:
            rows = default_rows(json.loads(selected_path.read_text()))[shard::shards]
            jobs = [(m, s, r) for s in args.seeds for m in args.models for r in rows]
            for i, (model, seed, row) in enumerate(jobs, 1):
                print(f"[default {i}/{len(jobs)}] {model} seed {seed} target {args.select_target} {row} "
                      f"({time.time() - started:.0f} s)", flush=True)
                dense = dense_model(folder(model, seed), model, widths[model], seed, data, args)
                run_row(folder(model, seed) / "default" / f"t{args.select_target}" / f"{row}.json", dense, row,
                        args.select_target, seed, data, args, "default")
            if shards == 1:
                default_summary(collect(out, "default"), out / "default.json")
        if "report" in args.phases:
            rows = report_rows()[shard::shards]
            jobs = [(m, s, t, r) for s in args.seeds for m in args.models for t in targets(m) for r in rows]
            for i, (model, seed, target, row) in enumerate(jobs, 1):
                print(f"[report {i}/{len(jobs)}] {model} seed {seed} target {target} {row} "
                      f"({time.time() - started:.0f} s)", flush=True)
                dense = dense_model(folder(model, seed), model, widths[model], seed, data, args)
                run_row(folder(model, seed) / "report" / f"t{target}" / f"{row}.json", dense, row, target, seed,
                        data, args, "report")
    write_summary(out, args, started)
    return 0


def select_summary(results: List[dict], path: Path, keep: int) -> List[str]:
    """The ``keep`` MRS candidates with the best mean fine-tuned PGD-20 validation accuracy over the models
    (``MEASURE_ONLY`` ones are ranked but not eligible)."""
    scores: Dict[str, List[float]] = {}
    by_criterion: Dict[str, Dict[str, float]] = {}  # criterion -> {model/allocation: PGD-20}
    for r in results:
        name, criterion = r["row"].rsplit("-", 1)
        if name in CANDIDATES and criterion == "l1":
            scores.setdefault(name, []).append(r["finetuned"]["pgd20"])
        by_criterion.setdefault(criterion, {})[f"{r['model']}/{name}"] = r["finetuned"]["pgd20"]
    ranked = sorted(scores, key=lambda c: -sum(scores[c]) / len(scores[c]))
    chosen = [c for c in ranked if c not in MEASURE_ONLY][:keep]
    # the criterion: mean over the (model, allocation) pairs measured with every criterion, so both see the same
    paired = set.intersection(*(set(v) for v in by_criterion.values())) if by_criterion else set()
    criteria = {k: sum(v[p] for p in paired) / len(paired) for k, v in by_criterion.items() if paired}
    record = {"selected": chosen, "validation_pgd20": {c: scores[c] for c in ranked},
              "models": sorted({r["model"] for r in results}), "not_eligible": sorted(MEASURE_ONLY),
              "metric": "fine-tuned PGD-20 accuracy on the validation split, mean over models"}
    if len(criteria) > 1:
        record.update(criterion=max(criteria, key=criteria.get), criterion_pgd20=criteria,
                      criterion_pairs=sorted(paired))
    atomic_json(path, record)
    print(f"selected on validation: {chosen}" + (f", criterion {record['criterion']}" if "criterion" in record
                                                   else ""), flush=True)
    return chosen


def select_rows(candidates: List[str], shard: int = 0, shards: int = 1) -> List[str]:
    """The select phase's rows of one model (every shard-th of them): each candidate with l1 channels, and the
    reference."""
    return ([f"{c}-l1" for c in candidates] + [REFERENCE])[shard::shards]


def default_rows(selected: dict) -> List[str]:
    """The default phase's candidates: uniform ratios, the shipped allocation and the selected ones, each with the
    criterion the select phase chose (Taylor, the shipped criterion, when it chose none)."""
    criterion = selected.get("criterion", "taylor")
    names = ["uniform", SHIPPED] + [c for c in selected["selected"] if c != SHIPPED]
    return [f"{name}-{criterion}" for name in names]


def default_summary(results: List[dict], path: Path) -> Optional[str]:
    """The rule fixed before the rows were run: the candidate with the best mean fine-tuned PGD-20 validation
    accuracy over the (model, seed) pairs every candidate has; the paired differences to uniform ratios (mean and
    95% interval) are recorded beside it."""
    by_row: Dict[str, Dict[Tuple[str, int], float]] = {}
    for r in results:
        by_row.setdefault(r["row"], {})[(r["model"], r["seed"])] = r["finetuned"]["pgd20"]
    if not by_row:
        return None
    pairs = sorted(set.intersection(*(set(v) for v in by_row.values())))
    if not pairs:
        return None
    means = {row: sum(v[p] for p in pairs) / len(pairs) for row, v in by_row.items()}
    uniform = next((row for row in by_row if row.startswith("uniform-")), None)
    versus = {}
    for row in by_row:
        if uniform and row != uniform:
            mean, low, high = interval([by_row[row][p] - by_row[uniform][p] for p in pairs])
            versus[row] = {"diff": mean, "low": low, "high": high, "verdict": verdict(low, high)}
    chosen = max(means, key=means.get)
    atomic_json(path, {"chosen": chosen, "validation_pgd20": dict(sorted(means.items(), key=lambda kv: -kv[1])),
                       "versus_uniform": versus, "pairs": [list(p) for p in pairs],
                       "rule": "best mean fine-tuned PGD-20 on the validation split over (model, seed) pairs"})
    print(f"default on validation: {chosen} ({', '.join(f'{k} {100 * v:.2f}' for k, v in means.items())})",
          flush=True)
    return chosen


def collect(out: Path, phase: str) -> List[dict]:
    results = []
    for path in sorted(out.glob(f"*/seed*/{phase}/t*/*.json")):
        result = json.loads(path.read_text())
        results.append(dict(result, model=path.parts[-5].rsplit("-w", 1)[0]))
    return results


def write_summary(out: Path, args, started: float) -> None:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    text = [f"Command: `python benchmarks/allocation.py {' '.join(sys.argv[1:])}`; commit {commit}; "
            f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
            f"threads, device {args.device}; this invocation {time.time() - started:.0f} s.\n"]
    summary = {}
    for phase in ("select", "default", "report"):
        results = collect(out, phase)
        if not results:
            continue
        summary[phase] = summarise(results, same_criterion if phase == "default" else lambda row: REFERENCE)
        summary[phase]["seconds"] = sum(r["seconds"] for r in results)
        text.append(markdown(summary[phase], phase))
        text.append(f"Row time (prune + evaluate + fine-tune + evaluate), summed: {summary[phase]['seconds']:.0f} s\n")
        text.append(time_table(results))
        if phase == "report":
            summary["report_same_criterion"] = summarise(results, same_criterion)
            text.append("Allocation alone: each row against the uniform row with its own channel criterion\n")
            text.append(markdown(summary["report_same_criterion"], "report, same criterion"))
            text.append(carry_over(results))
            plot_dir = out / "plots"
            plot_dir.mkdir(exist_ok=True)
            summary["plots"] = [str(p) for p in plots(results, plot_dir)]
    dense = {}
    for path in sorted(out.glob("*/seed*/pretrain/history.json")):
        history = json.loads(path.read_text())["history"]
        dense[str(path.parent.parent.relative_to(out))] = [
            {k: row.get(k) for k in ("epoch", "clean_acc", "pgd_acc", "seconds")} for row in history]
    summary["dense"] = dense
    wall = wall_time(out / "wall.log")
    if wall is not None:
        summary["wall"] = wall
        text.append(wall_line(wall))
    for name in ("selected", "default"):
        if (out / f"{name}.json").is_file():
            summary[name] = json.loads((out / f"{name}.json").read_text())
    atomic_json(out / "summary.json", summary)
    atomic_write(out / "summary.md", lambda f: f.write("\n".join(text).encode()))
    print("\n".join(text))


if __name__ == "__main__":
    sys.exit(main())
