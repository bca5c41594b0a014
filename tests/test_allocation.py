"""The allocator's budget is the one the sped-up model really has: the cost model is checked against
``ModelSpeedup`` and the target is met within 1 point for the four architectures."""
import copy
import math
import random

import pytest
import torch
from conftest import MODEL_SHAPES, dummy_input, make_model

from nni_mrs_plugin.mrs import allocation
from nni_mrs_plugin.mrs.allocator import MRSSparsityAllocator
from nni_mrs_plugin.budget.cost import CostModel
from nni_mrs_plugin.budget.problem import BudgetProblem
from nni_mrs_plugin.evaluate import count_flops, count_params
from nni_mrs_plugin.host.speedup import compute_masks, speedup_model

SELECT = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}]


def _random_scores(units, seed=0):
    rng = random.Random(seed)
    return {unit.name: math.exp(rng.uniform(-3, 3)) for unit in units}


@pytest.mark.slow
@pytest.mark.parametrize("budget", ["flops", "params"])
@pytest.mark.parametrize("name", list(MODEL_SHAPES))
def test_budget_met_after_speedup(name, budget):
    model, x = make_model(name), dummy_input(name, 1)
    allocator = MRSSparsityAllocator("taylor", budget, tau=1.0, progress=False)
    _, units, _, graph_module = allocator.units(model, SELECT, x)
    cost = CostModel(model, graph_module, units, x)
    scores = _random_scores(units)
    dense = count_flops(model, x) if budget == "flops" else count_params(model)
    for target in (0.5, 0.75, 0.9):
        pruned = allocation.allocate(BudgetProblem(units, cost, target, budget), scores, tau=1.0)
        result = BudgetProblem(units, cost, target, budget).allocation(pruned, scores)
        ratios = {row.unit: row.ratio for row in result.report}
        assert len(set(round(r, 3) for r in ratios.values())) > 1, "MRS should give non-uniform ratios"
        small = copy.deepcopy(model)
        speedup_model(small, compute_masks(small, result.config_list), x)
        after = count_flops(small, x) if budget == "flops" else count_params(small)
        removed = 1 - after / dense
        assert abs(removed - target) <= 0.01, (name, budget, target, removed)
        assert removed == pytest.approx(result.achieved, abs=1e-9), "cost model disagrees with ModelSpeedup"


def _output_only_flops(model, x, fraction):
    """Multiply-adds x 2 of every Conv/Linear at the dense shapes, scaled by the layer's kept output fraction."""
    flops = {}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: flops.__setitem__(n, 2 * o.numel() * m.weight[0].numel()))
             for n, m in layers.items()]
    with torch.no_grad():
        model.eval()(x)
    for hook in hooks:
        hook.remove()
    return sum(value * fraction.get(name, 1.0) for name, value in flops.items())


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_cost_model_counts_next_layer_inputs(name):
    """Random per-unit channel counts: predicted FLOPs, params and channels equal the sped-up model's."""
    model, x = make_model(name), dummy_input(name, 1)
    problem = BudgetProblem.build(model, SELECT, x, round_to=1)  # any count, aligned or not
    units, graph_module = problem.units, problem.graph_module
    cost = CostModel(model, graph_module, units, x)
    rng = random.Random(1)
    pruned = {u.name: rng.randint(0, u.max_pruned_per_block()) for u in units}
    kept = {u.name: u.kept(pruned[u.name]) for u in units}
    result = BudgetProblem(units, cost, 0.5).allocation(pruned)
    # an output-only count (each layer's dense FLOPs times its kept output fraction) misses the shrunken inputs
    # of the following layers: the exact count below must be smaller than it
    fraction = {layer: kept[u.name] / u.channels for u in units for layer in u.layers}
    out_only = _output_only_flops(model, x, fraction)
    speedup_model(model, compute_masks(model, result.config_list), x)
    assert cost.cost(kept, "flops") == count_flops(model, x) < out_only
    assert cost.cost(kept, "params") == count_params(model)
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert cost.cost(kept, "channels") == sum(getattr(m, "out_channels", None) or m.out_features for m in layers)


