"""``nni-mrs`` command line (also ``python -m nni_mrs_plugin``).

``run [CONFIG]``: the MRPF job (pretrain -> MRS pruning -> ModelSpeedup -> adversarial fine-tuning -> robust
evaluation -> report) for a YAML config; without CONFIG, the shipped Fashion-MNIST small-CNN config. A rerun
resumes after the last finished stage.

``eval CHECKPOINT``: the config's robust evaluation of a saved model. ``export RUN_DIR_OR_CHECKPOINT``: the pruned
model as ONNX, OpenVINO IR or an AOTInductor package, BatchNorm folded, checked in its runtime. ``compare [CONFIG]``:
the job across pruners and targets from one dense model, one table and one plot. ``experiment [CONFIG]``: an NNI
experiment searching the config (``nni.experiment.Experiment``); ``trial [CONFIG]``: one NNI trial.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["main"]


def _override(text: str) -> tuple:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. pruning.tau=0.5), got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not valid YAML ({str(err).splitlines()[0]}); "
                                         f"quote lists, e.g. pruning.op_types='[Conv2d, Linear]'") from None


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (the usage block is one ``-h`` away), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def _versions() -> str:
    """This package's version and those of what it runs on, for bug reports (read from metadata: torch not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return f"nni-mrs {__version__} (" + ", ".join(f"{n} {of(n)}" for n in ("nni", "torch", "torchattacks")) + \
        f", Python {sys.version.split()[0]})"


def _parser() -> argparse.ArgumentParser:
    from .pipeline import STAGES

    parser = _Parser(prog="nni-mrs", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--version", action="version", version=_versions())
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the MRPF job for a config: prune, remove channels, fine-tune, evaluate, report")
    run.add_argument("config", nargs="?", default=None, help="YAML config (default: the shipped Fashion-MNIST one)")
    run.add_argument("--until", choices=STAGES, default=None, help="stop after this stage")
    _common(run, "run folder (default: the config's output.dir)")
    ev = sub.add_parser("eval", help="robust accuracy of a saved model (pruned.pt / dense.pt) under the config's attacks")
    ev.add_argument("checkpoint", help="a model saved by nni-mrs (save_pruned): run_folder/pruned.pt")
    ev.add_argument("--config", default=None, help="YAML config (default: config.yaml beside the checkpoint)")
    add_set_argument(ev, "override a config key, e.g. --set eval.attacks=[clean,pgd20]")
    ev.add_argument("--out", default=None, help="also write the result to this JSON file")
    cmp = sub.add_parser("compare", help="the job across pruners and FLOPs targets: one table and one plot")
    cmp.add_argument("config", nargs="?", default=None, help="YAML config (default: the shipped Fashion-MNIST one)")
    cmp.add_argument("--pruners", nargs="+", default=["mrs", "l1"], metavar="NAME",
                     help="registry names (default: mrs l1; l1 = uniform ratios, NNI's L1 norm channels)")
    cmp.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.75, 0.9], metavar="S",
                     help="fractions of the budget removed (default: 0.5 0.75 0.9)")
    cmp.add_argument("--seeds", nargs="+", type=int, default=None, metavar="N", help="default: the config's seed")
    _common(cmp, "default: the config's output.dir + '-compare'")
    out = sub.add_parser("export", help="a saved model as ONNX, OpenVINO IR or AOTInductor, checked in its runtime")
    out.add_argument("source", help="a run folder (its pruned.pt) or a model saved by nni-mrs")
    out.add_argument("--format", choices=["onnx", "openvino", "pt2"], default="onnx", help="default: onnx")
    out.add_argument("--out", default=None, help="the artifact (default: beside the model, e.g. pruned.onnx)")
    out.add_argument("--config", default=None, help="YAML config (default: config.yaml beside the model)")
    add_set_argument(out, "override a config key (repeatable)")
    out.add_argument("--samples", type=int, default=64, help="test images the artifact is checked on (default: 64)")
    out.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm layers as they are")
    out.add_argument("--static-batch", action="store_true", help="fix the batch size at 1")
    out.add_argument("--no-verify", action="store_true", help="write without running the artifact's checks")
    exp = sub.add_parser("experiment", help="an NNI experiment (nni.experiment.Experiment) searching the config")
    exp.add_argument("config", nargs="?", default=None, help="YAML config (default: the shipped Fashion-MNIST one)")
    exp.add_argument("--search-space", default=None, metavar="JSON",
                     help="NNI search space over dotted config keys (default: the shipped one: tau, estimator, "
                          "rho, fine-tuning method and TRADES beta)")
    exp.add_argument("--trials", type=int, default=8, help="maximum number of trials (default: 8)")
    exp.add_argument("--concurrency", type=int, default=1, help="trials at once (default: 1)")
    exp.add_argument("--tuner", default="TPE", help="an NNI built-in tuner (default: TPE)")
    exp.add_argument("--port", type=int, default=8080, help="NNI manager and web portal port (default: 8080)")
    exp.add_argument("--max-duration", default=None, metavar="DURATION", help="e.g. 2h (default: no limit)")
    exp.add_argument("--training-service", default=None, metavar="YAML", help="NNI's trainingService section or an "
                     "nnictl config holding one, e.g. platform: remote with a machineList (default: this machine)")
    _common(exp, "default: the config's output.dir + '-experiment'")
    trial = sub.add_parser("trial", help="one NNI trial: the tuner's parameters as config overrides (run by NNI)")
    trial.add_argument("config", nargs="?", default=None, help="YAML config (default: the shipped Fashion-MNIST one)")
    add_set_argument(trial, "override a config key before the tuner's parameters (repeatable)")
    return parser


