"""The cost-aware ``budget`` rule (mrs/costaware.py) and the curves it reads (mrs/curves.py): it meets the budget
after real removal, prunes where channels are expensive and cheap in loss, and the curves are reproducible."""
import copy

import pytest
import torch
from conftest import DEVICES, MODEL_SHAPES, dummy_input, make_model
from torch import nn

from nni_mrs_plugin.evaluate import count_flops
from nni_mrs_plugin.mrs import allocation as power_rule
from nni_mrs_plugin.mrs.allocator import MRSSparsityAllocator
from nni_mrs_plugin.mrs.costaware import allocate_by_curves, convex_curve, predicted_rise
from nni_mrs_plugin.budget.cost import CostModel
from nni_mrs_plugin.budget.problem import BudgetProblem
from nni_mrs_plugin.mrs.curves import loss_curves
from nni_mrs_plugin.mrs.pruner import MRSPruner
from nni_mrs_plugin.host.speedup import speedup_model

GRID = (0.25, 0.5, 0.75)


@pytest.mark.parametrize("rule, options", [("budget", {"ratios": GRID}), ("joint", {"criterion": "l1", "rounds": 4})])
@pytest.mark.parametrize("name", sorted(MODEL_SHAPES))
def test_cost_aware_rules_meet_the_budget_after_real_removal(name, rule, options):
    """Both cost-aware rules (``budget`` here, ``joint`` in mrs/joint.py) on the four shipped architectures."""
    model = make_model(name)
    x = dummy_input(name, batch=8)
    y = torch.arange(8) % 10
    before = count_flops(copy.deepcopy(model), x[:1])
    pruner = MRSPruner(model, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.6}], calibration=(x, y),
                       rule=rule, n_samples=8, progress=False, **options)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    speedup_model(model, masks, x[:1])
    removed = 1 - count_flops(model, x[:1]) / before
    assert pruner.allocation.rule == rule and pruner.allocation.measured
    if rule == "budget":
        assert set(pruner.allocation.curves) == {row.unit for row in pruner.allocation.report}
    assert abs(removed - 0.6) <= 0.01, (removed, pruner.allocation.table())


class CheapAndExpensive(nn.Module):
    """Two parallel branches: ``cheap`` (8 channels at stride 4, ~1% of the FLOPs) and ``expensive`` (64 channels at
    full resolution, ~99%)."""

    def __init__(self):
        super().__init__()
        self.cheap = nn.Conv2d(1, 8, 3, stride=4, padding=1)
        self.expensive = nn.Conv2d(1, 64, 3, padding=1)
        self.head = nn.Linear(72, 10)

    def forward(self, x):
        features = [torch.relu(self.cheap(x)).mean((2, 3)), torch.relu(self.expensive(x)).mean((2, 3))]
        return self.head(torch.cat(features, 1))


def _units_and_cost():
    model = CheapAndExpensive().eval()
    problem = BudgetProblem.build(model, [{"op_names": ["cheap", "expensive"], "sparse_ratio": 0.5}],
                                  torch.zeros(1, 1, 16, 16), round_to=1)  # exact counts: rules compared, not steps
    units, graph = problem.units, problem.graph_module
    return model, units, CostModel(model, graph, units, torch.zeros(1, 1, 16, 16)), graph


def test_budget_prunes_the_expensive_unit_where_power_prunes_the_cheap_critical_one():
    """Per unit of ratio the cheap unit is more sensitive (curve r) than the expensive one (0.8 r); per unit of FLOPs
    saved it is ~80 times more. The power rule only sees the ratios and cuts the cheap unit by a third for 1% of
    the FLOPs; the budget rule takes the FLOPs where they cost least loss."""
    _, units, cost, _ = _units_and_cost()
    ratios = (0.1, 0.3, 0.5, 0.7, 0.9)
    curves = {"cheap": [1.0 * r for r in ratios], "expensive": [0.8 * r for r in ratios]}
    budget = allocate_by_curves(BudgetProblem(units, cost, 0.5), curves, ratios)
    scores = {name: sum(curve) / len(curve) for name, curve in curves.items()}
    power = power_rule.allocate(BudgetProblem(units, cost, 0.5), scores)
    by = {unit.name: unit for unit in units}
    for pruned in (budget, power):
        kept = {name: by[name].kept(count) for name, count in pruned.items()}
        assert abs(cost.removed_fraction(kept) - 0.5) <= 0.01
    ratio = {rule: {name: count / by[name].per_block for name, count in pruned.items()}
             for rule, pruned in (("budget", budget), ("power", power))}
    assert ratio["budget"]["cheap"] == 0.0 and ratio["budget"]["expensive"] >= ratio["power"]["expensive"], ratio
    assert ratio["power"]["cheap"] >= 0.25, ratio

    def predicted_rise(pruned):
        return sum(ratio_ * (1.0 if name == "cheap" else 0.8) for name, ratio_ in
                   ((name, count / by[name].per_block) for name, count in pruned.items()))
    assert predicted_rise(budget) < predicted_rise(power)


