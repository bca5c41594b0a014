"""The MRPF job under NNI's experiment manager: a trial entry and an experiment launcher.

``run_trial`` is what each NNI trial runs (``nni-mrs trial [CONFIG]``): it takes ``nni.get_next_parameter()``
as dotted config overrides (``{"pruning.tau": 0.5}``), runs the job in the trial's output folder, reports
each fine-tuning epoch's robust accuracy as an intermediate result, and a final dict whose ``default`` is the
pruned model's robust accuracy, with clean accuracy, params, FLOPs and CPU latency beside it.

``launch_experiment`` starts such trials through ``nni.experiment.Experiment``, on this machine or on any NNI
training service (``training_service``: NNI's ``trainingService`` section, e.g. ``remote`` over SSH); the search
space's keys are config keys and every value is checked against the config before NNI starts.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import posixpath
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from ..checkpoint import atomic_json, atomic_write
from .config import Config, ConfigError, load_config

__all__ = ["run_trial", "trial_metrics", "robust_attack", "check_search_space", "launch_experiment",
           "load_training_service", "ExperimentError", "default_search_space_path", "experiment_table"]

# what the tuner may pick for each NNI search-space _type: the choices, a range's ends, a distribution's mean
_PICKS = {"choice": lambda v: list(v), "randint": lambda v: [v[0], v[1] - 1],
          **{k: lambda v: list(v[:2]) for k in ("uniform", "quniform", "loguniform", "qloguniform")},
          **{k: lambda v: [v[0]] for k in ("normal", "qnormal", "lognormal", "qlognormal")}}


def robust_attack(attacks: List[str]) -> str:
    """The attack whose accuracy is the trial's ``default`` metric: the first PGD, else AutoAttack."""
    for attack in attacks:
        if attack.startswith("pgd"):
            return attack
    if "autoattack" in attacks:
        return "autoattack"
    raise ConfigError(f"eval.attacks: a trial reports robust accuracy, so it needs a pgd or autoattack attack, "
                      f"got {attacks!r}")


def trial_metrics(stages: Mapping[str, Any], attack: str) -> Dict[str, float]:
    """The final result NNI records: ``default`` = robust accuracy of the pruned model, then the rest."""
    evaluation = stages["evaluate"]["pruned"]
    dense, pruned = stages["pretrain"]["dense"], stages["speedup"]["pruned"]
    metrics = {"default": evaluation[attack]["accuracy"]}
    metrics.update({f"{name}_accuracy": entry["accuracy"] for name, entry in evaluation.items()
                    if isinstance(entry, dict) and "accuracy" in entry})
    metrics.update({key: pruned[key] for key in ("params", "flops", "cpu_latency_ms")})
    metrics["flops_removed"] = 1 - pruned["flops"] / dense["flops"]
    return metrics


def run_trial(source: Union[str, Path, Mapping[str, Any], None] = None,
              overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, float]:
    """One NNI trial: the config, overridden by ``--set`` and then by the tuner's parameters."""
    import nni

    from .pipeline import Pipeline

    with warnings.catch_warnings():  # outside NNI (standalone) it warns and returns {}: the config as it is
        warnings.simplefilter("ignore", RuntimeWarning)
        parameters = nni.get_next_parameter() or {}
    for key in parameters:
        _check_not_a_path(key, "trial parameter")
    config = load_config(source, {**(overrides or {}), **parameters, "progress": False})
    attack = robust_attack(config.eval.attacks)
    # NNI gives each trial its own folder; outside NNI (standalone), the config's output.dir
    output = Path(os.environ["NNI_OUTPUT_DIR"]) / "mrpf" if os.environ.get("NNI_OUTPUT_DIR") else None

    def on_epoch(stage: str, row: Dict[str, Any]) -> None:
        if stage == "finetune" and row.get("pgd_acc") is not None:
            nni.report_intermediate_result({"default": row["pgd_acc"], "clean_accuracy": row["clean_acc"]})

    pipeline = Pipeline(config, output, on_epoch=on_epoch)
    metrics = trial_metrics(pipeline.run()["stages"], attack)
    atomic_json(pipeline.dir / "trial.json", {"parameters": parameters, "metrics": metrics})
    nni.report_final_result(metrics)
    return metrics


def _tuners() -> Dict[str, str]:
    from nni.tools.package_utils import get_all_algo_meta

    return {meta.name: meta.class_name for meta in get_all_algo_meta() if meta.algo_type == "tuner"}


def default_search_space_path() -> Path:
    return Path(__file__).parents[1] / "configs" / "search_space.json"


