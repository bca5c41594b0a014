"""fit: history, best-on-robust checkpoint, kill-and-resume, NaN guard, DDP with 2 gloo processes, and the
headline check that PGD adversarial training buys PGD accuracy that natural training does not."""
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import DEVICES
from nni_mrs_plugin.checkpoint import seal
from nni_mrs_plugin.train.trainer import AdversarialTrainer
from nni_mrs_plugin.data import load_dataset
from nni_mrs_plugin.train.fit import BEST, HISTORY, LAST, fit
from nni_mrs_plugin.models import build_model
from nni_mrs_plugin.evaluate import evaluate_robustness
from nni_mrs_plugin.train.loop import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]
JOB = str(ROOT / "tests" / "scripts" / "fit_job.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def loaders(train: int, val: int, batch: int = 32):
    return (DataLoader(load_dataset("fashion_mnist", True, subset=train, seed=1), batch_size=batch),
            DataLoader(load_dataset("fashion_mnist", False, subset=val, seed=2), batch_size=64))


def small_cnn(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("small_cnn", in_channels=1)


def test_fit_logs_epochs_checkpoints_and_restores_the_best_robust_weights(tmp_path):
    train, val = loaders(192, 64)
    model = small_cnn()
    result = fit(model, train, val, epochs=2, trainer=AdversarialTrainer("fast", eps=0.1), checkpoint_dir=tmp_path,
                 val_steps=2, progress=False)
    assert [row["epoch"] for row in result.history] == [1, 2]
    for row in result.history:
        assert {"train_loss", "lr", "seconds", "samples_per_s", "clean_acc", "pgd_acc", "val_samples"} <= set(row)
        assert row["val_samples"] == 64 and 0 <= row["pgd_acc"] <= 1
    accs = [row["pgd_acc"] for row in result.history]
    assert result.best_epoch == 1 + accs.index(max(accs)) and result.best_robust_accuracy == max(accs)
    best = torch.load(tmp_path / BEST, weights_only=True)
    assert best["epoch"] == result.best_epoch
    assert all(torch.equal(best["model"][k], v) for k, v in model.state_dict().items()), "model != best weights"
    last = torch.load(tmp_path / LAST, weights_only=True)
    assert last["epoch"] == 2 and last["history"] == result.history
    assert json.loads((tmp_path / HISTORY).read_text())["history"] == result.history
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"


@pytest.mark.parametrize("device", DEVICES)
def test_fit_with_bf16_and_channels_last_on_device(device, tmp_path):
    train, val = loaders(96, 64)
    model = small_cnn()
    trainer = AdversarialTrainer("mart", eps=0.1, steps=2, amp=True, channels_last=True)
    result = fit(model, train, val, epochs=1, trainer=trainer, device=device, checkpoint_dir=tmp_path,
                 val_steps=2, progress=False)
    assert next(model.parameters()).device.type == device
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    row = result.history[0]
    assert torch.isfinite(torch.tensor(row["train_loss"])) and row["val_samples"] == 64
    assert torch.load(tmp_path / LAST, weights_only=True)["config"]["trainer"]["amp"] is True


@pytest.mark.parametrize("device", DEVICES)
def test_interrupted_fit_resumes_on_its_device(device, tmp_path):
    """A checkpoint is loaded onto the training device: its RNG states must still reach torch as CPU byte tensors
    (on CUDA this once failed with 'RNG state must be a torch.ByteTensor')."""
    train, _ = loaders(64, 32)
    trainer = AdversarialTrainer("fast", eps=0.1)
    fit(small_cnn(), train, epochs=2, trainer=trainer, device=device, checkpoint_dir=tmp_path, progress=False)
    last = torch.load(tmp_path / LAST, weights_only=True)
    last["epoch"], last["history"] = 1, last["history"][:1]  # as if killed after the first epoch
    torch.save(seal({k: v for k, v in last.items() if k != "sha256"}), tmp_path / LAST)
    result = fit(small_cnn(), train, epochs=2, trainer=trainer, device=device, checkpoint_dir=tmp_path,
                 resume=True, progress=False)
    assert [row["epoch"] for row in result.history] == [1, 2]


def test_nan_loss_stops_with_an_error_naming_epoch_and_step(tmp_path):
    base = load_dataset("fashion_mnist", True, subset=128, seed=1)
    x = torch.stack([base[i][0] for i in range(128)])
    y = torch.tensor([base[i][1] for i in range(128)])
    x[77] = float("nan")  # one poisoned image; the batch holding it is known from the sampler's order
    order = torch.randperm(128, generator=torch.Generator().manual_seed(5 + 1)).tolist()  # seed + epoch 1
    step = order.index(77) // 32
    with pytest.raises(NonFiniteLossError, match=rf"at epoch 1, step {step} "):
        fit(small_cnn(), DataLoader(TensorDataset(x, y), batch_size=32), epochs=2, seed=5,
            trainer=AdversarialTrainer("pgd", eps=0.1, steps=1), checkpoint_dir=tmp_path, progress=False)
    assert not (tmp_path / LAST).exists(), "no checkpoint may be written for a diverged epoch"


@pytest.mark.parametrize("kwargs,message", [
    ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
    ({"resume": True}, "resume=True needs checkpoint_dir"),
    ({"val_steps": 0}, "val_steps must be an integer >= 1"),
    ({"lr": -1.0}, "lr must be > 0, got -1.0"),
    ({"ema": 1.5}, "ema must be a decay in (0, 1), e.g. 0.999, got 1.5"),
    ({"lr_schedule": "step"}, "unknown lr_schedule 'step'; choose one of cosine, onecycle"),
    ({"collapse_retries": -1}, "collapse_retries must be an integer >= 0 (0: no collapse guard), got -1"),
])
def test_fit_bad_input_is_one_clear_value_error(kwargs, message):
    train, _ = loaders(64, 64)
    with pytest.raises(ValueError) as info:
        fit(small_cnn(), train, **{"progress": False, **kwargs})
    assert message in str(info.value)


def test_resume_refuses_a_checkpoint_made_with_other_settings(tmp_path):
    train, _ = loaders(64, 64)
    trainer = AdversarialTrainer("pgd", eps=0.1, steps=1)
    fit(small_cnn(), train, epochs=1, trainer=trainer, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="made with epochs=1, this call has epochs=3"):
        fit(small_cnn(), train, epochs=3, trainer=trainer, checkpoint_dir=tmp_path, resume=True, progress=False)


def test_ema_is_the_closed_form_of_the_steps_weights_what_fit_returns_and_resumes_exactly(tmp_path):
    """e_1 = w_1, e_k = d e_(k-1) + (1 - d) w_k over weights and BatchNorm statistics; the model fit leaves and
    best.pt hold it; a run stopped after an epoch and resumed ends with the same average."""
    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3), torch.nn.BatchNorm1d(3))

    data = TensorDataset(torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,)))
    loader = DataLoader(data, batch_size=8)  # one optimizer step per epoch
    decay, trained, raw = 0.6, model(), []
    fit(trained, loader, None, 4, AdversarialTrainer("natural"), ema=decay, restore_best=False, progress=False,
        checkpoint_dir=tmp_path / "a", on_epoch=lambda row: raw.append(
            {k: v.clone() for k, v in trained.state_dict().items() if v.is_floating_point()}))
    expected = raw[0]
    for weights in raw[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
    assert not torch.allclose(expected["1.weight"], raw[-1]["1.weight"])  # the average is not the last weights
    for source in (trained.state_dict(), torch.load(tmp_path / "a" / BEST, weights_only=True)["model"]):
        for key, value in expected.items():
            assert torch.allclose(source[key], value, atol=1e-6), key

    class Stop(Exception):
        pass

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(model(), loader, None, 4, AdversarialTrainer("natural"), ema=decay, restore_best=False, progress=False,
            checkpoint_dir=tmp_path / "b", on_epoch=stop_after_two)
    resumed = model()
    fit(resumed, loader, None, 4, AdversarialTrainer("natural"), ema=decay, restore_best=False, progress=False,
        checkpoint_dir=tmp_path / "b", resume=True)
    for key, value in trained.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    with pytest.warns(UserWarning, match="ema=0.999 averages over about 1000 steps, but the run has 4"):
        fit(model(), loader, None, 4, AdversarialTrainer("natural"), ema=0.999, progress=False)
    with pytest.raises(ValueError, match="made with ema=0.6, this call has ema=None"):
        fit(model(), loader, None, 4, AdversarialTrainer("natural"), progress=False, checkpoint_dir=tmp_path / "b",
            resume=True)


def test_onecycle_warms_up_then_anneals_and_resumes_on_its_schedule(tmp_path):
    from nni_mrs_plugin.train.loop import scheduled_sgd

    optimizer, schedule = scheduled_sgd(torch.nn.Linear(2, 2), 0.1, 100, schedule="onecycle")
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    peak = max(range(100), key=rates.__getitem__)
    assert rates[0] == pytest.approx(0.1 / 25) and rates[peak] == pytest.approx(0.1, rel=1e-3) and 25 <= peak <= 35
    assert all(a <= b for a, b in zip(rates[:peak], rates[1:peak + 1]))  # warm-up
    assert all(a >= b for a, b in zip(rates[peak:], rates[peak + 1:])) and rates[-1] < 0.001  # annealing
    data = TensorDataset(torch.rand(16, 1, 4, 4), torch.randint(0, 3, (16,)))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    result = fit(model, DataLoader(data, batch_size=4), None, 3, AdversarialTrainer("natural"), progress=False,
                 lr_schedule="onecycle", checkpoint_dir=tmp_path)
    lrs = [row["lr"] for row in result.history]
    assert lrs[0] > lrs[1] > lrs[2]  # after the warm-up in epoch 1, each epoch ends lower
    with pytest.raises(ValueError, match="made with lr_schedule='onecycle', this call has lr_schedule='cosine'"):
        fit(model, DataLoader(data, batch_size=4), None, 3, AdversarialTrainer("natural"), progress=False,
            checkpoint_dir=tmp_path, resume=True)


class Fragile(torch.nn.Module):
    """A linear classifier that goes dead (constant logits, so no gradient ever again) once its weights' norm
    passes ``limit``: a collapse a large learning rate causes and a smaller one avoids."""

    def __init__(self, limit: float = 3.0):
        super().__init__()
        self.linear, self.limit = torch.nn.Linear(16, 4), limit
        with torch.no_grad():  # right from the start, with little confidence
            self.linear.weight.copy_(0.1 * (torch.eye(4).repeat_interleave(4, dim=1) - 0.25))
            self.linear.bias.zero_()

    def forward(self, x):
        logits = self.linear(x.flatten(1))
        return logits * 0 if self.linear.weight.norm() > self.limit else logits


def fragile_data() -> DataLoader:
    y = torch.arange(4).repeat(32)
    x = 0.5 * torch.eye(4).repeat_interleave(4, dim=1)[y] + 0.25 + 0.15 * torch.rand(
        128, 16, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, y), batch_size=32)


