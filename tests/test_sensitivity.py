"""MRS estimators (mrs/sensitivity.py): each ranks a robustness-critical unit first, so the allocator prunes it least;
the weight estimator ascends and restores weights exactly."""
import copy

import pytest
import torch
from conftest import make_model
from torch import nn
from torch.nn import functional as F

from nni_mrs_plugin.mrs.allocator import MRSSparsityAllocator
from nni_mrs_plugin.mrs.sensitivity import WeightMRS
from nni_mrs_plugin.train.loop import train_natural

SELECT = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}]


class Branches(nn.Module):
    """Three parallel conv units; the logits come almost entirely from ``critical``, the others are
    scaled by 1/100, so disturbing them barely moves the loss."""

    def __init__(self):
        super().__init__()
        self.critical = nn.Conv2d(1, 16, 3, stride=2, padding=1)
        self.spare1 = nn.Conv2d(1, 16, 3, stride=2, padding=1)
        self.spare2 = nn.Conv2d(1, 16, 3, stride=2, padding=1)
        self.head_c, self.head_1, self.head_2 = nn.Linear(16, 10), nn.Linear(16, 10), nn.Linear(16, 10)

    def forward(self, x):
        def features(conv):
            return F.adaptive_avg_pool2d(F.relu(conv(x)), 2).flatten(1).view(x.shape[0], 16, 4).mean(2)
        spare = self.head_1(features(self.spare1)) + self.head_2(features(self.spare2))
        return self.head_c(features(self.critical)) + 0.01 * spare


@pytest.fixture(scope="module")
def branches(fashion):
    torch.manual_seed(0)
    return train_natural(Branches(), fashion, epochs=2, lr=0.1, progress=False)


@pytest.mark.parametrize("estimator", ["weight", "probe", "curve", "taylor"])
def test_critical_unit_gets_highest_mrs_and_lowest_ratio(estimator, branches, calibration):
    model = copy.deepcopy(branches)
    # l1 channels in the probes: on this toy, removing the critical unit's lowest-Taylor channels lowers the
    # adversarial loss, so probe/curve with Taylor probes would not single it out (the default criterion)
    allocator = MRSSparsityAllocator(estimator, "flops", 1.0, n_samples=128, progress=False, criterion="l1")
    result = allocator.allocate(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], calibration,
                                calibration[0][:1])
    rows = {row.unit: row for row in result.report}
    assert set(rows) == {"critical", "spare1", "spare2"}
    assert rows["critical"].mrs > 2 * max(rows["spare1"].mrs, rows["spare2"].mrs), result.table()
    assert rows["critical"].ratio < min(rows["spare1"].ratio, rows["spare2"].ratio), result.table()


def test_weight_estimator_restores_weights_bit_identically(calibration):
    model = make_model("small_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads_before = [p.requires_grad for p in model.parameters()]
    allocator = MRSSparsityAllocator("weight", n_samples=64, progress=False, steps=3)
    target, units, _, graph_module = allocator.units(model, SELECT, calibration[0][:1])
    scores = WeightMRS(rho=0.1, steps=3, progress=False)(model, units, *calibration, graph_module)
    assert all(value > 0 for value in scores.values()), scores  # gradient ascent raises the loss
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in model.parameters()] == grads_before
    assert all(p.grad is None for p in model.parameters())


def test_weight_estimator_ascends_beyond_first_step(calibration):
    """More ascent steps find a larger loss rise inside the same ball (the maximisation is doing work)."""
    model = make_model("small_cnn")
    allocator = MRSSparsityAllocator("taylor", progress=False)
    _, units, _, graph_module = allocator.units(model, SELECT, calibration[0][:1])
    one = WeightMRS(rho=0.2, steps=1, progress=False)(model, units, *calibration, graph_module)
    five = WeightMRS(rho=0.2, steps=5, progress=False)(model, units, *calibration, graph_module)
    assert sum(five.values()) > sum(one.values())


@pytest.mark.parametrize("criterion, pruner", [("l1", "L1NormPruner"), ("l2", "L2NormPruner"), ("fpgm", "FPGMPruner")])
def test_channel_importance_ranks_as_nni_does(criterion, pruner):
    """channel_importance scores raw weights where no NNI pruner is wrapped (probe estimator, global ranking); it
    must prune the channels NNI's own metric prunes, so the two cannot drift apart."""
    import nni.compression.pruning as nni_pruning

    from nni_mrs_plugin.mrs.sensitivity import channel_importance
    from nni_mrs_plugin.host.speedup import compute_masks, output_channel_keep

    model = make_model("small_cnn")
    masks = compute_masks(model, [{"op_names": ["features.3"], "sparse_ratio": 0.5}], getattr(nni_pruning, pruner))
    nni_pruned = set(torch.nonzero(~output_channel_keep(masks["features.3"]["weight"])).flatten().tolist())
    scores = channel_importance(dict(model.named_modules())["features.3"].weight, criterion)
    ours = set(scores.argsort()[:len(nni_pruned)].tolist())
    assert len(nni_pruned) == 16 and ours == nni_pruned


def test_weight_mrs_is_never_negative(calibration):
    """Delta = 0 lies in the ball, so the maximum rise is >= 0 even where ascent only finds lower losses (a random
    model, one step: the first step often lowers the loss)."""
    scores = {}
    for seed in range(3):
        model = make_model("small_cnn", seed=seed)
        allocator = MRSSparsityAllocator("weight", n_samples=64, progress=False, steps=1, rho=0.5)
        _, units, _, graph_module = allocator.units(model, SELECT, calibration[0][:1])
        scores.update({(seed, k): v for k, v in
                       WeightMRS(rho=0.5, steps=1, progress=False)(model, units, *calibration, graph_module).items()})
    assert all(value >= 0.0 for value in scores.values()), scores
    assert any(value > 0.0 for value in scores.values()), scores


def test_feature_estimator_is_the_relative_change_of_each_units_output(calibration):
    from nni_mrs_plugin.mrs.sensitivity import FeatureMRS

    model = make_model("small_cnn")
    x, y = calibration
    x_adv = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    allocator = MRSSparsityAllocator("feature", n_samples=128, progress=False)
    _, units, _, graph_module = allocator.units(model, SELECT, x[:1])
    scores = FeatureMRS(batch_size=50, progress=False)(model, units, x_adv, y, graph_module, x=x)
    unit = next(u for u in units if len(u.layers) == 1)
    layer = dict(model.named_modules())[unit.layers[0]]
    outputs = []
    hook = layer.register_forward_hook(lambda module, args, out: outputs.append(out.detach()))
    with torch.no_grad():
        model(x), model(x_adv)
    hook.remove()
    expected = float((outputs[1] - outputs[0]).norm() / outputs[0].norm())
    assert scores[unit.name] == pytest.approx(expected, rel=1e-4)
    assert all(v == 0 for v in FeatureMRS(progress=False)(model, units, x, y, graph_module, x=x).values())
    with pytest.raises(ValueError, match="needs the clean calibration samples"):
        FeatureMRS(progress=False)(model, units, x_adv, y, graph_module)
