"""The adversarial trainer: losses against hand computation, BatchNorm mode, attacks, bad input, AMP/channels_last."""
import math

import pytest
import torch
from torch import nn

from conftest import DEVICES
from nni_mrs_plugin.train.trainer import METHODS, AdversarialTrainer
from nni_mrs_plugin.models import build_model

# A fixed tiny batch: 3 samples, 4 features, 3 classes; x_adv is given, so the losses are deterministic.
X = torch.tensor([[0.2, 0.4, 0.6, 0.8], [0.9, 0.1, 0.3, 0.5], [0.5, 0.5, 0.0, 1.0]])
X_ADV = torch.tensor([[0.25, 0.35, 0.65, 0.75], [0.85, 0.15, 0.25, 0.55], [0.45, 0.55, 0.05, 0.95]])
Y = torch.tensor([0, 2, 1])
W = torch.tensor([[1.0, -2.0, 0.5, 1.5], [-1.0, 1.0, 2.0, -0.5], [0.5, 0.5, -1.5, 2.0]])
B = torch.tensor([0.1, -0.2, 0.05])


def linear_model() -> nn.Module:
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(W)
        model.bias.copy_(B)
    return model


def softmax_rows(x: torch.Tensor) -> list:
    rows = []
    for row in (x @ W.T + B).tolist():
        exps = [math.exp(v) for v in row]
        rows.append([e / sum(exps) for e in exps])
    return rows


def test_tiny_batch_exercises_both_mart_branches():
    top = [max(range(3), key=p.__getitem__) for p in softmax_rows(X_ADV)]
    assert any(t == y for t, y in zip(top, Y.tolist())) and any(t != y for t, y in zip(top, Y.tolist()))


@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_trades_loss_equals_hand_computation(beta):
    p_nat, p_adv = softmax_rows(X), softmax_rows(X_ADV)
    n = len(Y)
    ce = sum(-math.log(p_nat[i][Y[i]]) for i in range(n)) / n
    kl = sum(p_nat[i][k] * (math.log(p_nat[i][k]) - math.log(p_adv[i][k])) for i in range(n) for k in range(3)) / n
    got = AdversarialTrainer("trades", beta=beta).loss(linear_model(), X, Y, x_adv=X_ADV)
    assert got.item() == pytest.approx(ce + beta * kl, rel=1e-5)


@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_mart_loss_equals_hand_computation(beta):
    p_nat, p_adv = softmax_rows(X), softmax_rows(X_ADV)
    n = len(Y)
    boosted = 0.0
    robust = 0.0
    for i in range(n):
        y = int(Y[i])
        wrong = max((k for k in range(3) if k != y), key=p_adv[i].__getitem__)  # strongest wrong class
        boosted += -math.log(p_adv[i][y]) - math.log(1.0001 - p_adv[i][wrong] + 1e-12)
        kl = sum(p_nat[i][k] * (math.log(p_nat[i][k]) - math.log(p_adv[i][k] + 1e-12)) for k in range(3))
        robust += kl * (1.0000001 - p_nat[i][y])
    expected = boosted / n + beta * robust / n
    got = AdversarialTrainer("mart", beta=beta).loss(linear_model(), X, Y, x_adv=X_ADV)
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("method,inputs", [("pgd", X_ADV), ("fast", X_ADV), ("natural", X)])
def test_single_term_losses_are_cross_entropy(method, inputs):
    p = softmax_rows(inputs)
    expected = sum(-math.log(p[i][Y[i]]) for i in range(len(Y))) / len(Y)
    x_adv = None if method == "natural" else X_ADV
    got = AdversarialTrainer(method).loss(linear_model(), X, Y, x_adv=x_adv)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return build_model("small_cnn", in_channels=1).train()


@pytest.mark.parametrize("method,bn_moves", [("pgd", True), ("fast", True), ("trades", False), ("mart", False)])
def test_batchnorm_mode_during_attack_follows_reference(method, bn_moves):
    model = small_cnn()
    bn = model.features[1]
    before = bn.running_mean.clone()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    x_adv = AdversarialTrainer(method, eps=0.1, steps=2).adversarial_examples(model, x, y)
    assert model.training, "the model's train mode must be restored after the attack"
    assert (not torch.equal(before, bn.running_mean)) == bn_moves
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 0.01, "the attack did not move the inputs"


def test_attack_bn_override_and_custom_attack():
    model = small_cnn()
    before = model.features[1].running_mean.clone()
    trainer = AdversarialTrainer("pgd", eps=0.05, attack="RFGSM", attack_kwargs={"steps": 2}, attack_bn="eval")
    assert trainer.attack_kwargs == {"eps": 0.05, "alpha": 0.0125, "steps": 2}
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    x_adv = trainer.adversarial_examples(model, x, y)
    assert torch.equal(before, model.features[1].running_mean)
    assert (x_adv - x).abs().max() <= 0.05 + 1e-6
    import torchattacks

    assert AdversarialTrainer("pgd", attack=torchattacks.FGSM).attack_kwargs == {"eps": 8 / 255}


