"""``HARPPruner`` (nni_mrs_plugin/harp): learned rates meet the budget after real removal, a robustness-critical unit
learns to keep more than uniform ratios give it, a killed run resumes, and bad options are one-line errors."""
import copy

import pytest
import torch
from conftest import DEVICES, MODEL_SHAPES, dummy_input, make_model
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nni_mrs_plugin import IntervalBounds, get_pruner, interval_bounds
from nni_mrs_plugin.evaluate import count_flops
from nni_mrs_plugin.harp import HARPPruner
from nni_mrs_plugin.harp.gates import ChannelGates
from nni_mrs_plugin.budget.units import Unit
from nni_mrs_plugin.host.speedup import speedup_model
from nni_mrs_plugin.train.trainer import AdversarialTrainer

CONFIG = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.6}]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(MODEL_SHAPES))
def test_learned_rates_meet_the_budget_after_real_removal(name, device):
    model = make_model(name).to(device)
    x, y = dummy_input(name, batch=16, device=device), (torch.arange(16) % 10).to(device)
    before = count_flops(copy.deepcopy(model), x[:1])
    pruner = HARPPruner(model, CONFIG, train_data=(x, y), steps=4, attack_steps=2, progress=False)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    speedup_model(model, masks, x[:1])
    removed = 1 - count_flops(model, x[:1]) / before
    assert pruner.allocation.rule == "harp" and len(pruner.history["history"]) == 4
    assert abs(removed - 0.6) <= 0.01, (removed, pruner.allocation.table())
    assert model(x).shape == (16, 10) and all(m["weight"].device.type == device for m in masks.values())


def test_removal_keeps_every_input_that_a_kept_channel_computes():
    """HARP on SmallCNN with round_to='auto' leaves a weight column of the Linear after the flatten whose kept rows
    sum to 0.0 in fp32 on NNI's random batch, and NNI took the input position it reads as pruned: the removed
    Linear read 1959 inputs of the 1960 the convolution still computes, and compress() stopped. The position a
    kept channel computes stays (host/masks.py), so the learned masks are removed for real."""
    model = make_model("small_cnn")
    x, y = dummy_input("small_cnn", batch=16), torch.arange(16) % 10
    pruner = HARPPruner(model, CONFIG, train_data=(x, y), steps=4, attack_steps=2, progress=False, round_to="auto")
    _, masks = pruner.compress()
    pruner.unwrap_model()
    speedup_model(model, masks, x[:1])
    assert model.classifier[1].in_features == model.features[10].out_channels * 7 * 7 < 64 * 7 * 7
    assert model(x).shape == (16, 10)


class CriticalAndDead(nn.Module):
    """Two branches of equal cost; the head reads only ``critical`` (its weights on ``dead`` are zero)."""

    def __init__(self):
        super().__init__()
        self.critical = nn.Conv2d(1, 16, 5, stride=2, padding=2)
        self.dead = nn.Conv2d(1, 16, 5, stride=2, padding=2)
        self.head = nn.Linear(512, 10)

    def forward(self, x):
        features = [nn.functional.adaptive_avg_pool2d(torch.relu(branch(x)), 4).flatten(1)
                    for branch in (self.critical, self.dead)]
        return self.head(torch.cat(features, 1))


def test_a_robustness_critical_unit_learns_to_keep_more_than_uniform(fashion):
    torch.manual_seed(0)
    model = CriticalAndDead()
    with torch.no_grad():
        model.head.weight[:, 256:] = 0
    optimizer = torch.optim.Adam([*model.critical.parameters(), *model.head.parameters()], lr=0.01)
    trainer = AdversarialTrainer("pgd", eps=0.1, steps=3)
    for _ in range(3):  # adversarial training: now each critical channel lowers the adversarial loss
        for x, y in fashion:
            optimizer.zero_grad()
            trainer.loss(model, x, y).backward()
            model.head.weight.grad[:, 256:] = 0
            optimizer.step()
    config = [{"op_names": ["critical", "dead"], "sparse_ratio": 0.5}]
    pruner = HARPPruner(model, config, train_data=fashion, trainer=trainer, steps=40, lr=0.05, progress=False)
    pruner.compress()
    pruner.unwrap_model()
    ratio = {row.unit: row.ratio for row in pruner.allocation.report}
    rates = pruner.history["rates"]
    assert rates["critical"] > rates["dead"], rates
    assert ratio["critical"] < 0.5 < ratio["dead"], ratio  # uniform ratios would prune both by half
    assert abs(pruner.allocation.achieved - 0.5) <= 0.01


