"""One config across pruners and targets: the MRPF job per (pruner, target, seed), one table and one plot.

Every run starts from the same dense model (pre-trained once per seed) and gets identical fine-tuning and
evaluation, so the rows differ only in how channels were chosen. The dense model is evaluated once per seed.
Layout of the output folder::

    seed0/dense/            the pre-trained dense model (Pipeline until 'pretrain') and its evaluation
    seed0/mrs-0.5/          one full run folder per (pruner, target)
    compare.json, compare.md, compare.png

Each run resumes like ``nni-mrs run``; a rerun of ``compare`` skips what is finished.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .checkpoint import atomic_save, atomic_write
from .config import Config, ConfigError, load_config
from .pipeline import Pipeline, robust_evaluation

__all__ = ["compare", "compare_rows", "plot_compare", "write_compare_report"]

_MODEL_METRICS = ("params", "flops", "cpu_latency_ms")


def _accuracies(evaluation: Dict[str, Any]) -> Dict[str, float]:
    return {attack: entry["accuracy"] for attack, entry in evaluation.items()
            if isinstance(entry, dict) and "accuracy" in entry}


def _dense_run(config: Config, folder: Path) -> Dict[str, Any]:
    """Pre-train (or load) the dense model once, save it as a plain state dict, evaluate it once."""
    from .checkpoint import load_pruned

    pipeline = Pipeline(config, str(folder))
    state = pipeline.run("pretrain")
    weights = folder / "dense_state.pt"
    if not weights.exists():
        atomic_save(load_pruned(folder / "dense.pt").state_dict(), weights)
    path = folder / "evaluation.json"
    if path.exists():
        evaluation = json.loads(path.read_text())
    else:
        evaluation = robust_evaluation(config, load_pruned(folder / "dense.pt"))
        atomic_write(path, lambda f: f.write(json.dumps(evaluation, indent=2, default=float).encode()))
    return {"weights": str(weights.resolve()), "evaluation": evaluation, "measure": state["stages"]["pretrain"]["dense"]}


def _check(pruners: Sequence[str], targets: Sequence[float], seeds: Sequence[int]) -> None:
    from .registry import available_pruners

    known = available_pruners()
    for name in pruners:
        if name not in known:
            raise ConfigError(f"pruners: unknown pruner {name!r}; available: {', '.join(known)}")
    for target in targets:
        if not 0 < target < 1:
            raise ConfigError(f"targets: each target must be in (0, 1), got {target!r}")
    if not pruners or not targets or not seeds:
        raise ConfigError("compare needs at least one pruner, one target and one seed")


def compare(config: Config, pruners: Sequence[str], targets: Sequence[float], output: Optional[str] = None,
            seeds: Optional[Sequence[int]] = None,
            on_run: Optional[Callable[[int, int, str], None]] = None) -> Dict[str, Any]:
    """Run the grid and write compare.json/.md/.png in ``output``; returns compare.json's content.

    ``on_run(i, n, label)`` is called before each run (the CLI prints it).
    """
    seeds = list(seeds) if seeds is not None else [config.seed]
    _check(pruners, targets, seeds)
    out = Path(output or f"{config.output.dir}-compare")
    base = config.to_dict()
    runs: List[Dict[str, Any]] = []
    dense: Dict[int, Dict[str, Any]] = {}
    total, index = len(seeds) * len(pruners) * len(targets), 0
    for seed in seeds:
        seed_dir = out / f"seed{seed}"
        seeded = load_config(base, {"seed": seed})
        if on_run is not None:
            on_run(0, total, f"dense model, seed {seed}")
        dense[seed] = _dense_run(seeded, seed_dir / "dense")
        for pruner in pruners:
            for target in targets:
                index += 1
                label = f"{pruner}-{target:g}"
                if on_run is not None:
                    on_run(index, total, f"{label}, seed {seed}")
                run_config = load_config(base, {"seed": seed, "pruning.pruner": pruner, "pruning.target": target,
                                                "model.checkpoint": dense[seed]["weights"]})
                pipeline = Pipeline(run_config, str(seed_dir / label), dense_evaluation=dense[seed]["evaluation"])
                stages = pipeline.run()["stages"]
                runs.append({"pruner": pruner, "target": target, "seed": seed, "folder": str(pipeline.dir),
                             "pruned": stages["speedup"]["pruned"], "dense": stages["pretrain"]["dense"],
                             "accuracy": _accuracies(stages["evaluate"]["pruned"])})
                write_compare_report(out, _result(config, seeds, dense, runs))  # partial results survive
    result = _result(config, seeds, dense, runs)
    write_compare_report(out, result)
    return result


def _result(config: Config, seeds: List[int], dense: Dict[int, Dict[str, Any]],
            runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {"config": config.to_dict(), "pruners": list(dict.fromkeys(r["pruner"] for r in runs)), "seeds": seeds,
            "dense": {str(seed): {"measure": d["measure"], "accuracy": _accuracies(d["evaluation"])}
                      for seed, d in dense.items()},
            "runs": runs, "rows": compare_rows(dense, runs)}


def _mean_std(values: List[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def compare_rows(dense: Dict[int, Dict[str, Any]], runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per (pruner, target) plus the dense row: mean and std over seeds of every metric."""
    def summary(members: List[Dict[str, Any]], flops_removed: List[float]) -> Dict[str, Any]:
        return {"flops_removed": _mean_std(flops_removed),
                **{m: _mean_std([r["measure"][m] for r in members]) for m in _MODEL_METRICS},
                "accuracy": {a: _mean_std([r["accuracy"][a] for r in members]) for a in members[0]["accuracy"]}}

    dense_members = [{"measure": d["measure"], "accuracy": _accuracies(d["evaluation"])} for d in dense.values()]
    rows = [{"pruner": "dense", "target": 0.0, **summary(dense_members, [0.0] * len(dense_members))}]
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["pruner"], run["target"]), []).append(run)
    for (pruner, target), members in groups.items():
        removed = [1 - r["pruned"]["flops"] / r["dense"]["flops"] for r in members]
        rows.append({"pruner": pruner, "target": target,
                     **summary([{"measure": r["pruned"], "accuracy": r["accuracy"]} for r in members], removed)})
    return rows


