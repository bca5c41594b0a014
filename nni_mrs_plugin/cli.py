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
    ev = sub.add_parser("eval", help="robust accuracy of a saved model (pruned.pt / dense.pt) under the config's attacks")
    ev.add_argument("checkpoint", help="a model saved by nni-mrs (save_pruned): run_folder/pruned.pt")
    ev.add_argument("--config", default=None, help="YAML config (default: config.yaml beside the checkpoint)")
    ev.add_argument("--set", dest="overrides", type=_override, action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set eval.attacks=[clean,pgd20]")
    ev.add_argument("--out", default=None, help="also write the result to this JSON file")
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


def _eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .checkpoint import atomic_write, load_pruned
    from .config import ConfigError, load_config
    from .pipeline import robust_evaluation

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint {str(checkpoint)!r} does not exist")
    source = args.config or checkpoint.with_name("config.yaml")
    config = load_config(source if Path(source).is_file() else None, dict(args.overrides))
    try:
        model = load_pruned(checkpoint)
    except Exception as err:
        raise ConfigError(f"{checkpoint} is not a model saved by nni-mrs ({type(err).__name__}: {err})") from None
    result = robust_evaluation(config, model)
    text = json.dumps(result, indent=2, default=float)
    if args.out:
        atomic_write(args.out, lambda f: f.write(text.encode()))
    print(text)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from .config import ConfigError
    from .data import DataNotFoundError

    try:
        if args.command == "run":
            return _run(args)
        if args.command == "eval":
            return _eval(args)
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