def test_a_killed_run_resumes_at_its_last_stage_and_ends_as_the_uninterrupted_run(tmp_path, calibration):
    # 3 shuffled batches a pass: the kill after step 4 falls in the second pass, one batch into it. The loader
    # shuffles from its own generator (as the job's does), made afresh for each run as a new process would
    path = tmp_path / "harp.pt"

    def run(steps, checkpoint=path, **kw):
        torch.manual_seed(0)
        data = DataLoader(TensorDataset(calibration[0][:24], calibration[1][:24]), batch_size=8, shuffle=True,
                          generator=torch.Generator().manual_seed(5))
        model = make_model("small_cnn")
        pruner = HARPPruner(model, CONFIG, train_data=data, steps=steps, stages=4, attack_steps=2, progress=False,
                            checkpoint=checkpoint, **kw)
        pruner.compress()
        return pruner

    class Killed(Exception):
        pass

    full = run(8, checkpoint=tmp_path / "other.pt")
    calls = {"n": 0}
    original = AdversarialTrainer.loss

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # after the stages ending at steps 2 and 4 were saved
            raise Killed()
        return original(self, *args, **kwargs)

    AdversarialTrainer.loss = dying
    try:
        with pytest.raises(Killed):
            run(8)
    finally:
        AdversarialTrainer.loss = original
    saved = torch.load(path, weights_only=False)
    assert saved["state"]["step"] == 4
    resumed = run(8)
    assert [h["step"] for h in resumed.history["history"]] == [2, 4, 6, 8]
    assert resumed.history == full.history  # rates and losses at every stage, exactly
    assert resumed.allocation.report == full.allocation.report
    with pytest.raises(ValueError, match="other settings"):
        run(8, lr=0.5)


