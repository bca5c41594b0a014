"""The ``joint`` rule (mrs/joint.py): it measures what the curves measure when one unit is pruned, and, unlike the
``budget`` rule, sees that two units which are each free to prune alone are not free together. That it meets the
budget after real removal is tested beside the budget rule, in test_costaware.py."""
import pytest
import torch
from conftest import make_model
from torch import nn

from nni_mrs_plugin.mrs.allocator import MRSSparsityAllocator
from nni_mrs_plugin.mrs.costaware import allocate_by_curves
from nni_mrs_plugin.budget.cost import CostModel
from nni_mrs_plugin.budget.problem import BudgetProblem
from nni_mrs_plugin.mrs.curves import loss_curves, prune_count
from nni_mrs_plugin.mrs.joint import JointLoss, allocate_jointly


class ThreeBranches(nn.Module):
    """Three parallel branches of equal cost (32 channels each at full resolution) into one linear head."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (nn.Conv2d(1, 32, 3, padding=1) for _ in range(3))
        self.head = nn.Linear(96, 10)

    def forward(self, x):
        return self.head(torch.cat([torch.relu(conv(x)).mean((2, 3)) for conv in (self.a, self.b, self.c)], 1))


def test_joint_rule_sees_what_single_unit_curves_cannot():
    """Units a and b back each other up: either alone costs almost nothing to prune, both together a lot (the
    loss rises with r_a * r_b); c costs a little at any ratio. Curves measured one unit at a time call a and b
    free, so the budget rule prunes both; the joint rule measures each step on the model pruned so far, prunes one
    of them and then c, and ends with a far smaller loss."""
    model = ThreeBranches().eval()
    dummy = torch.zeros(1, 1, 8, 8)
    allocator = MRSSparsityAllocator("curve", n_samples=8, progress=False)
    _, units, _, graph = allocator.units(model, [{"op_names": ["a", "b", "c"], "sparse_ratio": 0.5}], dummy)
    cost = CostModel(model, graph, units, dummy)
    by = {unit.name: unit for unit in units}

    def loss(counts):
        r = {name: counts.get(name, 0) / by[name].per_block for name in by}
        return 10 * r["a"] * r["b"] + 0.1 * (r["a"] + r["b"]) + 0.5 * r["c"]

    ratios = (0.1, 0.3, 0.5, 0.7, 0.9)
    curves = {name: [loss({name: prune_count(by[name], ratio)}) for ratio in ratios] for name in by}
    budget = allocate_by_curves(BudgetProblem(units, cost, 0.5), curves, ratios)
    joint, rates = allocate_jointly(BudgetProblem(units, cost, 0.5), loss, steps=10)
    for pruned in (budget, joint):
        assert abs(cost.removed_fraction({n: by[n].kept(c) for n, c in pruned.items()}) - 0.5) <= 0.01, pruned
    assert min(budget["a"], budget["b"]) >= 8, budget  # both twins cut by a quarter or more
    assert min(joint["a"], joint["b"]) <= 1 and joint["c"] >= 8, joint  # one twin kept whole, c pruned instead
    assert loss(joint) < 0.5 * loss(budget), (joint, budget)
    assert set(rates) == {"a", "b", "c"}


def test_joint_loss_of_one_unit_is_its_curve_and_restores_the_model(calibration):
    """With one unit pruned the joint measurement is the curve's probe (same removal, same adaptive BN); the model
    and its BatchNorm statistics come back unchanged."""
    model = make_model("small_cnn").eval()
    x, y = calibration[0][:64], calibration[1][:64]
    x_adv = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    allocator = MRSSparsityAllocator("curve", n_samples=64, progress=False)
    _, units, _, graph = allocator.units(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], x[:1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    curves = loss_curves(model, units, x_adv, y, (0.5,), "l1", graph, x=x, recalibrate=True)
    measure = JointLoss(model, units, x, x_adv, y, "l1", graph, recalibrate=True)
    base = measure({})
    for unit in units:
        assert measure({unit.name: prune_count(unit, 0.5)}) - base == pytest.approx(curves[unit.name][0], abs=1e-5)
    both = measure({unit.name: prune_count(unit, 0.5) for unit in units})
    assert both != pytest.approx(base) and measure.calls == len(units) + 2
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_joint_rule_is_deterministic_under_a_seed(calibration):
    model = make_model("small_cnn")
    select = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]
    results = [MRSSparsityAllocator(rule="joint", criterion="taylor", n_samples=64, seed=3, rounds=3,
                                    progress=False).allocate(model, select, calibration) for _ in range(2)]
    assert results[0].config_list == results[1].config_list
    assert [row.mrs for row in results[0].report] == [row.mrs for row in results[1].report]
    assert results[0].rule == "joint"


@pytest.mark.parametrize("kwargs, message", [
    ({"rule": "joint", "estimator": "curve"}, "rule='joint' measures the jointly pruned model with the probe's "
                                              "removal: it needs estimator='probe' (or None), got 'curve'"),
    ({"rule": "joint", "rounds": 0}, "rounds must be a positive integer, got 0"),
])
def test_joint_rule_options_fail_with_one_clear_line(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MRSSparsityAllocator(progress=False, **kwargs)


def test_allocate_jointly_checks_its_steps():
    model = ThreeBranches().eval()
    dummy = torch.zeros(1, 1, 8, 8)
    allocator = MRSSparsityAllocator("curve", n_samples=8, progress=False)
    _, units, _, graph = allocator.units(model, [{"op_names": ["a", "b", "c"], "sparse_ratio": 0.5}], dummy)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        allocate_jointly(BudgetProblem(units, CostModel(model, graph, units, dummy), 0.5), lambda counts: 0.0,
                         steps=0)
