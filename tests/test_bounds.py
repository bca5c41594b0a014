"""Interval bound propagation: the bounds hold every output of the ball (random and PGD-found points) on every
supported layer type and the shipped architectures, are exact for an affine model, and verified accuracy sits
below PGD's on a trained model with no verified sample broken; unsupported layers are one-line errors."""
import pytest
import torch
import torchattacks
from conftest import MODEL_SHAPES, make_model
from torch import nn
from torch.utils.data import DataLoader

from nni_mrs_plugin import IntervalBounds, evaluate_robustness, interval_bounds
from nni_mrs_plugin.data import load_dataset
from nni_mrs_plugin.models import Normalize
from nni_mrs_plugin.train.fit import fit
from nni_mrs_plugin.train.trainer import AdversarialTrainer

TOLERANCE = 1e-5  # float rounding


class EveryLayer(nn.Module):
    """Conv, BatchNorm, the monotone activations and pools, a residual add, a channel concatenation, a constant
    shift and scale, reshaping and a Linear head."""

    def __init__(self):
        super().__init__()
        self.normalize = Normalize([0.3], [0.4])
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True))
        self.branch = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, groups=2), nn.BatchNorm2d(6), nn.LeakyReLU(0.1))
        self.side = nn.Sequential(nn.Conv2d(6, 4, 1), nn.Tanh())
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(10 * 7 * 7, 32), nn.Sigmoid(),
                                  nn.Dropout(0.5), nn.Linear(32, 10))

    def forward(self, x):
        x = self.stem(self.normalize(x))
        x = torch.relu(x + self.branch(x)) * 0.5 - 0.1
        x = torch.cat([x, self.side(x)], dim=1)
        x = self.pool(x)
        return self.head(x.view(x.size(0), -1).view(-1, 10, 14, 14))