def test_collapse_guard_rolls_back_halves_the_learning_rate_and_gives_up_in_one_line(tmp_path, capsys):
    from nni_mrs_plugin.train.fit import TrainingCollapsedError

    data, natural = fragile_data(), AdversarialTrainer("natural")
    model = Fragile()
    result = fit(model, data, data, 2, natural, lr=2.0, weight_decay=0, progress=False, checkpoint_dir=tmp_path / "a",
                 collapse_retries=2)
    first = result.history[0]
    assert first["collapse_retries"] == 2 and first["lr_scale"] == 0.25 and first["clean_acc"] == 1.0
    assert "fit: epoch 1 collapsed (validation clean accuracy 25.0% at chance (25.0%)); back to epoch 0, learning " \
           "rate x 0.25" in capsys.readouterr().out
    assert model.linear.weight.norm() <= model.limit and result.history[1]["clean_acc"] == 1.0
    assert torch.load(tmp_path / "a" / LAST, weights_only=True)["optimizer"]["param_groups"][0]["initial_lr"] == 0.5

    model, start = Fragile(), Fragile().state_dict()
    with pytest.raises(TrainingCollapsedError) as info:
        fit(model, data, data, 2, natural, lr=4.0, weight_decay=0, progress=False, checkpoint_dir=tmp_path / "b",
            collapse_retries=2)
    assert str(info.value) == (f"fit: epoch 1 collapsed (validation clean accuracy 25.0% at chance (25.0%)) 3 times, "
                               f"the last with the learning rate x 0.25; {tmp_path / 'b' / LAST} holds epoch 0: lower "
                               f"lr or use a multi-step method")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start.items())  # the last good state
    unguarded = fit(Fragile(), data, data, 1, natural, lr=2.0, weight_decay=0, progress=False, collapse_retries=0)
    assert unguarded.history[0]["clean_acc"] == 0.25
    at_chance = fit(Fragile(limit=0.1), data, None, 1, natural, lr=2.0, progress=False, collapse_retries=2)  # dead from the start
    assert "collapse_retries" not in at_chance.history[0]  # nothing to protect: the guard stays off


