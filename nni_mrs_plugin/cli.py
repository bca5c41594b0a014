"""``nni-mrs`` command line (also ``python -m nni_mrs_plugin``).

``run [CONFIG]``: the MRPF job (pretrain -> MRS pruning -> ModelSpeedup -> adversarial fine-tuning -> robust
evaluation -> report) for a YAML config; without CONFIG, the shipped Fashion-MNIST small-CNN config. A rerun
resumes after the last finished stage.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional

__all__ = ["main"]


def _override(text: str) -> tuple:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. pruning.tau=0.5), got {text!r}")
    return key.strip(), yaml.safe_load(value)


def _parser() -> argparse.ArgumentParser:
    from .pipeline import STAGES

    parser = argparse.ArgumentParser(prog="nni-mrs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the MRPF job for a config: prune, remove channels, fine-tune, evaluate, report")
    run.add_argument("config", nargs="?", default=None, help="YAML config (default: the shipped Fashion-MNIST one)")
    run.add_argument("--set", dest="overrides", type=_override, action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set pruning.target=0.75 (repeatable)")
    run.add_argument("--output", default=None, help="run folder (default: the config's output.dir)")
    run.add_argument("--until", choices=STAGES, default=None, help="stop after this stage")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _print_summary(state: Dict[str, Any], out: str) -> None:
    from .report import _fmt, summary_rows

    stages = state["stages"]
    if "speedup" not in stages:
        print(f"stages finished: {', '.join(stages)}; outputs in {out}")
        return
    print(f"\n{'':34}{'dense':>14}{'pruned':>14}{'ratio':>8}")
    for row in summary_rows(stages):
        ratio = row["pruned"] / row["dense"] if row["dense"] else float("nan")
        print(f"{row['metric']:34}{_fmt(row['dense'], row['metric']):>14}{_fmt(row['pruned'], row['metric']):>14}"
              f"{ratio:>8.2f}")
    seconds = sum(stage.get("seconds", 0) for stage in stages.values())
    print(f"\nrun folder: {out} (report.md, report.json, mrs_units.png, pruned.pt); stages took {seconds:.0f} s")


def _run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .pipeline import Pipeline

    overrides = dict(args.overrides)
    if args.no_progress:
        overrides["progress"] = False
    config = load_config(args.config, overrides)
    pipeline = Pipeline(config, args.output)
    state = pipeline.run(args.until)
    _print_summary(state, str(pipeline.dir))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from .config import ConfigError
    from .data import DataNotFoundError

    try:
        if args.command == "run":
            return _run(args)
    except ConfigError as err:
        print(f"nni-mrs: config error: {err}", file=sys.stderr)
        return 2
    except DataNotFoundError as err:
        print(f"nni-mrs: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nni-mrs: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