def _pm(stat: Dict[str, float]) -> str:
    """A fraction as percent, with the std over seeds when there are several."""
    return f"{100 * stat['mean']:.2f}" + (f" ± {100 * stat['std']:.2f}" if stat["n"] > 1 else "")


def plot_compare(result: Dict[str, Any], path: Path) -> Path:
    """Accuracy against measured FLOPs removed, one panel per attack, one line per pruner (dense dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    attacks = list(rows[0]["accuracy"])
    fig, axes = plt.subplots(1, len(attacks), figsize=(4 * len(attacks), 3.6), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        ax.axhline(100 * rows[0]["accuracy"][attack]["mean"], color="gray", linestyle="--", label="dense")
        for pruner in result["pruners"]:
            points = sorted((r["flops_removed"]["mean"], r["accuracy"][attack]) for r in rows[1:]
                            if r["pruner"] == pruner and attack in r["accuracy"])
            if points:
                ax.errorbar([100 * x for x, _ in points], [100 * s["mean"] for _, s in points],
                            yerr=[100 * s["std"] for _, s in points], marker="o", capsize=3, label=pruner)
        ax.set_xlabel("FLOPs removed (%)")
        ax.set_ylabel(f"{attack} accuracy (%)")
        ax.set_title(attack)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return path


def write_compare_report(out: Path, result: Dict[str, Any]) -> List[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "compare.json", lambda f: f.write(json.dumps(result, indent=2, default=float).encode()))
    rows = result["rows"]
    attacks = list(rows[0]["accuracy"])
    cfg = result["config"]
    seeds = result["seeds"]
    lines = [f"# {cfg['model']['name']} on {cfg['data']['dataset']}: pruners compared at equal "
             f"{cfg['pruning']['budget']} budgets", "",
             f"Fine-tuning `{cfg['finetune']['method']}` for {cfg['finetune']['epochs']} epoch(s) after each pruner; "
             f"seeds {', '.join(map(str, seeds))}" + (" (mean ± std)" if len(seeds) > 1 else "") + ".", "",
             "| pruner | target | FLOPs removed | params | FLOPs | CPU ms | " + " | ".join(attacks) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---:|" * len(attacks)]
    for row in rows:
        accuracy = [(_pm(row["accuracy"][a]) + "%") if a in row["accuracy"] else "–" for a in attacks]
        target = f"{row['target']:g}" if row["pruner"] != "dense" else "–"
        lines.append(f"| {row['pruner']} | {target} | {_pm(row['flops_removed'])}% | "
                     f"{row['params']['mean']:,.0f} | {row['flops']['mean'] / 1e6:.2f}M | "
                     f"{row['cpu_latency_ms']['mean']:.3f} | " + " | ".join(accuracy) + " |")
    lines += ["", "![accuracy against FLOPs removed](compare.png)", ""]
    atomic_write(out / "compare.md", lambda f: f.write("\n".join(lines).encode()))
    return [out / "compare.json", out / "compare.md", plot_compare(result, out / "compare.png")]
