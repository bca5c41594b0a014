"""What every benchmark grid shares: job configs from one base, one dense model per (model, seed) for every phase,
compare grids per (phase, model, seed), their finished runs, the common command line and the summary's
provenance. A benchmark script says which rows to run and how to read them.

Layout of a grid's output folder::

    dense/<model>-seed<seed>/             the dense model (the job until 'pretrain'); its weights feed every grid
    <phase>/<model>-seed<seed>/           one compare grid: a job run folder per (row, target), compare.md/.png
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from nni_mrs_plugin.checkpoint import atomic_json, atomic_save, atomic_write, load_pruned
from nni_mrs_plugin.job.cli import add_set_argument
from nni_mrs_plugin.job.compare import compare
from nni_mrs_plugin.job.config import Config, ConfigError, apply_overrides, load_config
from nni_mrs_plugin.job.pipeline import Pipeline

__all__ = ["Grid", "finished", "add_grid_arguments", "provenance", "verdict_table", "stage_seconds",
           "run_then_summarise", "report_main", "save_summary", "summary_header", "dense_line", "markdown",
           "verdict_data"]


class Grid:
    """``base`` is the job config of every row; ``phases`` maps a phase to the keys it changes (the first phase's
    config trains the dense models); ``--set`` overrides (``args.overrides``) apply last."""

    def __init__(self, base: Mapping[str, Any], phases: Mapping[str, Mapping[str, Any]], args: argparse.Namespace):
        self.base, self.phases, self.args = base, phases, args
        self.output = Path(args.output)

    def config(self, model: str, phase: str, seed: int, checkpoint: Optional[Path] = None) -> Config:
        width = {"model.kwargs": {"width": self.args.width}} if self.args.width is not None else {}
        overrides = {"model.name": model, **width, "seed": seed,
                     **self.phases[phase], **dict(self.args.overrides)}
        if checkpoint is not None:
            overrides["model.checkpoint"] = str(checkpoint)
        return load_config(apply_overrides(json.loads(json.dumps(self.base)), overrides))

    def dense(self, model: str, seed: int) -> Path:
        """The dense model of (model, seed), trained once under the first phase's config (its per-epoch validation
        on that phase's images); its state dict is what each grid's ``model.checkpoint`` loads."""
        folder = self.output / "dense" / f"{model}-seed{seed}"
        weights = folder / "dense_state.pt"
        if not weights.is_file():
            print(f"[dense] {model} seed {seed}", flush=True)
            Pipeline(self.config(model, next(iter(self.phases)), seed), str(folder)).run("pretrain")
            atomic_save(load_pruned(folder / "dense.pt").state_dict(), weights)
        return weights

    def run(self, phase: str, variants: Mapping[str, Mapping[str, Any]], targets: Mapping[str, List[float]],
            seeds: Sequence[int]) -> None:
        """One compare grid per model and seed: every variant at the model's targets, from its dense model."""
        started = time.time()
        for model in self.args.models:
            for seed in seeds:
                config = self.config(model, phase, seed, self.dense(model, seed))
                compare(config, dict(variants), targets[model], str(self.output / phase / f"{model}-seed{seed}"),
                        [seed], on_run=lambda i, n, label: print(f"[{phase} {model}] {i}/{n} {label} "
                                                                 f"({time.time() - started:.0f} s)", flush=True))

    def runs(self, phase: str, key: str = "runs") -> List[Dict[str, Any]]:
        return finished(self.output, phase, key)


def finished(output: Path, phase: str, key: str = "runs") -> List[Dict[str, Any]]:
    """Every finished run of a phase's grids (compare.json's ``runs``; ``key="dense"``: the dense models' rows,
    the ceiling), each with its model."""
    out = []
    for path in sorted((Path(output) / phase).glob("*-seed*/compare.json")):
        model = path.parent.name.rsplit("-seed", 1)[0]
        rows = json.loads(path.read_text())[key]
        out += [dict(row, model=model) for row in (rows.values() if isinstance(rows, dict) else rows)]
    return out