def test_tau_zero_is_nni_uniform_l1():
    """tau = 0 reproduces NNI's own uniform L1NormPruner masks when asked for the budget that pruner removes."""
    name = "resnet18"
    model, x = make_model(name), dummy_input(name, 1)
    uniform = copy.deepcopy(model)
    allocator = MRSSparsityAllocator("taylor", "flops", tau=0.0, progress=False)
    _, units, _, graph_module = allocator.units(model, SELECT, x)
    nni_config = [{"op_names": list(u.layers), "sparse_ratio": 0.5, "dependency_group_id": u.name} for u in units]
    nni_masks = compute_masks(uniform, nni_config)
    speedup_model(uniform, copy.deepcopy(nni_masks), x)
    target = 1 - count_flops(uniform, x) / count_flops(model, x)
    cost = CostModel(model, graph_module, units, x)
    pruned = allocation.allocate(BudgetProblem(units, cost, target), _random_scores(units), tau=0.0)
    assert {u.name: pruned[u.name] for u in units} == {u.name: u.channels // 2 for u in units}
    result = BudgetProblem(units, cost, target).allocation(pruned, _random_scores(units))
    masks = compute_masks(model, result.config_list)
    assert masks.keys() == nni_masks.keys()
    assert all(torch.equal(masks[k]["weight"], nni_masks[k]["weight"]) for k in masks)


def test_unreachable_target_names_the_maximum():
    name = "small_cnn"
    model, x = make_model(name), dummy_input(name, 1)
    allocator = MRSSparsityAllocator("taylor", "flops", r_max=0.3, progress=False)
    _, units, _, graph_module = allocator.units(model, SELECT, x)
    cost = CostModel(model, graph_module, units, x)
    with pytest.raises(ValueError, match=r"cannot remove 0\.9000 .* most reachable is 0\.\d{4}"):
        allocation.allocate(BudgetProblem(units, cost, 0.9), _random_scores(units))


def test_a_failed_compress_gives_the_model_back_unwrapped():
    """An unreachable target is an error; the model must then be the user's again, so that a second pruner with a
    reachable target can wrap it (NNI refuses to wrap a layer twice)."""
    from nni_mrs_plugin.mrs.pruner import MRSPruner

    name = "small_cnn"
    model, x = make_model(name), dummy_input(name, 8)
    y = torch.arange(8) % 10
    with pytest.raises(ValueError, match="cannot remove 0.9000"):
        MRSPruner(model, [{"op_names": ["features.0"], "sparse_ratio": 0.9}], calibration=(x, y), n_samples=8,
                  progress=False).compress()
    assert not any(hasattr(m, "_nni_wrapper") for m in model.modules())
    pruner = MRSPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], calibration=(x, y), n_samples=8,
                       progress=False)
    _, masks = pruner.compress()
    assert masks


def test_units_follow_dependency_groups_and_skip_output_layers():
    name = "resnet18"
    model, x = make_model(name), dummy_input(name, 1)
    allocator = MRSSparsityAllocator("taylor", progress=False)
    _, units, skipped, _ = allocator.units(model, SELECT, x)
    groups = {u.name: set(u.layers) for u in units}
    assert groups["layer2.0.conv2"] == {"layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2"}
    assert groups["conv1"] == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    assert "fc" in skipped and "model output" in skipped["fc"]
    # selecting one member of a residual group alone cannot remove channels: skipped with the reason
    partial = [{"op_names": ["layer2.0.conv2", "layer2.0.conv1"], "sparse_ratio": 0.3}]
    _, units, skipped, _ = allocator.units(model, partial, x)
    assert [u.name for u in units] == ["layer2.0.conv1"]
    assert "layer2.0.shortcut.0" in skipped["layer2.0.conv2"]


def QuickStartLeNet() -> torch.nn.Module:
    """NNI's pruning quick start model (examples/nni_examples): one conv1 channel is worth about 7% of its FLOPs."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "nni_examples"))
    from quickstart_pruning import LeNet

    return LeNet()


@pytest.mark.parametrize("round_to", [1, "auto"])
@pytest.mark.parametrize("ops, target", [(["Conv2d"], 0.2), (["Conv2d", "Linear"], 0.1), (["Conv2d", "Linear"], 0.2)])
def test_coarse_channels_are_traded_into_the_tolerance(ops, target, round_to):
    """On the quick start LeNet single-channel moves alone stop outside the tolerance (uniform ratios, 0.2 asked
    for: Conv2d only or all layers); trading a coarse channel for several fine ones meets the target
    within ±0.01 after real removal. round_to='auto', whose steps (conv2's 16 channels: 2) cannot meet 0.2 with
    Conv2d alone, falls back to exact counts there."""
    from nni.compression.pruning import L1NormPruner

    from nni_mrs_plugin.evaluate import count_flops
    from nni_mrs_plugin.budget.baselines import baseline_masks
    from nni_mrs_plugin.host.speedup import speedup_model

    model, dummy = QuickStartLeNet().eval(), torch.zeros(1, 1, 28, 28)
    before = count_flops(model, dummy)
    config = [{"op_types": ops, "exclude_op_names": ["fc3"], "sparse_ratio": target}]
    if round_to == "auto":
        steps = {unit.round_to for unit in BudgetProblem.build(model, config, dummy, round_to="auto").units}
        assert steps == ({1} if ops == ["Conv2d"] else {1, 2, 8}), steps
    _, masks = baseline_masks(model, config, dummy, L1NormPruner, round_to=round_to)
    speedup_model(model, masks, dummy)
    assert abs(1 - count_flops(model, dummy) / before - target) <= 0.01


def test_an_unreachable_granularity_names_the_closest_fractions():
    from nni.compression.pruning import L1NormPruner

    from nni_mrs_plugin.budget.baselines import baseline_masks

    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.1}]
    with pytest.raises(ValueError, match=r"cannot remove 0\.1000 .* within ±0\.01: .* closest reachable fractions "
                                         r"found are 0\.0\d+ and 0\.1\d+ \(ask for one of them"):
        baseline_masks(QuickStartLeNet().eval(), config, torch.zeros(1, 1, 28, 28), L1NormPruner)