def without_timing(history: list) -> list:
    return [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_s")} for row in history]


def run_job(out: Path, *args: str, processes: int = 1) -> subprocess.CompletedProcess:
    """fit_job.py alone, or under torchrun with ``processes`` gloo workers."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [sys.executable, *(launcher if processes > 1 else []), JOB, "--out", str(out), *args]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pgd", "rslad", "ibp"])  # ibp: its eps/kappa schedule resumes where it was
def test_kill_and_resume_gives_the_uninterrupted_state(tmp_path, method):
    job = ["--epochs", "3", "--train", "256", "--steps", "2", "--method", method]
    run_job(tmp_path / "reference", *job)

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, JOB, "--out", str(killed), *job], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (killed / LAST).exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)  # during epoch 2: the first checkpoint has just appeared
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert torch.load(killed / LAST, weights_only=True)["epoch"] < 3, "killed too late to test anything"
    run_job(killed, *job, "--resume")

    reference = torch.load(tmp_path / "reference" / LAST, weights_only=True)
    resumed = torch.load(killed / LAST, weights_only=True)
    assert resumed["epoch"] == reference["epoch"] == 3
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed["model"][key]), f"{key} differs after resume"
    for index, state in reference["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], resumed["optimizer"]["state"][index]["momentum_buffer"])
    assert reference["schedule"] == resumed["schedule"]
    assert without_timing(reference["history"]) == without_timing(resumed["history"])


@pytest.mark.slow
def test_ddp_with_two_gloo_processes_matches_one_process(tmp_path):
    # Without BatchNorm and random attack starts, 2 processes x 16 samples == 1 process x 32, to float precision.
    exact = ["--model", "plain_cnn", "--method", "natural", "--epochs", "2"]
    run_job(tmp_path / "one", *exact)
    run_job(tmp_path / "two", *exact, processes=2)
    spec = importlib.util.spec_from_file_location("fit_job", JOB)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    torch.manual_seed(0)  # fit_job.py's seed before building the model
    initial = job.plain_cnn().state_dict()
    one = torch.load(tmp_path / "one" / "final_rank0.pt")
    rank0 = torch.load(tmp_path / "two" / "final_rank0.pt")
    rank1 = torch.load(tmp_path / "two" / "final_rank1.pt")
    for key, value in one.items():
        assert torch.equal(rank0[key], rank1[key]), "DDP ranks diverged"
        torch.testing.assert_close(rank0[key], value, rtol=1e-4, atol=1e-5)
        assert (value - initial[key]).abs().max() > 100 * 1e-5, f"{key} hardly trained: the comparison is empty"

    # PGD training with BatchNorm: the same up to batch-statistics and random-start noise (measured: final
    # train loss 1.24 vs 1.20, PGD accuracy 50.8% vs 49.2% on 128 images), and rank 0 alone logs.
    pgd = ["--epochs", "2", "--train", "512", "--val", "128"]
    run_job(tmp_path / "pgd1", *pgd)
    two = run_job(tmp_path / "pgd2", *pgd, processes=2)
    assert two.stdout.count("fit epoch 2/2") == 1, "only rank 0 may log"
    single = json.loads((tmp_path / "pgd1" / "result_rank0.json").read_text())["history"]
    double = json.loads((tmp_path / "pgd2" / "result_rank0.json").read_text())["history"]
    rank1_history = json.loads((tmp_path / "pgd2" / "result_rank1.json").read_text())["history"]
    assert without_timing(double) == without_timing(rank1_history), "ranks must agree on the metrics"
    rank0 = torch.load(tmp_path / "pgd2" / "final_rank0.pt")
    rank1 = torch.load(tmp_path / "pgd2" / "final_rank1.pt")
    assert all(torch.equal(value, rank1[key]) for key, value in rank0.items()), "weights or BN statistics differ"
    assert double[-1]["train_loss"] < double[0]["train_loss"] - 0.3, "the 2-process run did not learn"
    assert abs(single[-1]["train_loss"] - double[-1]["train_loss"]) < 0.2
    assert abs(single[-1]["pgd_acc"] - double[-1]["pgd_acc"]) < 0.15
    assert abs(single[-1]["clean_acc"] - double[-1]["clean_acc"]) < 0.15


@pytest.mark.slow
def test_pgd_training_beats_natural_training_on_pgd_accuracy():
    """Measured before asserting with this exact procedure (2,000 training images, 2 epochs, eps 0.1, PGD-3
    training, PGD-10 on 500 test images), varying model init, training subset, test subset and fit seed together
    over 4 seeds: natural 0.392 / 0.270 / 0.288 / 0.384, PGD training 0.598 / 0.536 / 0.590 / 0.552 (clean
    0.72-0.81). The smallest gap is 0.17; the assertion asks for 0.08. This test runs the first setting."""
    train, _ = loaders(2000, 64, batch=64)
    test = DataLoader(load_dataset("fashion_mnist", False, subset=500, seed=0), batch_size=100)
    robust = {}
    for method in ("natural", "pgd"):
        model = small_cnn(seed=0)
        fit(model, train, epochs=2, trainer=AdversarialTrainer(method, eps=0.1, steps=3), seed=0, progress=False)
        result = evaluate_robustness(model, test, ("clean", "pgd10"), eps=0.1)
        assert result["clean"]["accuracy"] > 0.6
        robust[method] = result["pgd10"]["accuracy"]
    assert robust["pgd"] > robust["natural"] + 0.08, robust


def test_a_cuda_device_this_machine_lacks_is_a_one_line_error(tmp_path):
    """``fit(device="cuda:N")`` with N past the machine's devices (none on CPU machines): a one-line error naming
    the device, not torch's "invalid device ordinal" from the first CUDA call, and nothing written."""
    missing = f"cuda:{torch.cuda.device_count()}"
    data = TensorDataset(torch.rand(8, 1, 28, 28), torch.arange(8) % 10)
    with pytest.raises(ValueError) as info:
        fit(build_model("small_cnn"), DataLoader(data, batch_size=4), DataLoader(data, batch_size=4), 1,
            AdversarialTrainer("fast", eps=0.1), device=missing, checkpoint_dir=tmp_path / "run", progress=False)
    assert missing in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(out: Path, *args: str) -> list:
    """fit_job.py as two torchrun nodes (one process each) meeting at a c10d rendezvous on loopback."""
    port, run_id = free_port(), f"nodes-{os.getpid()}-{time.time_ns()}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id, JOB,
               "--out", str(out), *args]
    out.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen(command, env=ENV, stdout=open(out / f"node{i}.log", "w"), stderr=subprocess.STDOUT,
                             start_new_session=True) for i in range(2)]