@pytest.mark.parametrize("kwargs,message", [
    ({"eps": -0.1}, "eps must be an L-inf radius in [0, 1]"),
    ({"eps": float("nan")}, "eps must be"),
    ({"method": "free"}, "unknown method 'free'; choose one of pgd, trades, mart, fast, nfgsm, rslad, ard, natural"),
    ({"method": "rslad", "steps": 0}, "for method 'rslad'"),
    ({"method": "pgd", "teacher": nn.Linear(4, 3)}, "teacher: method 'pgd' learns from labels, not a teacher; the "
                                                    "methods that distil are rslad, ard"),
    ({"method": "ard", "teacher": "dense.pt"}, "teacher must be a torch.nn.Module, got str"),
    ({"method": "ard", "temperature": 0}, "temperature must be > 0, got 0"),
    ({"method": "ard", "distill_weight": 1.5}, "distill_weight (ARD's alpha) must be in [0, 1], got 1.5"),
    ({"method": "pgd", "steps": 0}, "steps must be an integer >= 1 for method 'pgd', got 0"),
    ({"method": "trades", "steps": 0}, "for method 'trades'"),
    ({"method": "mart", "steps": 0}, "for method 'mart'"),
    ({"alpha": 0}, "alpha (attack step size) must be in (0, 1]"),
    ({"beta": -1}, "beta (TRADES/MART robustness weight) must be >= 0"),
    ({"attack": "NoSuchAttack"}, "unknown attack 'NoSuchAttack'; choose a torchattacks attack"),
    ({"attack": nn.Linear}, "attack must be a torchattacks attack class or name"),
    ({"attack_kwargs": {"radius": 3}}, "torchattacks.PGD rejected"),
    ({"attack": "AutoAttack", "attack_kwargs": {"version": "fancy"}}, "torchattacks.AutoAttack rejected"),
    ({"attack_bn": "frozen"}, "attack_bn must be 'train', 'eval' or None"),
    ({"method": "natural", "attack": "PGD"}, "method 'natural' runs no attack"),
    ({"method": "ibp", "attack": "PGD"}, "method 'ibp' runs no attack"),
    ({"method": "pgd", "ibp": {"ramp": 0.5}}, "ibp (the certified schedule) is for method 'ibp', not 'pgd'"),
    ({"method": "ibp", "ibp": {"rampup": 0.5}}, "ibp: unknown key 'rampup'; the schedule takes warmup, ramp"),
    ({"method": "ibp", "ibp": {"warmup": 0.7, "ramp": 0.5}}, "warmup + ramp must be at most 1"),
    ({"method": "ibp", "ibp": {"kappa_end": 2}}, "kappa_end must be in [0, 1]"),
])
def test_bad_input_is_one_clear_value_error(kwargs, message):
    with pytest.raises(ValueError) as info:
        AdversarialTrainer(**kwargs)
    assert message in str(info.value)