def add_set_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--set KEY=VALUE`` (repeatable, YAML values) into ``args.overrides``; benchmarks use it too."""
    parser.add_argument("--set", dest="overrides", type=_override, action="append", default=[], metavar="KEY=VALUE",
                        help=help_text)


def _common(parser: argparse.ArgumentParser, output_help: str) -> None:
    add_set_argument(parser, "override a config key, e.g. --set finetune.epochs=2 (repeatable)")
    parser.add_argument("--output", default=None, help=output_help)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config(args: argparse.Namespace):
    from .config import load_config

    overrides = dict(args.overrides)
    if args.no_progress:
        overrides["progress"] = False
    return load_config(args.config, overrides)


def _print_summary(state: Dict[str, Any], out: str) -> None:
    from .report import format_metric, summary_rows

    stages = state["stages"]
    if "speedup" not in stages:
        print(f"stages finished: {', '.join(stages)}; outputs in {out}")
        return
    print(f"\n{'':34}{'dense':>14}{'pruned':>14}{'ratio':>8}")
    for row in summary_rows(stages):
        ratio = row["pruned"] / row["dense"] if row["dense"] else float("nan")
        dense, pruned = format_metric(row["dense"], row["metric"]), format_metric(row["pruned"], row["metric"])
        print(f"{row['metric']:34}{dense:>14}{pruned:>14}{ratio:>8.2f}")
    seconds = sum(stage.get("seconds", 0) for stage in stages.values())
    print(f"\nrun folder: {out} (report.md, report.json, mrs_units.png, pruned.pt); stages took {seconds:.0f} s")


def _run(args: argparse.Namespace) -> int:
    from .pipeline import Pipeline

    pipeline = Pipeline(_config(args), args.output,
                        on_stage=lambda stage, i, n: print(f"nni-mrs: [{i}/{n}] {stage}", flush=True))
    state = pipeline.run(args.until)
    _print_summary(state, str(pipeline.dir))
    return 0


def _saved_model(args: argparse.Namespace, checkpoint: Path):
    """(model, config) of a saved model and the config beside it (or ``--config``), checked against each other."""
    from ..checkpoint import load_pruned
    from .build import check_model_fits_data
    from .config import ConfigError, load_config

    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint {str(checkpoint)!r} does not exist")
    if args.config is not None and not Path(args.config).is_file():
        raise ConfigError(f"config file {args.config!r} does not exist")
    source = args.config or checkpoint.with_name("config.yaml")
    config = load_config(source if Path(source).is_file() else None, dict(args.overrides))
    try:
        model = load_pruned(checkpoint)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_model_fits_data(model, config)
    return model, config


def _eval(args: argparse.Namespace) -> int:
    from ..checkpoint import atomic_json
    from .pipeline import robust_evaluation

    model, config = _saved_model(args, Path(args.checkpoint))
    result = robust_evaluation(config, model)
    if args.out:
        atomic_json(args.out, result)
    print(json.dumps(result, indent=2, default=float))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_saved
    from .pipeline import _make_loaders

    source = Path(args.source)
    checkpoint = source / "pruned.pt" if source.is_dir() else source
    model, config = _saved_model(args, checkpoint)
    record = export_saved(config, model, checkpoint, _make_loaders(config)[1], args.format, args.out,
                          samples=args.samples, fold_bn=not args.no_fold_bn, dynamic_batch=not args.static_batch,
                          verify=not args.no_verify)
    print(json.dumps(record, indent=2, default=float))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare, compare_table

    config = _config(args)
    out = args.output or f"{config.output.dir}-compare"
    result = compare(config, args.pruners, args.targets, out, args.seeds,
                     on_run=lambda i, n, label: print(f"[{i}/{n}] {label}", flush=True))
    print("\n" + compare_table(result))
    print(f"\n{len(result['runs'])} runs; table and plot: {out}/compare.md, compare.png, compare.json")
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from .experiment import default_search_space_path, experiment_table, launch_experiment

    overrides = {**dict(args.overrides), **({"progress": False} if args.no_progress else {})}
    result = launch_experiment(args.config, args.search_space or default_search_space_path(), overrides=overrides,
                               output=args.output, trials=args.trials, concurrency=args.concurrency,
                               tuner=args.tuner, port=args.port, max_duration=args.max_duration,
                               training_service=args.training_service)
    out = Path(result["working_directory"]).parent
    print(experiment_table(result))
    print(f"results: {out}/experiment.json; NNI's logs and each trial's run folder: {result['working_directory']}")
    return 0 if result["status"] == "done" else 1


def _trial(args: argparse.Namespace) -> int:
    from .experiment import run_trial

    metrics = run_trial(args.config, dict(args.overrides))
    print(json.dumps(metrics, indent=2))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """The command; a warning raised from this package's own code (a deprecated config key) is one line on stderr
    like its other messages, any other warning is shown as Python shows it."""
    package = str(Path(__file__).resolve().parents[1])
    with warnings.catch_warnings():
        show = warnings.showwarning

        def one_line(message, category, filename, lineno, file=None, line=None):
            if str(Path(filename).resolve()).startswith(package):
                print(f"nni-mrs: {category.__name__}: {str(message).splitlines()[0]}", file=sys.stderr)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = one_line
        return _main(argv)


def _main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from ..checkpoint import DiskFullError, Stopped, stop_on_signals
    from ..data import DataNotFoundError
    from ..deploy import MissingExtraError
    from .config import ConfigError
    from .experiment import ExperimentError
    from .lock import FolderInUseError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: every process would prune on its own and hang
        print(f"nni-mrs: {args.command} runs as one process, not under torchrun (WORLD_SIZE="
              f"{os.environ['WORLD_SIZE']}); for several GPUs call fit() under torchrun in your own script",
              file=sys.stderr)
        return 2
    command = {"run": _run, "eval": _eval, "compare": _compare, "export": _export, "experiment": _experiment,
               "trial": _trial}[args.command]
    again = shlex.join(["nni-mrs", *(sys.argv[1:] if argv is None else argv)])
    try:
        with stop_on_signals():
            return command(args)
    except ConfigError as err:
        print(f"nni-mrs: config error: {err}", file=sys.stderr)
    except (MissingExtraError, DataNotFoundError, FolderInUseError, ExperimentError) as err:
        print(f"nni-mrs: {err}", file=sys.stderr)
    except DiskFullError as err:
        print(f"nni-mrs: {err.strerror}; what finished is kept: free space and run `{again}` to resume",
              file=sys.stderr)
    except OSError as err:  # an output path through a regular file, a read-only folder
        where = f" {err.filename}" if err.filename else ""
        print(f"nni-mrs: cannot write{where}: {err.strerror or err}", file=sys.stderr)
    except ValueError as err:  # a bad value found past the config checks (e.g. an unreachable target)
        print(f"nni-mrs: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
    except KeyboardInterrupt as err:  # Stopped: SIGTERM or SIGINT, after the write under way
        name, code = (err.args[0], err.exit_code) if isinstance(err, Stopped) else ("SIGINT", 130)
        resume = f"; what finished is kept: run `{again}` to resume" if args.command in ("run", "compare") else ""
        print(f"nni-mrs: stopped by {name}{resume}", file=sys.stderr)
        return code
    return 2


if __name__ == "__main__":
    sys.exit(main())
