"""The NNI experiment manager: a real 2-trial experiment (local, loopback), trial entry, search-space checks,
and the shipped nnictl example."""
import json
import shlex
import socket
from pathlib import Path

import pytest
import yaml
from conftest import run_python
from test_pipeline import TINY

from nni_mrs_plugin.job.cli import _parser
from nni_mrs_plugin.job.config import ConfigError, load_config
from nni_mrs_plugin.job.experiment import check_search_space, default_search_space_path, launch_experiment

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nni_experiment"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_trial_experiment_end_to_end(tmp_path):
    out = tmp_path / "exp"
    space = {"pruning.options.tau": {"_type": "choice", "_value": [0.0, 1.0]}}
    result = launch_experiment(dict(TINY), space, output=str(out), trials=2, tuner="GridSearch", port=free_port())
    assert result["status"] == "done"
    trials = result["trials"]
    assert [t["status"] for t in trials] == ["SUCCEEDED", "SUCCEEDED"]
    assert sorted(t["parameters"]["pruning.options.tau"] for t in trials) == [0.0, 1.0]
    assert trials[0]["metrics"]["default"] >= trials[1]["metrics"]["default"], "sorted best first"
    allocations = []
    for trial in trials:
        metrics = trial["metrics"]
        assert metrics["default"] == metrics["pgd20_accuracy"] and 0 <= metrics["default"] <= 1
        assert abs(metrics["flops_removed"] - 0.5) <= 0.01
        assert {"clean_accuracy", "params", "flops", "cpu_latency_ms"} <= set(metrics)
        # one intermediate result per fine-tuning epoch, robust accuracy as default
        assert len(trial["intermediate"]) == TINY["finetune"]["epochs"]
        assert 0 <= trial["intermediate"][0]["default"] <= 1
        run = Path(trial["trial_dir"]) / "mrpf"
        assert json.loads((run / "trial.json").read_text()) == {"parameters": trial["parameters"], "metrics": metrics}
        options = load_config(yaml.safe_load((run / "config.yaml").read_text())).pruning.options
        assert options["tau"] == trial["parameters"]["pruning.options.tau"]
        allocations.append([u["ratio"] for u in json.loads((run / "allocation.json").read_text())["units"]])
    assert allocations[0] != allocations[1], "tau changes the allocation"
    assert json.loads((out / "experiment.json").read_text())["trials"] == json.loads(json.dumps(trials))
    assert all(t["id"] in (out / "experiment.md").read_text() for t in trials)


@pytest.mark.parametrize("space, message", [
    ({"pruning.tua": {"_type": "choice", "_value": [0.5]}},
     "search space 'pruning.tua' value 0.5: unknown key 'pruning.tua'; did you mean 'pruning.options.tau'?"),
    ({"pruning.options.estimator": {"_type": "choice", "_value": ["weight", "magic"]}},
     "search space 'pruning.options.estimator' value 'magic': pruning.options.estimator: unknown estimator 'magic'"),
    ({"pruning.options.tau": {"_type": "uniform", "_value": [-1, 1]}},
     "search space 'pruning.options.tau' value -1: pruning.options.tau: tau must be a finite number >= 0"),
    ({"pruning.options.tau": {"_type": "gaussian", "_value": [0, 1]}},
     "search space 'pruning.options.tau': unknown _type 'gaussian'"),
    ({"pruning.options.tau": [0, 1]}, "search space 'pruning.options.tau': must be {'_type': ..., '_value': [...]}"),
    ({}, "search space: must be a non-empty mapping"),
])
def test_search_space_is_checked_against_the_config(space, message):
    with pytest.raises(ConfigError) as info:
        check_search_space(load_config(), space)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_bad_tuner_and_missing_robust_attack_fail_before_nni_starts(tmp_path):
    space = {"pruning.options.tau": {"_type": "choice", "_value": [0.0]}}
    with pytest.raises(ConfigError, match="tuner: unknown NNI tuner 'TPEE'; built in: .*TPE"):
        launch_experiment(dict(TINY), space, output=str(tmp_path / "a"), tuner="TPEE")
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        with pytest.raises(ConfigError, match=f"port: {busy.getsockname()[1]} is in use"):
            launch_experiment(dict(TINY), space, output=str(tmp_path / "a"), port=busy.getsockname()[1])
    no_pgd = dict(TINY, eval={"attacks": ["clean", "fgsm"]})
    with pytest.raises(ConfigError, match="eval.attacks: a trial reports robust accuracy"):
        launch_experiment(no_pgd, space, output=str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    result = run_python(["-m", "nni_mrs_plugin", "trial", "--set", "eval.attacks=[clean]"])
    assert result.returncode == 2
    assert result.stderr.strip().startswith("nni-mrs: config error: eval.attacks: a trial reports robust accuracy")


def test_nnictl_example_is_a_valid_experiment_of_the_default_config():
    from nni.experiment.config import ExperimentConfig

    data = yaml.safe_load((EXAMPLE / "config.yml").read_text())
    config = ExperimentConfig.load(str(EXAMPLE / "config.yml"))  # as nnictl reads it: paths relative to the file
    config.validate()
    canonical = config.canonical_copy()
    assert Path(canonical.trial_code_directory) == EXAMPLE and canonical.search_space == json.loads(
        default_search_space_path().read_text())
    space = json.loads((EXAMPLE / data["searchSpaceFile"]).read_text())
    assert space == json.loads(default_search_space_path().read_text()), "example and shipped search space differ"
    check_search_space(load_config(), space)
    words = shlex.split(data["trialCommand"])
    assert words[:3] == ["python3", "-m", "nni_mrs_plugin"]
    args = _parser().parse_args(words[3:])
    assert args.command == "trial"
    assert data["tuner"]["classArgs"]["optimize_mode"] == "maximize"


def test_docs_show_the_shipped_search_space():
    page = (Path(__file__).resolve().parents[1] / "docs" / "experiments.md").read_text()
    block = page.split('```json\n', 1)[1].split("```", 1)[0]
    assert json.loads(block) == json.loads(default_search_space_path().read_text())


@pytest.mark.parametrize("name, platform", [("config_remote.yml", "remote"), ("config_kubeflow.yml", "kubeflow")])
def test_multi_machine_experiment_configs_pass_nnis_loader(tmp_path, name, platform):
    """The remote (SSH) and Kubeflow examples are valid NNI experiment configs of the same job and search space.
    NNI's loader checks that a remote machine's SSH key exists, so the test points it at a stand-in key file."""
    from nni.experiment.config import ExperimentConfig

    data = yaml.safe_load((EXAMPLE / name).read_text())
    key = tmp_path / "id_rsa"
    key.write_text("stand-in for the user's SSH key\n")
    for machine in data["trainingService"].get("machineList", []):
        machine["sshKeyFile"] = str(key)
    data["searchSpaceFile"] = str(EXAMPLE / data["searchSpaceFile"])
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    config = ExperimentConfig.load(str(path))
    config.validate()
    canonical = config.canonical_copy()
    assert canonical.training_service.platform == platform
    assert canonical.search_space == json.loads(default_search_space_path().read_text())
    command = data.get("trialCommand") or data["trainingService"]["worker"]["command"]
    words = shlex.split(command)
    assert words[:3] == ["python3", "-m", "nni_mrs_plugin"] and _parser().parse_args(words[3:]).command == "trial"
    assert data["tuner"]["classArgs"]["optimize_mode"] == "maximize"