def test_fast_ignores_steps_and_every_method_builds():
    assert AdversarialTrainer("fast", steps=0).alpha == pytest.approx(1.25 * 8 / 255)
    for method in METHODS:
        AdversarialTrainer(method)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_and_channels_last_cover_attack_and_loss(device):
    model = small_cnn().to(device)
    x, y = torch.rand(8, 1, 28, 28, device=device), torch.randint(0, 10, (8,), device=device)
    plain = AdversarialTrainer("trades", eps=0.1, steps=2)
    fast = AdversarialTrainer("trades", eps=0.1, steps=2, amp=True, channels_last=True)
    model.to(memory_format=torch.channels_last)
    x_cl = fast.prepare(x)
    assert x_cl.is_contiguous(memory_format=torch.channels_last)
    model.eval()  # same BatchNorm statistics for both losses
    x_adv = plain.adversarial_examples(model, x, y)
    reference, mixed = plain.loss(model, x, y, x_adv=x_adv), fast.loss(model, x_cl, y, x_adv=fast.prepare(x_adv))
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed)
    assert mixed.item() == pytest.approx(reference.item(), rel=0.05)  # bf16 logits, fp32 loss
    seen = []
    hook = model.features[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    fast.adversarial_examples(model, x_cl, y)
    hook.remove()
    assert seen and all(dtype == torch.bfloat16 for dtype in seen), "attack generation must run under autocast"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_training_steps_do_not_synchronise_with_the_host():
    from nni_mrs_plugin.train.loop import scheduled_sgd

    model = small_cnn().cuda()
    trainer = AdversarialTrainer("trades", eps=0.1, steps=3, amp=True, channels_last=True)
    model.to(memory_format=torch.channels_last)
    optimizer, schedule = scheduled_sgd(model, 0.01, 10)
    batches = [(torch.rand(32, 1, 28, 28, device="cuda"), torch.randint(0, 10, (32,), device="cuda"))
               for _ in range(3)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches:
            loss = trainer.loss(model, trainer.prepare(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# -- robust distillation and N-FGSM ---------------------------------------------------------------------------
T = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, 2.5, 0.5]])  # fixed teacher logits


class FixedTeacher(nn.Module):
    """Returns ``T`` whatever the input: the losses can be checked by hand."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return T * self.scale


def hand_kl(p_rows: list, q_rows: list) -> float:
    """KL(q || p) summed over classes, averaged over the batch."""
    return sum(q[k] * (math.log(q[k]) - math.log(p[k])) for p, q in zip(p_rows, q_rows) for k in range(3)) / len(p_rows)


def scaled_softmax(logits: torch.Tensor, temperature: float = 1.0) -> list:
    rows = []
    for row in (logits / temperature).tolist():
        exps = [math.exp(v) for v in row]
        rows.append([e / sum(exps) for e in exps])
    return rows


def test_rslad_loss_equals_its_formula():
    teacher = scaled_softmax(T)
    expected = 5 / 6 * hand_kl(softmax_rows(X_ADV), teacher) + 1 / 6 * hand_kl(softmax_rows(X), teacher)
    got = AdversarialTrainer("rslad", teacher=FixedTeacher()).loss(linear_model(), X, Y, x_adv=X_ADV)
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("temperature,weight", [(30.0, 1.0), (4.0, 0.7)])
def test_ard_loss_equals_its_formula(temperature, weight):
    student = [[v / temperature for v in row] for row in (X_ADV @ W.T + B).tolist()]
    kl = hand_kl(scaled_softmax(torch.tensor(student)), scaled_softmax(T, temperature))
    ce = sum(-math.log(p[y]) for p, y in zip(softmax_rows(X), Y.tolist())) / len(Y)
    trainer = AdversarialTrainer("ard", teacher=FixedTeacher(), temperature=temperature, distill_weight=weight)
    got = trainer.loss(linear_model(), X, Y, x_adv=X_ADV)
    # T^2 = 900 scales float32 rounding of a small divergence: 1e-4 relative
    assert got.item() == pytest.approx(weight * temperature ** 2 * kl + (1 - weight) * ce, rel=1e-4)


@pytest.mark.parametrize("normalization", [None, ((0.3,), (0.2,))])
def test_rslad_attack_raises_the_divergence_from_the_teacher_inside_the_ball(normalization):
    from nni_mrs_plugin.attacks import PixelSpace
    from nni_mrs_plugin.train.losses import kl

    model, teacher = small_cnn(), build_model("small_cnn", in_channels=1).eval()
    space = PixelSpace(normalization)
    pixels = torch.rand(16, 1, 28, 28)
    x = space.normalized(pixels)  # what a normalising loader yields
    trainer = AdversarialTrainer("rslad", eps=0.1, steps=5, teacher=teacher, normalization=normalization)
    target = trainer.teacher_logits(x)
    x_adv = trainer.adversarial_examples(model, x, target)
    assert model.training  # the student's mode is restored
    model.eval()
    with torch.no_grad():
        assert kl(model(x_adv), target) > 1.2 * kl(model(x), target)  # untrained models: small, but 20% up
    moved = space.pixels(x_adv)
    assert (moved - pixels).abs().max() <= 0.1 + 1e-5 and moved.min() >= -1e-6 and moved.max() <= 1 + 1e-6


def test_nfgsm_starts_from_twice_eps_noise_and_is_not_projected():
    torch.manual_seed(0)
    model = small_cnn()
    x, y = torch.rand(64, 1, 28, 28) * 0.5 + 0.25, torch.randint(0, 10, (64,))  # no clipping at 0 or 1 here
    trainer = AdversarialTrainer("nfgsm", eps=0.05)
    assert trainer.alpha == pytest.approx(0.05) and trainer.attack_bn == "train"
    delta = (trainer.adversarial_examples(model, x, y) - x).abs()
    assert delta.max() <= 3 * 0.05 + 1e-6  # noise within 2 eps, then one step of eps
    assert (delta > 0.05 + 1e-3).float().mean() > 0.2  # outside the eps-ball: no projection
    edge = trainer.adversarial_examples(model, torch.zeros(4, 1, 28, 28), y[:4])
    assert edge.min() >= 0 and edge.max() <= 1


def test_a_teacher_is_frozen_and_unchanged_by_fit_and_must_fit_the_task(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    from nni_mrs_plugin.train.fit import fit

    student, teacher = small_cnn(), build_model("small_cnn", in_channels=1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # BatchNorm statistics included
    data = TensorDataset(torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,)))
    for method in ("rslad", "ard"):
        trainer = AdversarialTrainer(method, eps=0.1, steps=2, teacher=teacher)
        fit(student, DataLoader(data, batch_size=16), None, 1, trainer, progress=False)
        assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
        assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    with pytest.raises(ValueError, match="^method 'rslad' distils from a teacher: pass teacher="):
        AdversarialTrainer("rslad").loss(student, x, y)
    with pytest.raises(ValueError, match="^the teacher gives 5 classes, the student 10: distil from a model"):
        AdversarialTrainer("ard", teacher=build_model("small_cnn", num_classes=5, in_channels=1)).loss(student, x, y)
    with pytest.raises(ValueError, match=r"^the teacher cannot take the student's inputs \(4, 1, 28, 28\)"):
        AdversarialTrainer("rslad", teacher=build_model("small_cnn", image_size=32)).loss(student, x, y)
