"""The NNI experiment manager: a real 2-trial experiment (local, loopback), trial entry, search-space checks,
and the shipped nnictl example."""
import contextlib
import getpass
import json
import shlex
import shutil
import socket
import subprocess
import sys
import time
from types import SimpleNamespace
from pathlib import Path

import pytest
import yaml
from conftest import run_python
from test_pipeline import TINY

from nni_mrs_plugin.job.cli import _parser
from nni_mrs_plugin.job.config import ConfigError, load_config
from nni_mrs_plugin.job.experiment import (ExperimentError, check_search_space, default_search_space_path,
                                           launch_experiment, load_training_service)

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


@pytest.fixture
def sshd(tmp_path, request):
    """Debian's OpenSSH server on 127.0.0.1 with throwaway keys (the README's setup installs openssh-server). pip
    gets no index in its sessions: NNI's remote service runs `pip install nni --upgrade` on every machine."""
    assert Path("/usr/sbin/sshd").is_file(), "the README's setup installs Debian's openssh-server"
    folder = tmp_path / "ssh"
    folder.mkdir()
    for name in ("host_key", "client_key"):  # RSA in PEM: what NNI's bundled ssh2 reads
        subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f", folder / name],
                       check=True)
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    port = free_port()
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder}/host_key\nAuthorizedKeysFile {folder}/authorized_keys\n"
        f"PasswordAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        f"SetEnv PIP_NO_INDEX=1\n" + ("Subsystem sftp internal-sftp\n" if getattr(request, "param", "sftp") else ""))
    with contextlib.suppress(PermissionError):
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    log = folder / "sshd.log"
    server = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", folder / "sshd_config"], stderr=log.open("w"))
    deadline = time.time() + 30
    while server.poll() is None and time.time() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    assert server.poll() is None, log.read_text()
    yield SimpleNamespace(port=port, key=folder / "client_key", log=log)
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.slow
def test_two_trials_through_nnis_remote_training_service_over_ssh_on_loopback(tmp_path, sshd):
    """`nni-mrs experiment --training-service` with the shipped remote example, its machine list pointed at this
    machine over SSH: NNI uploads the trial folder, starts its trial keeper there and both trials report back."""
    example = yaml.safe_load((EXAMPLE / "config_remote.yml").read_text())
    example["nniManagerIp"] = "127.0.0.1"
    example["trainingService"]["machineList"] = [
        {"host": "127.0.0.1", "port": sshd.port, "user": getpass.getuser(), "sshKeyFile": str(sshd.key),
         "pythonPath": str(Path(sys.executable).parent)}]
    service = tmp_path / "remote.yml"
    service.write_text(yaml.safe_dump(example))
    config, space = tmp_path / "config.yaml", tmp_path / "space.json"
    config.write_text(yaml.safe_dump(dict(TINY)))
    space.write_text(json.dumps({"pruning.options.tau": {"_type": "choice", "_value": [0.0, 1.0]}}))
    out = tmp_path / "exp"
    done = run_python(["-m", "nni_mrs_plugin", "experiment", str(config), "--search-space", str(space), "--trials", "2",
                       "--tuner", "GridSearch", "--port", str(free_port()), "--training-service", str(service),
                       "--output", str(out)], timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "experiment.json").read_text())
    try:
        trials = result["trials"]
        assert [t["status"] for t in trials] == ["SUCCEEDED", "SUCCEEDED"]
        assert all("127.0.0.1:" in t["trial_dir"] for t in trials), "the trials ran on the remote machine"
        assert sorted(t["parameters"]["pruning.options.tau"] for t in trials) == [0.0, 1.0]
        for trial in trials:
            assert abs(trial["metrics"]["flops_removed"] - 0.5) <= 0.01 and 0 <= trial["metrics"]["default"] <= 1
            assert trial["id"] in (out / "experiment.md").read_text()
        assert "Accepted publickey" in sshd.log.read_text()
    finally:  # the trials' folders on the "remote" machine (reuse mode keeps them in /tmp)
        for root in (Path.home(), Path("/tmp")):
            shutil.rmtree(root / "nni-experiments" / result["experiment_id"], ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("sshd", [None], indirect=True)
def test_a_remote_machine_without_sftp_stops_nnis_manager_with_one_line_naming_why(tmp_path, sshd):
    service = {"platform": "remote", "nniManagerIp": "127.0.0.1", "machineList": [
        {"host": "127.0.0.1", "port": sshd.port, "user": getpass.getuser(), "sshKeyFile": str(sshd.key),
         "pythonPath": str(Path(sys.executable).parent)}]}
    space = {"pruning.options.tau": {"_type": "choice", "_value": [0.0]}}
    with pytest.raises(ExperimentError, match=r"NNI's manager stopped: .*sftp.* \(log: .*nnimanager.log\)$") as err:
        launch_experiment(dict(TINY), space, output=str(tmp_path / "exp"), trials=1, port=free_port(),
                          training_service=service)
    shutil.rmtree(Path.home() / "nni-experiments" / Path(str(err.value).split("/log/")[0]).name, ignore_errors=True)


def test_a_bad_training_service_is_one_line(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("trainingService:\n  platform: remote\n  machineList:\n    - hots: 127.0.0.1\n")
    done = run_python(["-m", "nni_mrs_plugin", "experiment", "--training-service", str(bad), "--trials", "1"])
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "hots" in done.stderr and str(bad) in done.stderr
    with pytest.raises(ConfigError, match="must be NNI's trainingService section"):
        load_training_service({"machineList": []})


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