# keys that name files or folders: a tuner's pick would read or write wherever it points
PATH_KEYS = ("output.dir", "data.root", "model.checkpoint", "pretrain.teacher", "finetune.teacher")


def _check_not_a_path(key: str, where: str) -> None:
    if key in PATH_KEYS:
        raise ConfigError(f"{where} '{key}': a path is not a hyperparameter (a tuner's pick could point anywhere); "
                          f"set it in the config")


def check_search_space(config: Config, space: Mapping[str, Any]) -> None:
    """Every key is a config key and every value the tuner may pick (choices, range ends) is valid there."""
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"search space: must be a non-empty mapping of config keys, got {space!r}")
    base = config.to_dict()
    for key, spec in space.items():
        _check_not_a_path(key, "search space")
        if not isinstance(spec, Mapping) or "_type" not in spec or "_value" not in spec:
            raise ConfigError(f"search space '{key}': must be {{'_type': ..., '_value': [...]}}, got {spec!r}")
        kind, values = spec["_type"], spec["_value"]
        if kind not in _PICKS:
            raise ConfigError(f"search space '{key}': unknown _type {kind!r}; use one of {', '.join(_PICKS)}")
        try:
            picks = _PICKS[kind](values)
        except (TypeError, IndexError, KeyError):
            raise ConfigError(f"search space '{key}': _value {values!r} does not fit _type {kind!r}") from None
        for value in picks:
            try:
                load_config(base, {key: value})
            except ConfigError as err:
                raise ConfigError(f"search space '{key}' value {value!r}: {err}") from None


def load_training_service(source: Union[str, Path, Mapping[str, Any]]) -> Any:
    """NNI's training service config from a mapping or YAML file: a ``trainingService`` section (``platform:
    remote``, ``machineList``, ...) or a whole nnictl config holding one, checked by NNI's own loader."""
    import yaml
    from nni.experiment.config.utils import load_training_service_config

    where = str(source) if isinstance(source, (str, Path)) else "training service"
    if isinstance(source, (str, Path)):
        try:
            source = yaml.safe_load(Path(source).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"training service {where!r}: cannot read it as YAML ({str(err).splitlines()[0]})"
                              ) from None
    section = source.get("trainingService", source) if isinstance(source, Mapping) else source
    if not isinstance(section, Mapping) or "platform" not in section:
        raise ConfigError(f"{where}: must be NNI's trainingService section, a mapping with 'platform' "
                          f"(local, remote, kubeflow, ...)")
    if section is not source and "nniManagerIp" in source:  # a whole nnictl config: its address for the workers
        section = {"nniManagerIp": source["nniManagerIp"], **section}
    try:
        return load_training_service_config(dict(section))
    except Exception as err:  # NNI raises what its dataclasses raise: one line either way
        raise ConfigError(f"{where}: NNI refused it: {_first_line(err)}") from None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def launch_experiment(source: Union[str, Path, None], search_space: Union[str, Path, Mapping[str, Any]], *,
                      overrides: Optional[Mapping[str, Any]] = None, output: Optional[str] = None,
                      trials: int = 8, concurrency: int = 1, tuner: str = "TPE", port: int = 8080,
                      max_duration: Optional[str] = None,
                      training_service: Union[str, Path, Mapping[str, Any], None] = None) -> Dict[str, Any]:
    """Run an NNI experiment over the config and wait for it; returns (and writes) every trial's result.

    Writes in ``output``: ``trial/trial_config.yaml`` (what every trial starts from: NNI copies ``trial/`` to
    each machine), ``nni/`` (NNI's experiment folder: logs, database, local trials' run folders) and
    ``experiment.json``/``experiment.md``. Other machines run trials with the ``python3`` that their
    ``pythonPath`` names, which must have nni-mrs-plugin installed.
    """
    import requests
    import yaml
    from nni.experiment import Experiment

    config = load_config(source, overrides)
    robust_attack(config.eval.attacks)
    if isinstance(search_space, (str, Path)):
        try:
            search_space = json.loads(Path(search_space).read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"search space {str(search_space)!r}: cannot read it as JSON ({err})") from None
    check_search_space(config, search_space)
    tuners = _tuners()
    if tuner not in tuners:
        raise ConfigError(f"tuner: unknown NNI tuner {tuner!r}; built in: {', '.join(sorted(tuners))}")
    if trials < 1 or concurrency < 1:
        raise ConfigError(f"trials and concurrency must be >= 1, got {trials} and {concurrency}")
    service = load_training_service(training_service) if training_service is not None else None
    _check_port(port)
    out = Path(output or f"{config.output.dir}-experiment").resolve()
    (out / "trial").mkdir(parents=True, exist_ok=True)
    atomic_write(out / "trial" / "trial_config.yaml", lambda f: f.write(yaml.safe_dump(config.to_dict()).encode()))

    experiment = Experiment("local")
    cfg = experiment.config
    if service is not None:
        cfg.training_service = service
    python = _trial_python(cfg.training_service)
    cfg.experiment_name = f"mrpf-{config.model.name}-{config.data.dataset}"
    cfg.trial_command = shlex.join([python, "-m", "nni_mrs_plugin", "trial", "trial_config.yaml"])
    cfg.trial_code_directory = str(out / "trial")
    cfg.search_space = dict(search_space)
    cfg.tuner.name = tuner
    module, _, name = tuners[tuner].rpartition(".")
    if "optimize_mode" in inspect.signature(getattr(importlib.import_module(module), name)).parameters:
        cfg.tuner.class_args = {"optimize_mode": "maximize"}
    cfg.max_trial_number = trials
    cfg.trial_concurrency = concurrency
    cfg.experiment_working_directory = str(out / "nni")
    if max_duration:
        cfg.max_experiment_duration = max_duration
    try:
        cfg.validate()
    except Exception as err:  # NNI's checks of the whole experiment (a machine without host, ...): one line
        raise ConfigError(f"NNI refused the experiment: {_first_line(err)}") from None
    try:
        finished = experiment.run(port)
        if finished is None:  # Ctrl-C: NNI has already stopped the experiment
            raise KeyboardInterrupt
        result = _collect(experiment, finished)
    except requests.RequestException:  # its REST server is gone: NNI's manager stopped (its log says why)
        log = out / "nni" / str(experiment.id) / "log" / "nnimanager.log"
        errors = [line for line in _read(log).splitlines() if " ERROR " in line]
        raise ExperimentError(f"NNI's manager stopped: {errors[0].split(') ', 1)[-1] if errors else 'no error logged'}"
                              f" (log: {log})") from None
    finally:
        experiment.stop()
    _write_results(out, result)
    return result