def kill_node(agent: subprocess.Popen) -> None:
    """SIGKILL a torchrun node whole: its workers run in sessions of their own, so the agent's group is not enough."""
    workers = [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat")
               if _parent(stat) == agent.pid]
    for pid in (agent.pid, *workers):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _parent(stat: Path) -> int:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


@pytest.mark.slow
def test_two_nodes_on_loopback_match_one_process_and_a_lost_node_stops_the_other_without_a_hang(tmp_path):
    exact = ["--model", "plain_cnn", "--method", "natural", "--epochs", "2"]
    run_job(tmp_path / "one", *exact)
    nodes = two_nodes(tmp_path / "nodes", *exact)
    for node in nodes:
        assert node.wait(timeout=600) == 0, (tmp_path / "nodes" / "node0.log").read_text()[-3000:]
    one = torch.load(tmp_path / "one" / "final_rank0.pt")
    for rank in (0, 1):
        weights = torch.load(tmp_path / "nodes" / f"final_rank{rank}.pt")
        for key, value in one.items():
            torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-5)

    # one node killed (agent and worker) mid-run: the other exits with an error within a bounded time
    nodes = two_nodes(tmp_path / "lost", "--model", "plain_cnn", "--method", "pgd", "--epochs", "500", "--train", "2048")
    try:
        deadline = time.time() + 300
        while not (tmp_path / "lost" / LAST).exists() and time.time() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "lost" / LAST).exists(), "training never started"
        kill_node(nodes[1])
        started = time.time()
        code = nodes[0].wait(timeout=180)  # a hang fails here
    finally:
        for node in nodes:
            kill_node(node)
    log = (tmp_path / "lost" / "node0.log").read_text()
    assert code != 0 and time.time() - started < 180
    assert not list((tmp_path / "lost").glob("final_rank*.pt")), "the killed run finished: the kill came too late"
    assert any(word in log for word in ("Connection", "closed", "failed")), log[-3000:]
