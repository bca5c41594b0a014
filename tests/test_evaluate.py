"""evaluate_robustness: every attack via torchattacks, counts and seeds, AutoAttack subset, JSON, bad input."""
import json
import time

import pytest
import torch
from torch.utils.data import DataLoader

from nni_mrs_plugin.data import load_dataset
from nni_mrs_plugin.models import build_model
from nni_mrs_plugin.evaluate import ATTACKS, evaluate_robustness
from nni_mrs_plugin.train.loop import train_natural


@pytest.fixture(scope="module")
def trained():
    """A small CNN after one short natural epoch on real Fashion-MNIST, and 48 test images."""
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1)
    train = DataLoader(load_dataset("fashion_mnist", True, subset=768, seed=1), batch_size=64, shuffle=True)
    train_natural(model, train, 1, progress=False)
    return model, DataLoader(load_dataset("fashion_mnist", False, subset=48, seed=2), batch_size=16)


@pytest.mark.slow
def test_all_attacks_with_counts_seeds_and_autoattack_subset(trained):
    model, loader = trained
    model.train()  # evaluate_robustness attacks in eval mode and restores the caller's mode
    marker = torch.get_rng_state()
    result = evaluate_robustness(model, loader, eps=0.3, cw_steps=10, autoattack_samples=10, seed=7)
    assert model.training
    assert torch.equal(marker, torch.get_rng_state()), "the caller's random stream must be untouched"
    assert json.loads(json.dumps(result)) == result
    assert set(ATTACKS) <= set(result) and result["settings"]["samples"] == 48
    clean = result["clean"]
    assert clean["samples"] == 48 and clean["accuracy"] == clean["correct"] / 48 and clean["accuracy"] > 0.4
    for name in ("fgsm", "pgd20", "cw"):
        assert result[name]["samples"] == 48 and result[name]["seed"] == 7
        assert result[name]["attack"].startswith("torchattacks.")
        assert result[name]["correct"] <= clean["correct"]
    assert result["pgd20"]["params"]["steps"] == 20 and result["pgd20"]["params"]["alpha"] == pytest.approx(0.075)
    assert result["pgd20"]["accuracy"] < clean["accuracy"]  # eps = 0.3 breaks an undefended model
    auto = result["autoattack"]
    assert auto["subset"] is True and auto["samples"] == 10 and auto["of"] == 48
    assert "subset" in auto["note"] and auto["params"]["version"] == "standard"
    assert "L2" in result["cw"]["note"]


def test_same_seed_same_result_and_full_autoattack_is_not_a_subset(trained):
    model, loader = trained
    seconds, started = {}, time.perf_counter()
    first = evaluate_robustness(model, loader, ("clean", "pgd5", "autoattack"), eps=0.3, max_samples=20, seed=3,
                                seconds=seconds)
    wall = time.perf_counter() - started
    again = evaluate_robustness(model, loader, ("clean", "pgd5", "autoattack"), eps=0.3, max_samples=20, seed=3)
    assert first == again  # the wall times go to `seconds`, not into the result
    assert set(seconds) == {"clean", "pgd5", "autoattack"} and all(s > 0 for s in seconds.values())
    assert sum(seconds.values()) <= wall  # each attack's own time, none counted twice
    assert first["autoattack"]["subset"] is False and first["autoattack"]["samples"] == 20
    assert first["pgd5"]["samples"] == 20


@pytest.mark.parametrize("kwargs,message", [
    ({"attacks": ("clean", "square")}, "unknown attack 'square'; choose from clean, fgsm, pgd20, cw, autoattack"),
    ({"attacks": ("pgd0",)}, "unknown attack 'pgd0'"),
    ({"attacks": "pgd20"}, "non-empty sequence"),
    ({"attacks": ("clean", "clean")}, "twice"),
    ({"eps": -0.01}, "eps must be an L-inf radius in [0, 1]"),
    ({"autoattack_samples": 0}, "autoattack_samples must be >= 1"),
])
def test_bad_input_is_one_clear_value_error(trained, kwargs, message):
    model, loader = trained
    with pytest.raises(ValueError) as info:
        evaluate_robustness(model, loader, **kwargs)
    assert message in str(info.value)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_a_cpu_model_is_evaluated_on_the_requested_device(trained):
    """compare/eval load checkpoints on the CPU and pass the config's device: the model must follow the data."""
    model, loader = trained
    cpu = evaluate_robustness(model, loader, ("clean", "pgd5"), eps=0.1, max_samples=32, seed=3)
    model.cpu()
    result = evaluate_robustness(model, loader, ("clean", "pgd5"), eps=0.1, max_samples=32, seed=3, device="cuda")
    assert next(model.parameters()).device.type == "cuda"
    assert result["clean"]["correct"] == cpu["clean"]["correct"]
    assert abs(result["pgd5"]["correct"] - cpu["pgd5"]["correct"]) <= 2  # other kernels, other rounding
    model.cpu()


def test_autoattack_says_what_runs_and_on_how_many_samples(trained, capsys):
    """With progress, AutoAttack gets a line per batch and a bar over its stages; the accuracy is unchanged."""
    model, loader = trained
    quiet = evaluate_robustness(model, loader, ["autoattack"], eps=0.1, autoattack_samples=6)
    capsys.readouterr()
    loud = evaluate_robustness(model, loader, ["autoattack"], eps=0.1, autoattack_samples=6, progress=True)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "autoattack: samples 1-6 (APGD -> APGDT -> FAB -> Square)" in text, text
    assert "samples still robust" in text
    assert loud["autoattack"]["accuracy"] == quiet["autoattack"]["accuracy"]
    evaluate_robustness(model, loader, ["autoattack"], eps=0.1, autoattack_samples=6)
    assert "autoattack: samples" not in "".join(capsys.readouterr())


def test_a_device_this_machine_lacks_is_a_one_line_error(trained):
    """``evaluate_robustness(device="cuda:N")`` past the machine's GPUs (any CUDA device on a CPU machine)."""
    model, loader = trained
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ValueError) as info:
        evaluate_robustness(model, loader, ["clean"], device=missing)
    assert missing in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="got 'gpu0'"):
        evaluate_robustness(model, loader, ["clean"], device="gpu0")