def add_grid_arguments(parser: argparse.ArgumentParser, output: str, models: Sequence[str],
                       width: Optional[float] = 0.125, seeds: Sequence[int] = (0, 1, 2)) -> None:
    parser.add_argument("--output", default=output)
    parser.add_argument("--models", nargs="+", default=list(models), help=f"any of {', '.join(models)}")
    parser.add_argument("--width", type=float, default=width, help="channel multiplier of every model (none: the "
                        "model's own widths)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(seeds))
    parser.add_argument("--summary-only", action="store_true", help="rewrite the summary from what is finished")
    add_set_argument(parser, "override a job config key of every row, e.g. --set device=cuda")


def provenance(script: str, argv: Optional[Sequence[str]]) -> Dict[str, str]:
    import sys

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    args = list(argv) if argv is not None else sys.argv[1:]
    return {"command": " ".join(["python", script, *args]), "date": time.strftime("%Y-%m-%d"), "commit": commit,
            "machine": platform.platform()}


def markdown(table: Dict[str, Any]) -> List[str]:
    """A table as data (``columns``, ``rows``: what summaries keep for ``render.py``) as Markdown."""
    return ["| " + " | ".join(map(str, table["columns"])) + " |", "|" + "---|" * len(table["columns"]),
            *("| " + " | ".join(map(str, row)) + " |" for row in table["rows"])]


def verdict_data(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Paired verdicts (``compare_verdicts`` rows with their model) as a table: differences in points with their
    95% interval."""
    return {"columns": ["model", "target", "row", "reference", "attack", "difference", "verdict"],
            "rows": [[v["model"], f"{v['target']:g}", v["variant"], v["reference"], v["attack"],
                      f"{100 * v['diff']:+.2f} ({100 * v['low']:+.2f} to {100 * v['high']:+.2f})", v["verdict"]]
                     for v in rows]}


def verdict_table(rows: List[Dict[str, Any]]) -> List[str]:
    """Paired verdicts as a Markdown table."""
    return markdown(verdict_data(rows))


def stage_seconds(runs: List[Dict[str, Any]], by: str = "model") -> Dict[str, Dict[str, float]]:
    """Mean seconds per stage of a row (its ``stages.json``), per ``by`` (model, variant): what compute buys."""
    seconds: Dict[str, Dict[str, List[float]]] = {}
    for run in runs:
        stages = json.loads((Path(run["folder"]) / "stages.json").read_text())["stages"]
        for stage in ("prune", "speedup", "finetune", "evaluate"):
            if stage in stages:
                seconds.setdefault(str(run[by]), {}).setdefault(stage, []).append(stages[stage]["seconds"])
    return {key: {s: round(sum(v) / len(v), 1) for s, v in stages.items()} for key, stages in seconds.items()}


def summary_header(summary: Dict[str, Any]) -> List[str]:
    """The first line of a ``summary.md``: the command, the commit and the machine (``provenance``)."""
    return [f"Command: `{summary['command']}`; commit {summary['commit']}; {summary['machine']}.", ""]


def dense_line(dense: List[Dict[str, Any]], label: str = "Dense models") -> str:
    """The dense models' accuracy per seed (and model, when there are several), as one line of a summary."""
    models = {d.get("model") for d in dense}
    return f"{label}: " + "; ".join(
        (f"{d['model']} " if len(models) > 1 else "") + f"seed {d['seed']}: "
        + ", ".join(f"{a} {100 * v:.2f}" for a, v in d["accuracy"].items()) for d in dense)


def save_summary(grid: Grid, summary: Dict[str, Any], text: List[str]) -> Dict[str, Any]:
    """``summary.json`` (the data ``render.py`` reads) and ``summary.md`` (``text``) in the grid's folder."""
    atomic_json(grid.output / "summary.json", summary)
    atomic_write(grid.output / "summary.md", lambda f: f.write("\n".join(text).encode()))
    return summary


def report_main(name: str, doc: str, base: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]],
                targets: List[float], models: Sequence[str], write_summary: Callable[[Grid, Any], Any],
                argv: Optional[List[str]] = None, width: Optional[float] = 0.125) -> int:
    """The main of a grid with one phase, ``report``: every row at ``--targets`` from each seed's dense model."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_grid_arguments(parser, f"runs/benchmarks/{name}", models, width=width)
    parser.add_argument("--targets", nargs="+", type=float, default=targets)
    args = parser.parse_args(argv)
    grid = Grid(base, {"report": {}}, args)
    return run_then_summarise(name, grid, lambda: grid.run("report", rows, {m: args.targets for m in args.models},
                                                           args.seeds), lambda: write_summary(grid, argv))


def run_then_summarise(name: str, grid: Grid, run: Callable[[], None], summarise: Callable[[], Any]) -> int:
    """A benchmark's main: ``run()`` unless ``--summary-only``, then ``summarise()`` and print ``summary.md``; a
    bad config is one line and exit code 2."""
    try:
        if not grid.args.summary_only:
            run()
    except ConfigError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 2
    summarise()
    print((grid.output / "summary.md").read_text())
    return 0
