"""Baselines at the same budget: random channels and the global L1 ranking, as real NNI pruners."""
import json

import pytest
import torch
from test_pipeline import tiny

from nni_mrs_plugin.budget.baselines import GlobalL1NormPruner, RandomPruner, UniformPruner, baseline_masks
from nni_mrs_plugin.evaluate import count_flops
from nni_mrs_plugin.models import build_model
from nni_mrs_plugin.job.pipeline import Pipeline
from nni_mrs_plugin.host.registry import get_pruner
from nni_mrs_plugin.mrs.sensitivity import channel_importance
from nni_mrs_plugin.host.speedup import output_channel_keep, speedup_model

SELECT = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}]


def small_cnn():
    torch.manual_seed(0)
    return build_model("small_cnn", in_channels=1, image_size=28), torch.rand(1, 1, 28, 28)


def pruned_channels(masks, name):
    return set(torch.nonzero(~output_channel_keep(masks[name]["weight"])).flatten().tolist())


def test_registry_names():
    assert get_pruner("random") is RandomPruner and get_pruner("l1-global") is GlobalL1NormPruner


def random_masks(pruner_cls, **options):
    model, x = small_cnn()
    dense = count_flops(model, x)
    pruner = pruner_cls(model, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}], dummy_input=x, **options)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    speedup_model(model, masks, x)
    assert abs(1 - count_flops(model, x) / dense - 0.5) <= 0.01  # a budget pruner: the global target is met
    return masks, pruner.allocation


def test_random_pruner_is_a_seeded_budget_pruner_unlike_l1():
    first, allocation = random_masks(RandomPruner, seed=1)
    uniform_masks, uniform = random_masks(UniformPruner)
    assert [row.ratio for row in allocation.report] == [row.ratio for row in uniform.report]  # the same ratios
    assert pruned_channels(random_masks(RandomPruner, seed=1)[0], "features.3") == pruned_channels(first, "features.3")
    assert pruned_channels(random_masks(RandomPruner, seed=2)[0], "features.3") != pruned_channels(first, "features.3")
    assert pruned_channels(uniform_masks, "features.3") != pruned_channels(first, "features.3")


@pytest.mark.parametrize("name, shape", [("small_cnn", (1, 1, 28, 28)), ("resnet18", (1, 3, 32, 32))])
def test_global_l1_meets_the_budget_after_real_removal(name, shape):
    torch.manual_seed(0)
    model = build_model(name, in_channels=shape[1], **({"image_size": 28} if name == "small_cnn" else {}))
    dummy = torch.rand(*shape)
    dense = count_flops(model, dummy)
    allocation, masks = baseline_masks(model, SELECT, dummy, GlobalL1NormPruner)
    speedup_model(model, masks, dummy)
    assert abs(1 - count_flops(model, dummy) / dense - 0.5) <= 0.01
    ratios = [unit.ratio for unit in allocation.report]
    assert max(ratios) - min(ratios) > 0.5, "a global ranking does not prune every layer alike"


def test_global_l1_pruner_used_directly_is_the_capped_ranking():
    """One name, one behaviour: NNI-style use of GlobalL1NormPruner gives the masks the job's 'l1-global' gives."""
    model, dummy = small_cnn()
    pruner = GlobalL1NormPruner(model, SELECT, dummy_input=dummy, r_max=0.9)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    assert all(u.ratio <= 0.9 + 1e-9 for u in pruner.allocation.report)
    assert abs(pruner.allocation.achieved - 0.5) <= 0.01
    _, via_job = baseline_masks(model, SELECT, dummy, get_pruner("l1-global"))
    assert masks.keys() == via_job.keys()
    for name in masks:
        assert torch.equal(masks[name]["weight"], via_job[name]["weight"]), name
    with pytest.raises(ValueError, match="GlobalL1NormPruner needs dummy_input"):
        GlobalL1NormPruner(model, SELECT).compress()
    with pytest.raises(ValueError, match="unknown budget 'speed'"):
        GlobalL1NormPruner(model, SELECT, dummy_input=dummy, budget="speed")


def test_global_l1_takes_the_globally_smallest_filters():
    model, dummy = small_cnn()
    allocation, masks = baseline_masks(model, SELECT, dummy, GlobalL1NormPruner, round_to=1)  # no step to snap to
    modules = dict(model.named_modules())
    capped = {u.unit for u in allocation.report if u.channels_after <= u.channels_before * 0.1 + 1}
    pruned, kept = [], []
    for unit in allocation.report:
        norms = channel_importance(modules[unit.unit].weight, "l1")
        gone = pruned_channels(masks, unit.unit)
        assert len(gone) == unit.channels_before - unit.channels_after
        pruned += [float(norms[i]) for i in gone]
        if unit.unit not in capped:
            kept += [float(norms[i]) for i in range(len(norms)) if i not in gone]
    assert pruned and kept and max(pruned) <= min(kept)


def test_pipeline_runs_the_new_baselines(tmp_path):
    for pruner in ("random", "l1-global"):
        config = tiny(tmp_path / pruner, pretrain={"epochs": 0}, pruning={"pruner": pruner, "target": 0.5,
                                                                          "round_to": 1})
        state = Pipeline(config).run(until="speedup")["stages"]
        removed = 1 - state["speedup"]["pruned"]["flops"] / state["pretrain"]["dense"]["flops"]
        assert abs(removed - 0.5) <= 0.01, pruner
        units = json.loads((tmp_path / pruner / "run" / "allocation.json").read_text())["units"]
        spread = max(u["ratio"] for u in units) - min(u["ratio"] for u in units)
        assert (spread < 0.1) if pruner == "random" else (spread > 0.5), pruner