@pytest.mark.parametrize("options, message", [
    ({"config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 1.5}]}, "sparse_ratio must be in \\(0, 1\\)"),
    ({"config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.0}]}, "sparse_ratio must be in \\(0, 1\\)"),
    ({"trainer": "adversarial"}, "unknown method 'adversarial'"),
    ({"steps": -3}, "steps must be a positive integer, got -3"),
    ({"epochs": 0}, "epochs must be a positive integer, got 0"),
    ({"gamma": -1.0}, "gamma must be a positive number"),
    ({"budget": "latency"}, "unknown budget 'latency'"),
    ({"train_data": None}, "learns its rates by training"),
    ({"train_data": torch.zeros(3)}, "train_data must be a DataLoader"),
    ({"start": "full"}, "start must be 'uniform' or 'dense', got 'full'"),
])
def test_bad_options_are_one_line_errors(options, message):
    model = make_model("small_cnn")
    kwargs = {"config_list": CONFIG, "train_data": (torch.rand(4, 1, 28, 28), torch.arange(4))}
    kwargs.update(options)
    config_list = kwargs.pop("config_list")
    with pytest.raises(ValueError, match=message) as err:
        HARPPruner(model, config_list, progress=False, **kwargs)
    assert "\n" not in str(err.value)


def test_straight_through_gradients_reach_scores_and_rates():
    unit = Unit("conv", ("conv",), channels=8)
    gates = ChannelGates([unit], {"conv": 0.55}, {"conv": torch.arange(8.0) + 1})
    mask = gates.mask(0)
    assert mask.tolist() == pytest.approx([0, 0, 0, 0.4, 1, 1, 1, 1], abs=1e-3)  # 4.4 channels: 4 and 0.4 of the next
    (mask * torch.arange(8.0)).sum().backward()
    assert gates.scores[0].grad.flatten().tolist() == list(range(8))
    # the rate's gradient: 8 x g of the partial channel (channel 3: 3), through the sigmoid between the bounds
    sigmoid = torch.sigmoid(gates.logits[0].detach()).item()
    span = gates.high["conv"] - gates.low["conv"]
    assert gates.logits[0].grad.item() == pytest.approx(8 * 3 * span * sigmoid * (1 - sigmoid), rel=1e-4)


def test_registered_by_name():
    assert get_pruner("harp") is HARPPruner
    from nni.compression.pruning import HARPPruner as exposed
    assert exposed is HARPPruner


def test_the_reference_schedule_starts_dense_and_raises_gamma_by_its_step_each_stage_until_the_budget_is_met():
    model = make_model("small_cnn")
    x, y = dummy_input("small_cnn", batch=16), torch.arange(16) % 10
    before = count_flops(copy.deepcopy(model), x[:1])
    assert HARPPruner.REFERENCE == {"epochs": 20, "stages": 20, "gamma": 0.01, "start": "dense"}
    options = {**HARPPruner.REFERENCE, "steps": 6, "stages": 6}  # six stages of one step: a short run
    pruner = HARPPruner(model, CONFIG, train_data=(x, y), attack_steps=1, progress=False, **options)
    _, masks = pruner.compress()
    history = pruner.history["history"]
    first = history[0]["rates"]
    assert sum(first.values()) / len(first) > 0.9  # one step from every rate at 1.0
    gammas = [row["gamma"] for row in history]
    assert gammas[0] == 0.01 and all(b - a == pytest.approx(0.01) or b == a for a, b in zip(gammas, gammas[1:]))
    pruner.unwrap_model()
    speedup_model(model, masks, x[:1])
    assert abs(1 - count_flops(model, x[:1]) / before - 0.6) <= 0.01  # the end meets the budget all the same


def test_gates_are_bounded_as_scaled_layers_so_harp_learns_under_ibp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    gates = ChannelGates([Unit("0", ("0",), channels=8)], {"0": 0.55}, {"0": torch.arange(8.0) + 1})
    scaled = copy.deepcopy(model)  # the gate as weights: each output channel times its mask value
    with torch.no_grad():
        mask = gates.mask(0)
        scaled[0].weight *= mask.view(-1, 1, 1, 1)
        scaled[0].bias *= mask
    gates.attach(model)
    x = torch.rand(4, 1, 8, 8)
    lower, upper = IntervalBounds(model, training=True)(x, 0.1)
    expected = interval_bounds(scaled, x, 0.1)
    assert torch.allclose(lower, expected[0], atol=1e-5) and torch.allclose(upper, expected[1], atol=1e-5)
    (upper - lower).sum().backward()  # the bounds' width reaches the scores and the rate
    assert gates.scores[0].grad.abs().sum() > 0 and gates.logits[0].grad.abs() > 0
    gates.detach()

    model = make_model("small_cnn")
    x, y = dummy_input("small_cnn", batch=16), torch.arange(16) % 10
    before = count_flops(copy.deepcopy(model), x[:1])
    pruner = HARPPruner(model, CONFIG, train_data=(x, y), trainer=AdversarialTrainer("ibp", eps=0.1), steps=4,
                        progress=False)
    _, masks = pruner.compress()
    first, last = pruner.history["history"][0]["rates"], pruner.history["history"][-1]["rates"]
    assert first != last and all(torch.isfinite(torch.tensor(row["loss"])) for row in pruner.history["history"])
    pruner.unwrap_model()
    speedup_model(model, masks, x[:1])
    assert abs(1 - count_flops(model, x[:1]) / before - 0.6) <= 0.01