def test_measured_curves_find_the_redundant_expensive_unit():
    """Three quarters of ``expensive``'s channels are dead (zero weights and bias): its measured curve is flat up to
    0.75, so the budget rule removes those channels and leaves the live cheap unit whole."""
    model, units, cost, graph = _units_and_cost()
    with torch.no_grad():
        model.cheap.weight.mul_(4)  # the live unit carries the logits
        model.head.weight[:, :8].mul_(4)
        model.expensive.weight[16:] = 0
        model.expensive.bias[16:] = 0
    torch.manual_seed(0)  # the data, not the test order, decides the curves
    x = torch.rand(32, 1, 16, 16)
    y = model(x).argmax(1)
    ratios = (0.25, 0.5, 0.75, 0.9)
    curves = loss_curves(model, units, x, y, ratios, graph_module=graph)
    # flat while only dead channels go; past 0.75 live ones go and the loss moves (either way: these are the
    # model's own labels, and losing a live channel can also widen a margin)
    assert max(abs(v) for v in curves["expensive"][:3]) < 1e-5 and abs(curves["expensive"][3]) > 1e-4, curves
    assert curves["cheap"][2] > 1e-3, curves  # the live unit costs loss once pruned hard
    target = cost.removed_fraction({"cheap": 8, "expensive": 16})  # what removing the dead channels saves
    pruned = allocate_by_curves(BudgetProblem(units, cost, target - 0.005), curves, ratios)
    assert pruned["cheap"] == 0 and pruned["expensive"] >= 44, pruned


def test_curves_are_deterministic_under_a_seed_and_restore_the_model(calibration):
    model = make_model("small_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    select = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]
    results = [MRSSparsityAllocator(rule="budget", n_samples=64, seed=3, progress=False, ratios=GRID, recalibrate=True)
               .allocate(model, select, calibration) for _ in range(2)]
    assert results[0].curves == results[1].curves and results[0].ratios == list(GRID)
    assert results[0].config_list == results[1].config_list
    assert any(v != 0 for curve in results[0].curves.values() for v in curve)
    other = MRSSparsityAllocator(rule="budget", n_samples=64, seed=4, progress=False, ratios=GRID) \
        .allocate(model, select, calibration)
    assert other.curves != results[0].curves
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_convex_curve_is_monotone_convex_and_through_the_origin():
    hull = convex_curve([(0.2, 0.5), (0.4, 0.1), (0.6, 0.6), (0.8, 2.0)])
    assert hull[0] == (0.0, 0.0) and hull[-1] == (0.8, 2.0)
    slopes = [(y1 - y0) / (x1 - x0) for (x0, y0), (x1, y1) in zip(hull, hull[1:])]
    assert all(s >= 0 for s in slopes) and slopes == sorted(slopes), hull
    assert convex_curve([(0.5, -1.0)]) == [(0.0, 0.0), (0.5, 0.0)]


def test_predicted_rise_is_the_objective_the_budget_rule_minimises():
    ratios = (0.25, 0.5, 0.75)
    curves = {"a": [0.1, 0.2, 0.9], "b": [-0.1, 0.4, 0.3]}
    assert predicted_rise(curves, ratios, {"a": 0.5, "b": 0.0}) == pytest.approx(0.2)
    # b is floored and made monotone (0, 0, 0.4, 0.4), then convex: the chord from (0.25, 0) to (0.75, 0.4)
    assert predicted_rise(curves, ratios, {"a": 0.75, "b": 0.5}) == pytest.approx(0.9 + 0.2)
    assert predicted_rise(curves, ratios, {"a": 0.25}) == pytest.approx(0.1)  # a unit left out adds nothing
    with pytest.raises(ValueError, match=r"no sensitivity curve for units \['c'\]"):
        predicted_rise(curves, ratios, {"c": 0.5})


@pytest.mark.parametrize("kwargs, message", [
    ({"rule": "greedy"}, "unknown allocation rule 'greedy'; choose one of power, budget, joint"),
    ({"rule": "budget", "estimator": "weight"}, "needs estimator='curve'"),
    ({"rule": "budget", "ratios": [0.5, 1.2]}, "curve ratios must be a non-empty list of numbers in (0, 1)"),
])
def test_rule_options_fail_with_one_clear_line(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MRSSparsityAllocator(progress=False, **kwargs)


def test_curves_must_match_the_grid():
    _, units, cost, _ = _units_and_cost()
    with pytest.raises(ValueError, match="one value per ratio"):
        allocate_by_curves(BudgetProblem(units, cost, 0.5), {"cheap": [0.1], "expensive": [0.1, 0.2]}, (0.25, 0.5))


def test_reattacked_curves_differ_from_fixed_ones_and_restore_the_model(calibration):
    """reattack=True re-runs PGD on every pruned model: a stronger attack on the pruned model than the dense
    model's X', so the curves rise at least as much on average."""
    model = make_model("small_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    select = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]
    fixed, again = (MRSSparsityAllocator(rule="budget", n_samples=32, progress=False, ratios=GRID, reattack=flag,
                                         attack_kwargs={"steps": 3}).allocate(model, select, calibration)
                    for flag in (False, True))
    values = [(a, b) for name in fixed.curves for a, b in zip(fixed.curves[name], again.curves[name])]
    assert any(a != b for a, b in values)
    assert sum(b for _, b in values) >= sum(a for a, _ in values) - 1e-6, (fixed.curves, again.curves)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("device", DEVICES)
def test_budget_rule_on_each_device(device, calibration):
    """The same allocation on CUDA as on the CPU up to float rounding in the curves: the budget is met after removal."""
    model = make_model("vgg16_bn").to(device)
    x = torch.rand(16, 3, 32, 32)
    y = torch.arange(16) % 10
    before = count_flops(copy.deepcopy(model).cpu(), x[:1])
    pruner = MRSPruner(model, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.8}], calibration=(x, y),
                       rule="budget", n_samples=16, ratios=GRID, recalibrate=True, progress=False)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    speedup_model(model, masks, x[:1].to(device))
    assert abs(1 - count_flops(model.cpu(), x[:1]) / before - 0.8) <= 0.01
