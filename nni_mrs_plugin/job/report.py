"""The run's report: ``report.json`` (everything measured), ``report.md`` (the tables a person reads) and
``mrs_units.png`` (each unit's MRS and chosen ratio)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping

from ..checkpoint import atomic_json, atomic_write
from .config import Config

__all__ = ["write_report", "summary_rows", "plot_units", "format_metric"]


def summary_rows(stages: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Dense vs pruned: params, FLOPs, CPU latency and each attack's accuracy (also before fine-tuning, when
    measured)."""
    dense, pruned = stages["pretrain"]["dense"], stages["speedup"]["pruned"]
    rows = [{"metric": key, "dense": dense[key], "pruned": pruned[key]}
            for key in ("params", "flops", "cpu_latency_ms")]
    evaluation = stages.get("evaluate", {})
    for attack, entry in evaluation.get("dense", {}).items():
        if isinstance(entry, dict) and "accuracy" in entry:
            label = f"{attack} accuracy" + (f" ({entry['samples']} samples)" if entry.get("subset") else "")
            rows.append({"metric": label, "dense": entry["accuracy"],
                         "pruned": evaluation["pruned"][attack]["accuracy"]})
            if attack in evaluation.get("pruned_init", {}):  # eval.after_pruning: what fine-tuning started from
                rows.append({"metric": f"{label}, before fine-tuning", "dense": entry["accuracy"],
                             "pruned": evaluation["pruned_init"][attack]["accuracy"]})
    exported = stages.get("export", {})
    for format in exported.get("formats", []):  # export.formats: batch-1 latency in each artifact's runtime
        rows.append({"metric": f"cpu_latency_ms ({format})",
                     "dense": exported["dense"][format]["latency_ms_batch_1"][format],
                     "pruned": exported["pruned"][format]["latency_ms_batch_1"][format]})
    return rows


def format_metric(value: Any, metric: str) -> str:
    """A summary value as people read it: accuracies in percent, latency in ms, counts with separators."""
    if "accuracy" in metric:
        return f"{100 * value:.2f}%"
    if metric.startswith("cpu_latency_ms"):
        return f"{value:.3f}"
    return f"{value:,}"


def plot_units(allocation: Mapping[str, Any], path: Path) -> Path:
    """Bar chart: MRS per unit (left axis; left out for uniform ratios, which measure none) and its pruning ratio
    (right axis), in model order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = allocation["units"]
    names = [u["unit"] for u in units]
    positions = range(len(names))
    measured = allocation.get("measured", True)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) + 2), 4))
    if measured:
        ax.bar([p - 0.2 for p in positions], [u["mrs"] for u in units], width=0.4, color="tab:red", label="MRS")
    ax.set_ylabel("MRS (adversarial loss rise)" if measured else "MRS not measured (uniform ratios)")
    twin = ax.twinx()
    twin.bar([p + 0.2 for p in positions], [u["ratio"] for u in units], width=0.4, color="tab:blue", label="ratio")
    twin.set_ylabel("pruned channel ratio")
    twin.set_ylim(0, 1)
    ax.set_xticks(list(positions))
    ax.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
    ax.set_title(f"removed {allocation['achieved']:.3f} of {allocation['budget']} (target {allocation['target']:.3f})")
    fig.legend(loc="upper left", bbox_to_anchor=(0.08, 0.9))
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return path


def write_report(run_dir: Path, config: Config, stages: Mapping[str, Any]) -> List[Path]:
    run_dir = Path(run_dir)
    allocation = json.loads((run_dir / "allocation.json").read_text())
    rows = summary_rows(stages)
    report = {"config": config.to_dict(), "summary": rows, "allocation": allocation, "stages": dict(stages)}
    atomic_json(run_dir / "report.json", report)
    cfg = config.pruning
    lines = [f"# {config.model.name} on {config.data.dataset}: {cfg.pruner} pruning, "
             f"{cfg.target:.0%} of {cfg.budget} removed", "",
             "| metric | dense | pruned | pruned / dense |", "|---|---:|---:|---:|"]
    for row in rows:
        ratio = row["pruned"] / row["dense"] if row["dense"] else float("nan")
        lines.append(f"| {row['metric']} | {format_metric(row['dense'], row['metric'])} | "
                     f"{format_metric(row['pruned'], row['metric'])} | {ratio:.2f} |")
    measured = allocation.get("measured", True)  # False: uniform ratios, whose MRS are placeholders
    options = ", ".join(f"{name} `{value}`" for name, value in sorted(cfg.options.items())) or "default options"
    allocator = f"rule `{allocation.get('rule')}`" if measured else "uniform ratios (MRS not measured)"
    lines += ["", f"Pruner `{cfg.pruner}` ({options}), {allocator}; "
              f"fine-tuning `{config.finetune.method}` for {config.finetune.epochs} epoch(s).", "",
              "| unit | layers | MRS | ratio | channels |", "|---|---:|---:|---:|---:|"]
    for unit in allocation["units"]:
        mrs = f"{unit['mrs']:.4g}" if measured else "—"
        lines.append(f"| {unit['unit']} | {len(unit['layers'])} | {mrs} | {unit['ratio']:.3f} | "
                     f"{unit['channels_before']} → {unit['channels_after']} |")
    for layer, reason in allocation["skipped"].items():
        lines.append(f"| {layer} (not pruned: {reason}) | | | | |")
    lines += ["", "![MRS and ratio per unit](mrs_units.png)", ""]
    atomic_write(run_dir / "report.md", lambda f: f.write("\n".join(lines).encode()))
    return [run_dir / "report.json", run_dir / "report.md", plot_units(allocation, run_dir / "mrs_units.png")]
