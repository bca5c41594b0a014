"""Faults around the job: a second writer on a run folder, SIGTERM and SIGINT, a full disk."""
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_python
from test_cli import TINY

from nni_mrs_plugin.checkpoint import DiskFullError, Stopped, _one_write, atomic_json, stop_on_signals
from nni_mrs_plugin.job.lock import FolderInUseError, FolderLock
from nni_mrs_plugin.job.pipeline import STAGES

HOLD = ("import sys, time\nfrom nni_mrs_plugin.job.lock import FolderLock\nwith FolderLock(sys.argv[1]):\n"
        "    print('held', flush=True)\n    time.sleep(300)\n")
QUICK = ["--set", "pretrain.epochs=0", "--until", "pretrain", "--no-progress"]


def nni_mrs(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run_python(["-m", "nni_mrs_plugin", *args], **kwargs)


def test_a_folder_in_use_is_refused_naming_its_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        for command in (["run", *TINY, *QUICK], ["compare", *TINY, "--pruners", "l1", "--targets", "0.5"]):
            result = nni_mrs(*command, "--output", str(out))
            assert result.returncode == 2, result.stderr[-2000:]
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(
                f"nni-mrs: {out} is in use by PID {holder.pid} on host {socket.gethostname()} (since "), lines
        with pytest.raises(FolderInUseError, match=f"PID {holder.pid}"):  # in-process too
            FolderLock(out).__enter__()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    result = nni_mrs("run", *TINY, *QUICK, "--output", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"nni-mrs: {out}: taking over the lock of PID {holder.pid} on host" in result.stderr
    assert (out / ".lock").read_text() == ""  # released in order: the next run takes over from nobody
    result = nni_mrs("run", *TINY, *QUICK, "--output", str(out))
    assert result.returncode == 0 and "taking over" not in result.stderr


def test_a_signal_during_an_atomic_write_waits_for_the_write(tmp_path):
    with stop_on_signals():
        with pytest.raises(Stopped) as info:
            with _one_write():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler has run by now: it held the signal back
                atomic_json(tmp_path / "a.json", {"written": True})
        assert info.value.exit_code == 143
        with pytest.raises(Stopped) as info:  # outside a write: at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        assert info.value.exit_code == 130
    assert json.loads((tmp_path / "a.json").read_text()) == {"written": True}
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def wait_for(path, process, timeout=600):
    deadline = time.time() + timeout
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, f"{path} never appeared before the run ended"


def leaves(value, path=""):
    """{dotted path: value} of a JSON document, timings left out."""
    if isinstance(value, dict):
        items = value.items() if "latency" not in str(value.get("metric", "")) else ()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {path: value}
    return {k: v for key, item in items if not any(t in str(key) for t in ("seconds", "samples_per_s", "latency"))
            for k, v in leaves(item, f"{path}.{key}").items()}


@pytest.mark.slow
def test_sigint_and_sigterm_stop_with_one_line_and_the_rerun_gives_the_uninterrupted_report(tmp_path):
    job = [*TINY, "--set", "finetune.epochs=3", "--no-progress"]
    reference = nni_mrs("run", *job, "--output", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr[-2000:]

    out = tmp_path / "stopped"
    command = [sys.executable, "-m", "nni_mrs_plugin", "run", *job, "--output", str(out)]
    again = shlex.join(["nni-mrs", *command[3:]])
    for signum, moment, code in ((signal.SIGINT, out / "pretrain" / "last.pt", 130),
                                 (signal.SIGTERM, out / "finetune" / "last.pt", 143)):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(moment, process)
            process.send_signal(signum)
            _, stderr = process.communicate(timeout=300)
        finally:
            process.kill()
        assert process.returncode == code, stderr[-2000:]
        assert stderr.strip().splitlines()[-1] == (f"nni-mrs: stopped by {signal.Signals(signum).name}; what finished "
                                                   f"is kept: run `{again}` to resume")
        assert not list(out.rglob("*.tmp")) and (out / ".lock").read_text() == ""
    assert "finetune" not in json.loads((out / "stages.json").read_text())["stages"]
    resumed = nni_mrs("run", *job, "--output", str(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = {name: json.loads((tmp_path / name / "report.json").read_text().replace(str(tmp_path / name), "RUN"))
              for name in ("reference", "stopped")}
    stopped, expected = leaves(report["stopped"]), leaves(report["reference"])
    assert not [(k, stopped.get(k), v) for k, v in expected.items() if stopped.get(k) != v][:5]
    assert stopped.keys() == expected.keys()


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_a_full_disk_stops_with_one_line_keeps_the_last_good_state_and_resumes(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], check=True)
    try:
        out = disk / "run"
        job = [*TINY, "--no-progress", "--output", str(out)]
        assert nni_mrs("run", *job, "--until", "pretrain").returncode == 0
        stages = (out / "stages.json").read_text()
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (free - 16 * 1024))  # 16 KiB left: less than any model checkpoint
        result = nni_mrs("run", *job)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"nni-mrs: no space left in {out}"), lines
        assert "bytes, " in lines[0] and lines[0].endswith(f"free space and run `{shlex.join(['nni-mrs', 'run', *job])}` to resume")
        assert (out / "stages.json").read_text() == stages and not list(out.rglob("*.tmp"))
        filler.unlink()
        result = nni_mrs("run", *job)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "report" in json.loads((out / "stages.json").read_text())["stages"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_disk_full_error_names_the_folder_and_the_bytes(tmp_path):
    error = DiskFullError(tmp_path / "model.pt", 123456)
    assert error.strerror == (f"no space left in {tmp_path} for model.pt: it needs 123,456 bytes, {error.free:,} are "
                              f"free")
    assert isinstance(error, OSError) and error.filename == str(tmp_path / "model.pt")


# -- untrusted inputs: nothing they hold runs, each is one line ------------------------------------------------------
def test_yaml_with_python_tags_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    tag = f"!!python/object/apply:os.system ['touch {marker}']"
    (tmp_path / "c.yaml").write_text(f"seed: {tag}\n")
    for argv in (["run", str(tmp_path / "c.yaml")], ["run", "--set", f"seed={tag}"]):
        result = nni_mrs(*argv, "--output", str(tmp_path / "run"))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and "python/object/apply:os.system" in lines[0], lines
    assert not marker.exists()


def test_a_search_space_or_trial_parameter_over_a_path_is_refused():
    from nni_mrs_plugin.job.config import ConfigError, load_config
    from nni_mrs_plugin.job.experiment import PATH_KEYS, check_search_space

    for key in PATH_KEYS:
        with pytest.raises(ConfigError, match=f"search space '{key}': a path is not a hyperparameter"):
            check_search_space(load_config(None), {key: {"_type": "choice", "_value": ["/etc"]}})


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_damaged_or_code_carrying_checkpoints_are_refused_in_one_line(tmp_path):
    import torch

    from nni_mrs_plugin.checkpoint import load_pruned, save_pruned
    from nni_mrs_plugin.models import build_model
    from nni_mrs_plugin.train.fit import LAST, fit

    path = save_pruned(tmp_path / "m.pt", build_model("small_cnn", in_channels=1), "small_cnn", in_channels=1)
    data = path.read_bytes()
    for offset in (len(data) // 3, len(data) // 2, 2 * len(data) // 3):  # inside the weights: torch reads them as they are
        flipped = bytearray(data)
        flipped[offset] ^= 0x01
        (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
        with pytest.raises(ValueError, match="flipped.pt is damaged: its content no longer matches the checksum"):
            load_pruned(tmp_path / "flipped.pt")
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pt is not a model saved by nni-mrs' save_pruned"):
        load_pruned(tmp_path / "cut.pt")
    marker = tmp_path / "ran"
    torch.save({"architecture": Payload(marker), "state_dict": {}}, tmp_path / "code.pt")
    with pytest.raises(ValueError, match="holds pickled Python objects"):
        load_pruned(tmp_path / "code.pt")
    assert not marker.exists()
    result = nni_mrs("eval", str(tmp_path / "flipped.pt"), "--set", "data.test_subset=8")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "is damaged" in result.stderr

    # a training checkpoint: resuming from a flipped one is refused, not trained on
    x, y = torch.rand(32, 1, 28, 28), torch.arange(32) % 10
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    fit(build_model("small_cnn", in_channels=1), loader, epochs=1, progress=False, checkpoint_dir=tmp_path / "fit")
    last = bytearray((tmp_path / "fit" / LAST).read_bytes())
    last[len(last) // 2] ^= 0x01
    (tmp_path / "fit" / LAST).write_bytes(bytes(last))
    with pytest.raises(ValueError, match="last.pt is damaged"):
        fit(build_model("small_cnn", in_channels=1), loader, epochs=2, progress=False, checkpoint_dir=tmp_path / "fit",
            resume=True)


def test_a_broken_install_or_plugin_is_one_line_and_runs_on(tmp_path):
    import shutil

    import nni_mrs_plugin

    copy = tmp_path / "site" / "nni_mrs_plugin"
    shutil.copytree(Path(nni_mrs_plugin.__file__).parent, copy)
    compat = copy / "host" / "compat.py"
    compat.write_text(compat.read_text() + "\nraise RuntimeError('a broken install')\n")
    result = run_python("print('alive')", env_extra={"PYTHONPATH": str(copy.parent)})
    assert result.returncode == 0 and result.stdout == "alive\n"
    assert result.stderr == "nni-mrs-plugin: NNI compat hooks not installed: a broken install\n"

    (tmp_path / "plugin" / "broken.py").parent.mkdir()
    (tmp_path / "plugin" / "broken.py").write_text("raise RuntimeError('needs a driver this machine lacks')\n")
    info = tmp_path / "plugin" / "broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[nni_mrs_plugin.pruners]\nbroken = broken:Pruner\n")
    result = nni_mrs("run", "--set", "pruning.pruner=broken", "--output", str(tmp_path / "run"),
                     env_extra={"PYTHONPATH": str(tmp_path / "plugin")})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, lines
    assert ("pruner 'broken' is registered as 'broken:Pruner' but cannot be loaded (RuntimeError: needs a driver "
            "this machine lacks)") in lines[0]


def _documents():
    from hypothesis import strategies as st

    from nni_mrs_plugin.job.config import load_config

    sections = load_config(None).to_dict()
    keys = sorted({key for section in sections.values() if isinstance(section, dict) for key in section})
    words = st.sampled_from(["pgd", "trades", "rslad", "mrs", "l1", "harp", "cpu", "cuda", "onnx", "clean", "pgd20",
                             "flops", "fashion_mnist", "small_cnn", "resnet18", "cosine", "[", "{a: 1}", "!!binary"])
    scalars = (st.none() | st.booleans() | st.integers(-5, 10 ** 7) | st.floats(allow_nan=True, allow_infinity=True)
               | st.text(max_size=8) | words)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.sampled_from(keys) | st.text(max_size=5), inner, max_size=3),
                          max_leaves=6)
    section = st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), values, max_size=4) | values
    return st.dictionaries(st.sampled_from(sorted(sections)) | st.text(max_size=6), section, max_size=4), keys, values


@pytest.mark.slow
def test_a_thousand_generated_configs_and_overrides_give_one_line_config_errors_only():
    """Property-based (hypothesis, derandomised): YAML documents for the loader, KEY=VALUE texts for --set."""
    import argparse

    import yaml
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from nni_mrs_plugin.job.cli import _override
    from nni_mrs_plugin.job.config import ConfigError, load_config

    documents, keys, values = _documents()
    sections = sorted(load_config(None).to_dict())
    dotted = st.builds(lambda s, k: f"{s}.{k}", st.sampled_from(sections), st.sampled_from(keys)) | st.text(max_size=12)
    texts = st.builds(lambda key, value: f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}", dotted,
                      values) | st.text(max_size=30)
    checked = {"documents": 0, "overrides": 0}

    @settings(max_examples=1000, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(documents)
    def loader(document):
        checked["documents"] += 1
        try:
            load_config(document)
        except ConfigError as err:
            assert "\n" not in str(err) and str(err), repr(err)

    @settings(max_examples=1000, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(texts)
    def overrides(text):
        checked["overrides"] += 1
        try:
            key, value = _override(text)
            load_config(None, {key: value})
        except (ConfigError, argparse.ArgumentTypeError) as err:
            assert "\n" not in str(err) and str(err), repr(err)

    loader()
    overrides()
    assert checked == {"documents": 1000, "overrides": 1000}


def _run_until_announced(command, stage, timeout=600):
    """Start the job and return it once it announces ``stage`` (None if it finished without)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + timeout
    for line in process.stdout:
        if line.startswith("nni-mrs: [") and line.rstrip().endswith(f"] {stage}"):
            return process
        assert time.time() < deadline, f"{stage} never started"
    process.wait()
    return None


@pytest.mark.slow
@pytest.mark.parametrize("pruner, plan", [
    ("mrs", [s for s in STAGES for _ in range(2)]),
    ("harp", ["prune"] * 3)])
def test_kill_9_at_random_moments_of_every_stage_resumes_to_the_uninterrupted_report(tmp_path, pruner, plan):
    """A seeded fault injection: SIGKILL at a random moment inside each planned stage (a delay drawn within the
    stage's length in the uninterrupted run), the same command again after each, and the report at the end."""
    import random

    job = [*TINY, "--set", f"pruning.pruner={pruner}", "--set", "pretrain.epochs=2", "--set", "finetune.epochs=2",
           "--set", "export.formats=[onnx]", "--set", "export.samples=16", "--no-progress"]
    if pruner == "harp":
        job += ["--set", "pruning.options={epochs: 2}"]
    reference = nni_mrs("run", *job, "--output", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr[-2000:]
    seconds = {s: r["seconds"] for s, r in json.loads((tmp_path / "reference" / "stages.json").read_text())["stages"].items()}
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "nni_mrs_plugin", "run", *job, "--output", str(out)]
    rng = random.Random(0)
    inside = {stage: 0 for stage in plan}
    for stage in plan:
        process = _run_until_announced(command, stage)
        if process is None:
            continue
        time.sleep(rng.uniform(0, 0.8 * seconds[stage]))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, f"{stage}: the job ended before the kill"
        done = json.loads((out / "stages.json").read_text())["stages"] if (out / "stages.json").exists() else {}
        inside[stage] += stage not in done
    assert sum(inside.values()) >= len(plan) - 2 and all(inside.values()), inside
    resumed = nni_mrs("run", *job, "--output", str(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "taking over the lock" in resumed.stderr  # every kill left a holder behind
    report = {name: json.loads((tmp_path / name / "report.json").read_text().replace(str(tmp_path / name), "RUN"))
              for name in ("reference", "killed")}
    killed, expected = leaves(report["killed"]), leaves(report["reference"])
    assert not [(k, killed.get(k), v) for k, v in expected.items() if killed.get(k) != v][:5]
    assert killed.keys() == expected.keys()
