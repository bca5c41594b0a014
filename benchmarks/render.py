"""BENCHMARKS.md, rendered from the results as data in ``benchmarks/results/``.

Two kinds of result are read. A run folder's ``summary.json`` as ``benchmarks/allocation.py`` writes it (or wrote
it before the compare harness, with ``report_same_criterion``) is reduced to its verdicts: how often an allocation beat, tied or lost to uniform ratios
with the same channel criterion (paired per-seed differences, 95% t-intervals); ``page.json`` says what each such
run was (title, conclusion, provenance, command), the page's order and what is not measured yet. ``kept.json``
holds the tables of runs whose raw data is gone, kept as measured (``title``, ``conclusion``, ``runs``: each with
its setting — machine, date, commit —, command and table), rendered as they are. The run history, with every table
of every run, is docs/benchmarks/history.md.

    python benchmarks/render.py            # writes BENCHMARKS.md
    python benchmarks/render.py --check    # exit 1 if BENCHMARKS.md is not what the summaries render
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "BENCHMARKS.md"
HISTORY = "docs/benchmarks/history.md"
METRICS = {"pgd20": "PGD-20", "autoattack": "AutoAttack"}

INTRO = f"""# Benchmarks

Measured figures only, each with its command, date, machine and commit; figures from elsewhere are cited, never
mixed in. This page is rendered from `benchmarks/results/*/summary.json` by `python benchmarks/render.py` (a test
fails when it is stale); [the run history]({HISTORY}) keeps every run in full, in the order it was made, with the
rows that lost. What the scripts measure: `docs/benchmarks.md`.
"""


def _table(columns: List[str], rows: List[List[Any]]) -> List[str]:
    return ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(map(str, row)) + " |" for row in rows)]


def _judged(summary: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Allocation rows against the uniform row with the same criterion, as {row, model, target, attack, diff,
    verdict}: from ``report.same_criterion`` (the compare grid's summary) or ``report_same_criterion`` (summaries
    written before it)."""
    if "same_criterion" in summary.get("report", {}):
        return [dict(v, row=v["variant"]) for v in summary["report"]["same_criterion"]]
    return [{"row": row["row"], "model": row["model"], "target": row["target"], "attack": metric[len("tuned_"):],
             "diff": row["metrics"][metric]["diff"], "verdict": row["metrics"][metric]["verdict"]}
            for row in summary.get("report_same_criterion", {}).get("rows", []) for metric in row["metrics"]
            if metric.startswith("tuned_") and not row["row"].startswith("uniform")]


def _verdicts(summary: Dict[str, Any]) -> List[List[Any]]:
    """Per attack: allocation rows against uniform ratios with the same criterion, won / tied / lost."""
    out = []
    for attack, name in METRICS.items():
        judged = [v for v in _judged(summary) if v["attack"] == attack and v["verdict"] in ("win", "tie", "loss")]
        if not judged:
            continue
        count = {v: sum(1 for j in judged if j["verdict"] == v) for v in ("win", "tie", "loss")}
        best, worst = max(judged, key=lambda j: j["diff"]), min(judged, key=lambda j: j["diff"])
        out.append([name, len(judged), count["win"], count["tie"], count["loss"],
                    f"{100 * best['diff']:+.2f} ({best['row']}, {best['model']} at {best['target']})",
                    f"{100 * worst['diff']:+.2f} ({worst['row']}, {worst['model']} at {worst['target']})"])
    return out


def _section(name: str, summary: Dict[str, Any], meta: Dict[str, Any], kept: bool = False) -> List[str]:
    info = {**summary, **meta}
    lines = [f"## {info.get('title', name)}", ""]
    if info.get("goal"):
        lines += [f"Goal: {info['goal']}.", ""]
    lines += [f"**{info['conclusion']}**", ""] if info.get("conclusion") else []
    if _judged(summary):
        lines += [info["provenance"], "", "```bash", info["command"], "```", "",
                  "Fine-tuned test accuracy, each allocation against uniform ratios with the same channel criterion "
                  "(paired per-seed differences in points, 95% t-interval):", "",
                  *_table(["metric", "comparisons", "wins", "ties", "losses", "largest mean gain", "largest mean loss"],
                          _verdicts(summary)), ""]
    for run in summary.get("runs", []):
        setting = run.get("setting") or ""
        lines += [f"**{run['label']}**: {setting}" if setting and not setting.startswith("**") else setting
                  or f"**{run['label']}**", ""]
        lines += ["```bash", run["command"], "```", ""] if run.get("command") else []
        lines += [run["caption"], ""] if run.get("caption") else []
        lines += [*_table(run["columns"], run["rows"]), ""]
    where = (f"`benchmarks/results/kept.json` (\"{name}\", kept as measured: not re-run)" if kept
             else f"`benchmarks/results/{name}/summary.json`")
    lines += [f"Script: `{info['script']}`; data: {where}; [history]({HISTORY}#{info['history']}).", ""]
    return lines


def render() -> str:
    page = json.loads((RESULTS / "page.json").read_text())
    found = {p.parent.name: (json.loads(p.read_text()), page["runs"].get(p.parent.name, {}))
             for p in RESULTS.glob("*/summary.json")}
    kept = json.loads((RESULTS / "kept.json").read_text())
    found.update({name: (summary, {}) for name, summary in kept.items()})
    names = [n for n in page["order"] if n in found] + sorted(n for n in found if n not in page["order"])
    loaded = {name: found[name] for name in names}
    lines = [INTRO, "## What they conclude", ""]
    lines += [f"- **{({**s, **m}).get('title', n)}.** {({**s, **m})['conclusion']}" for n, (s, m) in loaded.items()
              if ({**s, **m}).get("conclusion")]
    lines += ["", "Not measured yet:", ""]
    lines += [f"- {item}" for item in page["not_measured"]]
    lines += [""]
    for name, (summary, meta) in loaded.items():
        lines += _section(name, summary, meta, kept=name in kept)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if BENCHMARKS.md is stale; write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if PAGE.read_text() != text:
            print("BENCHMARKS.md is not what benchmarks/results renders: run python benchmarks/render.py",
                  file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
