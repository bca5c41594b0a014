"""One config across pruners and targets: the MRPF job per (variant, target, seed), one table and one plot.

A variant is a pruner name (``mrs``, ``l1``, ...) or, from Python, a label with any config overrides (e.g.
natural fine-tuning). Runs whose model, data, pre-training and evaluation agree start from the same dense
model, pre-trained and evaluated once per seed, and get identical fine-tuning unless the variant changes it,
so the rows differ only in what the variant names. Layout of the output folder::

    seed0/dense/            the pre-trained dense model (Pipeline until 'pretrain') and its evaluation
    seed0/dense-1a2b3c/     another dense model, when a variant changes pre-training
    seed0/mrs-0.5/          one full run folder per (variant, target)
    compare.json, compare.md, compare.png

Each run resumes like ``nni-mrs run``; a rerun of ``compare`` skips what is finished.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from ..checkpoint import atomic_json, atomic_save, atomic_write, load_pruned
from .config import Config, ConfigError, load_config
from .lock import FolderLock
from .pipeline import Pipeline, robust_evaluation
from .stats import mean_std, paired

__all__ = ["compare", "compare_rows", "compare_verdicts", "compare_table", "plot_compare", "write_compare_report"]

_MODEL_METRICS = ("params", "flops", "cpu_latency_ms")


def _accuracies(evaluation: Dict[str, Any]) -> Dict[str, float]:
    return {attack: entry["accuracy"] for attack, entry in evaluation.items()
            if isinstance(entry, dict) and "accuracy" in entry}


def _dense_run(config: Config, folder: Path) -> Dict[str, Any]:
    """Pre-train (or load) the dense model once, save it as a plain state dict, evaluate it once."""
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
        atomic_json(path, evaluation)
    return {"weights": str(weights.resolve()), "evaluation": evaluation, "measure": state["stages"]["pretrain"]["dense"]}


def _variants(variants: Union[Sequence[str], Mapping[str, Mapping[str, Any]]]) -> Dict[str, Dict[str, Any]]:
    from ..host.registry import available_pruners

    if isinstance(variants, Mapping):
        return {str(label): dict(overrides) for label, overrides in variants.items()}
    known = available_pruners()
    for name in variants:
        if name not in known:
            raise ConfigError(f"pruners: unknown pruner {name!r}; available: {', '.join(known)}")
    return {name: {"pruning.pruner": name} for name in variants}


def _overrides(base: Dict[str, Any], variant: Dict[str, Any]) -> Dict[str, Any]:
    """A variant that names another pruner starts from no options: the base's belong to the base's pruner."""
    pruner = variant.get("pruning.pruner", base["pruning"]["pruner"])
    if pruner != base["pruning"]["pruner"] and not any(key.startswith("pruning.options") for key in variant):
        return {"pruning.options": {}, **variant}
    return variant


_DENSE_KEYS = ("model", "data", "pretrain", "eval", "seed", "device")  # what the dense model and its scores depend on


def _dense_identity(config: Config) -> str:
    data = config.to_dict()
    return hashlib.sha256(json.dumps({k: data[k] for k in _DENSE_KEYS}, sort_keys=True).encode()).hexdigest()[:6]


def compare(config: Config, variants: Union[Sequence[str], Mapping[str, Mapping[str, Any]]],
            targets: Sequence[float], output: Optional[str] = None, seeds: Optional[Sequence[int]] = None,
            on_run: Optional[Callable[[int, int, str], None]] = None) -> Dict[str, Any]:
    """Run the grid and write compare.json/.md/.png in ``output``; returns compare.json's content.

    ``variants``: pruner names, or ``{label: {dotted key: value}}``. ``on_run(i, n, label)`` is called before
    each run (the CLI prints it).
    """
    variants = _variants(variants)
    seeds = list(seeds) if seeds is not None else [config.seed]
    for target in targets:
        if not 0 < target < 1:
            raise ConfigError(f"targets: each target must be in (0, 1), got {target!r}")
    if not variants or not targets or not seeds:
        raise ConfigError("compare needs at least one pruner, one target and one seed")
    base = config.to_dict()
    configs = {}
    for seed in seeds:  # every run's config is checked before anything trains
        for label, overrides in variants.items():
            for target in targets:
                try:
                    configs[label, target, seed] = load_config(base, {**_overrides(base, overrides), "seed": seed,
                                                                      "pruning.target": target})
                except ConfigError as err:
                    raise ConfigError(f"variant {label!r}: {err}") from None
    out = Path(output or f"{config.output.dir}-compare")
    with FolderLock(out):  # one compare per folder; each run below also locks its own
        return _compare(config, variants, seeds, configs, base, out, on_run)


def _compare(config: Config, variants: Dict[str, Dict[str, Any]], seeds: List[int], configs: Dict[tuple, Config],
             base: Dict[str, Any], out: Path, on_run: Optional[Callable[[int, int, str], None]]) -> Dict[str, Any]:
    runs: List[Dict[str, Any]] = []
    dense: Dict[str, Dict[str, Any]] = {}
    total = len(configs)
    usual = {seed: _dense_identity(load_config(base, {"seed": seed})) for seed in seeds}  # the base's dense model
    for index, ((label, target, seed), run_config) in enumerate(configs.items(), 1):
        identity = _dense_identity(run_config)
        if identity not in dense:
            name = "dense" if identity == usual[seed] else f"dense-{identity}"
            if on_run is not None:
                on_run(0, total, f"{name}, seed {seed}")
            shared = {**base, **{key: run_config.to_dict()[key] for key in _DENSE_KEYS}}
            dense[identity] = {"label": "dense" if name == "dense" else f"dense ({label})", "seed": seed,
                               **_dense_run(load_config(shared), out / f"seed{seed}" / name)}
        if on_run is not None:
            on_run(index, total, f"{label}-{target:g}, seed {seed}")
        run_config = copy.deepcopy(run_config)  # checked above; only the dense weights to start from change
        run_config.model.checkpoint = dense[identity]["weights"]
        pipeline = Pipeline(run_config, str(out / f"seed{seed}" / f"{label}-{target:g}"),
                            dense_evaluation=dense[identity]["evaluation"])
        stages = pipeline.run()["stages"]
        runs.append({"variant": label, "pruner": run_config.pruning.pruner, "target": target, "seed": seed,
                     "dense": identity, "folder": str(pipeline.dir), "pruned": stages["speedup"]["pruned"],
                     "dense_measure": stages["pretrain"]["dense"],
                     "accuracy": _accuracies(stages["evaluate"]["pruned"]),
                     **({"accuracy_after_pruning": _accuracies(stages["evaluate"]["pruned_init"])}
                        if "pruned_init" in stages["evaluate"] else {})})
        write_compare_report(out, _result(config, variants, seeds, dense, runs))  # partial results survive
    result = _result(config, variants, seeds, dense, runs)
    write_compare_report(out, result)
    return result


def _result(config: Config, variants: Dict[str, Dict[str, Any]], seeds: List[int], dense: Dict[str, Dict[str, Any]],
            runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {"config": config.to_dict(), "variants": variants, "seeds": seeds,
            "dense": {key: {"label": d["label"], "seed": d["seed"], "measure": d["measure"],
                            "accuracy": _accuracies(d["evaluation"])} for key, d in dense.items()},
            "runs": runs, "rows": compare_rows(dense, runs), "verdicts": compare_verdicts(runs, next(iter(variants)))}


def compare_verdicts(runs: List[Dict[str, Any]], reference: str) -> List[Dict[str, Any]]:
    """Every other variant against ``reference`` at each target and attack: the paired per-seed difference of
    its accuracy (``stats.paired``: mean, 95% t-interval, win / tie / loss from the variant's side)."""
    accuracy: Dict[tuple, Dict[int, Dict[str, float]]] = {}
    for run in runs:
        accuracy.setdefault((run["variant"], run["target"]), {})[run["seed"]] = run["accuracy"]
    out = []
    for (variant, target), by_seed in accuracy.items():
        base = accuracy.get((reference, target))
        if variant == reference or base is None:
            continue
        for attack in next(iter(by_seed.values())):
            result = paired({s: a[attack] for s, a in by_seed.items() if attack in a},
                            {s: a[attack] for s, a in base.items() if attack in a})
            if result is not None:
                out.append({"variant": variant, "reference": reference, "target": target, "attack": attack,
                            **result})
    return out


def compare_rows(dense: Dict[str, Dict[str, Any]], runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """A row per dense model and per (variant, target): mean and std over seeds of every metric."""
    def summary(members: List[Dict[str, Any]], flops_removed: List[float]) -> Dict[str, Any]:
        return {"flops_removed": mean_std(flops_removed),
                **{m: mean_std([r["measure"][m] for r in members]) for m in _MODEL_METRICS},
                "accuracy": {a: mean_std([r["accuracy"][a] for r in members]) for a in members[0]["accuracy"]}}

    rows = []
    by_label: Dict[str, List[Dict[str, Any]]] = {}
    for d in dense.values():
        by_label.setdefault(d["label"], []).append({"measure": d["measure"], "accuracy": _accuracies(d["evaluation"])})
    for label, members in by_label.items():
        rows.append({"variant": label, "target": 0.0, **summary(members, [0.0] * len(members))})
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["variant"], run["target"]), []).append(run)
    for (label, target), members in groups.items():
        removed = [1 - r["pruned"]["flops"] / r["dense_measure"]["flops"] for r in members]
        rows.append({"variant": label, "target": target,
                     **summary([{"measure": r["pruned"], "accuracy": r["accuracy"]} for r in members], removed)})
    return rows