def _randomise_batchnorm(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(-1.5, 1.5)  # negative scales too: the radius goes through |scale|
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _extreme(model, x, eps, k, sign, steps=20):
    """PGD on one logit (up for sign 1, down for -1) inside the ball and [0, 1]: the points bounds can miss."""
    delta = torch.empty_like(x).uniform_(-eps, eps)
    for _ in range(steps):
        delta.requires_grad_(True)
        grad, = torch.autograd.grad(sign * model((x + delta).clamp(0, 1))[:, k].sum(), delta)
        delta = (delta.detach() + eps / 4 * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1)


def _inside(model, x, eps, lower, upper, restarts=8):
    """Every output of random points and of PGD points pushing each logit up and down lies inside the bounds."""
    points = [(x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1) for _ in range(restarts)]
    points += [_extreme(model, x, eps, k, sign) for k in range(lower.shape[1]) for sign in (1, -1)]
    with torch.no_grad():
        for point in points:
            assert (point - x).abs().max() <= eps + 1e-6 and point.min() >= 0 and point.max() <= 1
            out = model(point)
            assert (out >= lower - TOLERANCE).all() and (out <= upper + TOLERANCE).all()
    return points


def test_bounds_hold_every_point_of_the_ball_through_every_supported_layer():
    model = _randomise_batchnorm(EveryLayer())
    x = torch.rand(6, 1, 28, 28)
    for eps in (0.0, 0.01, 0.1):
        lower, upper = interval_bounds(model, x, eps)
        assert lower.shape == upper.shape == (6, 10) and (lower <= upper).all()
        _inside(model, x, eps, lower, upper)
    with torch.no_grad():  # a zero radius gives the output itself
        lower, upper = interval_bounds(model, x, 0.0)
        torch.testing.assert_close(lower, model(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(upper, model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(MODEL_SHAPES))
def test_bounds_hold_on_the_shipped_architectures(name):
    model = make_model(name).eval()
    channels, side = MODEL_SHAPES[name]
    x = torch.rand(2, channels, side, side)
    lower, upper = interval_bounds(model, x, 0.002)
    with torch.no_grad():
        for _ in range(16):
            out = model((x + torch.empty_like(x).uniform_(-0.002, 0.002)).clamp(0, 1))
            slack = TOLERANCE * (1 + upper.abs().max())
            assert (out >= lower - slack).all() and (out <= upper + slack).all()


def test_bounds_are_exact_for_an_affine_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    x, eps = torch.rand(3, 1, 28, 28) * 0.6 + 0.2, 0.05  # no clipping at 0 or 1
    lower, upper = interval_bounds(model, x, eps)
    signs = model[1].weight.sign().view(10, 1, 28, 28)
    with torch.no_grad():
        for k in range(10):  # the worst corners of the box
            torch.testing.assert_close(lower[:, k], model(x - eps * signs[k])[:, k], rtol=0, atol=1e-5)
            torch.testing.assert_close(upper[:, k], model(x + eps * signs[k])[:, k], rtol=0, atol=1e-5)


def test_the_loaders_normalization_gives_the_bounds_of_a_normalising_first_layer():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)).eval()
    x = torch.rand(2, 1, 28, 28)
    inside = interval_bounds(nn.Sequential(Normalize([0.3], [0.4]), body), x, 0.05)
    outside = interval_bounds(body, (x - 0.3) / 0.4, 0.05, normalization=([0.3], [0.4]))
    for a, b in zip(inside, outside):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_verified_accuracy_is_below_pgd_and_no_verified_sample_is_broken():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 4, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32 * 5 * 5, 100), nn.ReLU(), nn.Linear(100, 10))
    train = DataLoader(load_dataset("fashion_mnist", True, subset=4000, seed=0), batch_size=64, shuffle=True)
    test = DataLoader(load_dataset("fashion_mnist", False, subset=200, seed=1), batch_size=100)
    fit(model, train, test, epochs=2, trainer=AdversarialTrainer("pgd", eps=0.02, steps=3), progress=False)
    model.eval()
    eps = 0.01
    result = evaluate_robustness(model, test, attacks=("clean", "pgd20", "ibp"), eps=eps)
    assert 0 < result["ibp"]["accuracy"] <= result["pgd20"]["accuracy"] <= result["clean"]["accuracy"]
    assert result["ibp"]["method"] == "interval bounds (IBP)"
    bounds = IntervalBounds(model)
    for x, y in test:
        verified = bounds.verified(x, y, eps)
        attack = torchattacks.PGD(model, eps=eps, alpha=eps / 10, steps=50, random_start=True)
        for _ in range(3):  # restarts
            adversarial = attack(x[verified], y[verified])
            with torch.no_grad():
                assert (model(adversarial).argmax(1) == y[verified]).all()


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.gate = nn.Conv2d(1, 4, 3), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1))

    def forward(self, x):
        x = self.conv(x)
        return (x * torch.sigmoid(self.gate(x))).flatten(1)


@pytest.mark.parametrize("model, message", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.SiLU()), r"no interval rule for module '1' \(SiLU\)"),
    (Gated(), "product of two input-dependent values"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect")), "pads with 'reflect'"),
])
def test_unsupported_layers_are_one_line_errors(model, message):
    with pytest.raises(ValueError, match=message) as err:
        interval_bounds(model.eval(), torch.rand(1, 1, 8, 8), 0.1)
    assert "\n" not in str(err.value)


def test_a_hooked_module_is_refused_rather_than_bounded_wrongly():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()).eval()
    model[0].register_forward_hook(lambda module, inputs, output: output * 0)
    with pytest.raises(ValueError, match="module '0' has forward hooks that are not interval scales"):
        interval_bounds(model, torch.rand(1, 1, 8, 8), 0.1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()).eval()
    bounds = IntervalBounds(model)
    model[0].register_forward_hook(lambda module, inputs, output: output * 0)  # after tracing: refused all the same
    with pytest.raises(ValueError, match="module '0' has forward hooks that are not interval scales"):
        bounds(torch.rand(1, 1, 8, 8), 0.1)


def test_training_mode_and_bad_eps_are_one_line_errors():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten())
    with pytest.raises(ValueError, match=r"BatchNorm '1' needs running statistics in eval mode"):
        interval_bounds(model.train(), torch.rand(2, 1, 8, 8), 0.1)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        interval_bounds(model.eval(), torch.rand(2, 1, 8, 8), -0.1)