class ExperimentError(RuntimeError):
    """NNI's manager stopped before the experiment finished (a training service it could not start, ...)."""


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _trial_python(service: Any) -> str:
    """This interpreter for local trials; elsewhere the ``python3`` in the machines' shared ``pythonPath`` (NNI puts
    it first on PATH, but a shell startup file such as pyenv's can put another before it), else PATH's."""
    if service.platform == "local":
        return sys.executable
    paths = {getattr(machine, "python_path", None) for machine in getattr(service, "machine_list", None) or []}
    return posixpath.join(paths.pop(), "python3") if len(paths) == 1 and None not in paths else "python3"


def _check_port(port: int) -> None:
    import socket

    if not 0 < port < 65536:
        raise ConfigError(f"port: must be in 1..65535, got {port}")
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
        except OSError:
            raise ConfigError(f"port: {port} is in use (another NNI experiment?); pass a free one with --port") from None


def _collect(experiment: Any, finished: Optional[bool]) -> Dict[str, Any]:
    results = {r.trialJobId: r for r in experiment.export_data()}
    reported = experiment.get_job_metrics()
    trials = []
    for job in experiment.list_trial_jobs():
        found = results.get(job.trialJobId)
        trials.append({"id": job.trialJobId, "status": job.status, "parameters": found.parameter if found else None,
                       "metrics": found.value if found else None, "trial_dir": job.logPath,
                       "intermediate": [m.data for m in reported.get(job.trialJobId, []) if m.type == "PERIODICAL"]})
    trials.sort(key=lambda t: -(t["metrics"] or {}).get("default", float("-inf")))
    return {"experiment_id": experiment.id, "status": "done" if finished else "error",
            "working_directory": str(experiment.config.experiment_working_directory), "trials": trials}


def experiment_table(result: Dict[str, Any]) -> str:
    """The Markdown summary of an experiment: a row per trial, best robust accuracy first."""
    lines = [f"# NNI experiment {result['experiment_id']} ({result['status']})", "",
             "| trial | status | parameters | robust accuracy | clean accuracy | FLOPs removed |",
             "|---|---|---|---:|---:|---:|"]
    for trial in result["trials"]:
        metrics = trial["metrics"] or {}
        cells = [f"{100 * metrics[k]:.2f}%" if k in metrics else "–"
                 for k in ("default", "clean_accuracy", "flops_removed")]
        lines.append(f"| {trial['id']} | {trial['status']} | `{json.dumps(trial['parameters'])}` | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_results(out: Path, result: Dict[str, Any]) -> None:
    atomic_json(out / "experiment.json", result)
    atomic_write(out / "experiment.md", lambda f: f.write(experiment_table(result).encode()))