def _pm(stat: Dict[str, float]) -> str:
    """A fraction as percent, with the std over seeds when there are several."""
    return f"{100 * stat['mean']:.2f}" + (f" ± {100 * stat['std']:.2f}" if stat["n"] > 1 else "")


def plot_compare(result: Dict[str, Any], path: Path) -> Path:
    """Accuracy against measured FLOPs removed, one panel per attack, one line per variant, dense models as
    horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    attacks = list(rows[0]["accuracy"])
    dense_rows = [r for r in rows if r["variant"].startswith("dense")]
    fig, axes = plt.subplots(1, len(attacks), figsize=(4 * len(attacks), 3.6), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        for row, style in zip(dense_rows, ("--", ":", "-.")):
            ax.axhline(100 * row["accuracy"][attack]["mean"], color="gray", linestyle=style, label=row["variant"])
        for label in result["variants"]:
            points = sorted((r["flops_removed"]["mean"], r["accuracy"][attack]) for r in rows
                            if r["variant"] == label and attack in r["accuracy"])
            if points:
                ax.errorbar([100 * x for x, _ in points], [100 * s["mean"] for _, s in points],
                            yerr=[100 * s["std"] for _, s in points], marker="o", capsize=3, label=label)
        ax.set_xlabel("FLOPs removed (%)")
        ax.set_ylabel(f"{attack} accuracy (%)")
        ax.set_title(attack)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return path


def compare_table(result: Dict[str, Any]) -> str:
    """The Markdown table of a compare result: a row per dense model and per (variant, target)."""
    rows = result["rows"]
    attacks = list(rows[0]["accuracy"])
    lines = ["| variant | target | FLOPs removed | params | FLOPs | CPU ms | " + " | ".join(attacks) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---:|" * len(attacks)]
    for row in rows:
        accuracy = [(_pm(row["accuracy"][a]) + "%") if a in row["accuracy"] else "–" for a in attacks]
        target = "–" if row["variant"].startswith("dense") else f"{row['target']:g}"
        lines.append(f"| {row['variant']} | {target} | {_pm(row['flops_removed'])}% | "
                     f"{row['params']['mean']:,.0f} | {row['flops']['mean'] / 1e6:.2f}M | "
                     f"{row['cpu_latency_ms']['mean']:.3f} | " + " | ".join(accuracy) + " |")
    return "\n".join(lines)


def write_compare_report(out: Path, result: Dict[str, Any]) -> List[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_json(out / "compare.json", result)
    cfg = result["config"]
    seeds = result["seeds"]
    lines = [f"# {cfg['model']['name']} on {cfg['data']['dataset']}: pruners compared at equal "
             f"{cfg['pruning']['budget']} budgets", "",
             f"Fine-tuning `{cfg['finetune']['method']}` for {cfg['finetune']['epochs']} epoch(s) after each pruner "
             "unless the variant says otherwise; "
             f"seeds {', '.join(map(str, seeds))}" + (" (mean ± std)" if len(seeds) > 1 else "") + ".", "",
             compare_table(result), ""]
    if len(seeds) > 1 and result.get("verdicts"):
        lines += [f"Paired per-seed difference to `{result['verdicts'][0]['reference']}` (points, 95% t-interval):",
                  "", "| variant | target | attack | difference | verdict |", "|---|---:|---|---:|---|",
                  *(f"| {v['variant']} | {v['target']:g} | {v['attack']} | {100 * v['diff']:+.2f} "
                    f"({100 * v['low']:+.2f} to {100 * v['high']:+.2f}) | {v['verdict']} |"
                    for v in result["verdicts"]),
                  ""]
    lines += ["![accuracy against FLOPs removed](compare.png)", ""]
    atomic_write(out / "compare.md", lambda f: f.write("\n".join(lines).encode()))
    return [out / "compare.json", out / "compare.md", plot_compare(result, out / "compare.png")]