@pytest.mark.slow
def test_the_job_pretrains_and_fine_tunes_by_ibp_and_reports_verified_accuracy(tmp_path):
    from test_pipeline import tiny

    from nni_mrs_plugin import Pipeline

    config = tiny(tmp_path, eval={"attacks": ["clean", "pgd20", "ibp"], "samples": 64},
                  pretrain={"method": "ibp"}, finetune={"method": "ibp"})
    stages = Pipeline(config).run()["stages"]
    evaluated = stages["evaluate"]["pruned"]
    assert 0 <= evaluated["ibp"]["accuracy"] <= evaluated["pgd20"]["accuracy"] <= evaluated["clean"]["accuracy"]
    assert "ibp" in (tmp_path / "run" / "report.md").read_text()


# --- certified training -----------------------------------------------------------------------------------

def test_the_ibp_schedule_ramps_eps_up_and_kappa_down_then_holds():
    objective = AdversarialTrainer("ibp", eps=0.1, ibp={"warmup": 0.1, "ramp": 0.4}).certified
    assert objective.schedule(training=True) == (0.1, 0.5), "before fit says where the run is: the targets"
    for step, (eps, kappa) in {0: (0.0, 1.0), 9: (0.0, 1.0), 30: (0.05, 0.75), 50: (0.1, 0.5), 90: (0.1, 0.5)}.items():
        objective.at_step(step, 100)
        assert objective.schedule(training=True) == pytest.approx((eps, kappa))
        assert objective.schedule(training=False) == (0.1, 0.5), "outside training: the targets"


def test_the_ibp_loss_is_kappa_natural_plus_one_minus_kappa_worst_case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    trainer = AdversarialTrainer("ibp", eps=0.1)
    trainer.certified.at_step(30, 100)  # in training eps 0.05, kappa 0.75; in eval mode the targets 0.1, 0.5
    loss = trainer.loss(model.eval(), x, y)
    lower, upper = interval_bounds(model, x, 0.1)
    worst = upper.clone()
    worst[torch.arange(8), y] = lower[torch.arange(8), y]
    expected = 0.5 * nn.functional.cross_entropy(model(x), y) + 0.5 * nn.functional.cross_entropy(worst, y)
    torch.testing.assert_close(loss, expected)
    assert trainer.certified.step == 30, "an eval-mode loss is no training step"
    model.train()
    trainer.loss(model, x, y).backward()  # training mode: differentiable, BatchNorm on the centre's batch statistics
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert trainer.certified.step == 31


@pytest.mark.slow
def test_ibp_training_raises_verified_accuracy_above_natural_training():
    train = DataLoader(load_dataset("fashion_mnist", True, subset=4000, seed=0), batch_size=64, shuffle=True)
    test = DataLoader(load_dataset("fashion_mnist", False, subset=300, seed=1), batch_size=100)
    verified = {}
    for method in ("natural", "ibp"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 16, 4, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(),
                              nn.Flatten(), nn.Linear(32 * 5 * 5, 100), nn.ReLU(), nn.Linear(100, 10))
        fit(model, train, test, epochs=3, trainer=AdversarialTrainer(method, eps=0.05), lr=0.02, progress=False,
            restore_best=False)
        verified[method] = evaluate_robustness(model.eval(), test, attacks=("ibp",), eps=0.05)["ibp"]["accuracy"]
    assert verified["ibp"] >= verified["natural"] + 0.2, verified


def test_the_job_takes_the_ibp_schedule_from_its_section_and_names_a_bad_key():
    from nni_mrs_plugin.job import build
    from nni_mrs_plugin.job.config import ConfigError, load_config

    config = load_config(None, {"finetune.method": "ibp", "finetune.ibp": {"warmup": 0.0, "ramp": 0.2}})
    objective = build.trainer(config, config.finetune).certified
    assert (objective.warmup, objective.ramp, objective.kappa_end) == (0.0, 0.2, 0.5)
    with pytest.raises(ConfigError, match=r"^finetune\.ibp: ibp: unknown key 'rampup'; the schedule takes warmup"):
        load_config(None, {"finetune.method": "ibp", "finetune.ibp": {"rampup": 0.2}})
    with pytest.raises(ConfigError, match=r"^pretrain\.ibp: ibp \(the certified schedule\) is for method 'ibp'"):
        load_config(None, {"pretrain.ibp": {"ramp": 0.2}})
