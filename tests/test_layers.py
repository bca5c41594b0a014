"""Layer pruning: residual blocks found in torchvision's and our models, removed for real, equal to masking."""
import copy

import pytest
import torch
import torchvision
from torch import nn

from nni_mrs_plugin import (LayerPruner, UniformPruner, build_model, count_flops, get_pruner, load_pruned,
                            mask_like_removal, save_pruned, speedup_model)
from nni_mrs_plugin.host.blocks import block_masks, find_blocks
from nni_mrs_plugin.host.speedup import trace

CONVS = [{"op_types": ["Conv2d"], "sparse_ratio": 0.2}]


def _randomised(model: nn.Module) -> nn.Module:
    """Eval mode with BatchNorm statistics and shifts away from their defaults, so a wrong branch shows."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _data(n=16, channels=3, size=32):
    generator = torch.Generator().manual_seed(0)
    return torch.rand(n, channels, size, size, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def _relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name, blocks, projections",
                         [("resnet18", 5, 3), ("resnet50", 12, 4), ("mobilenet_v2", 10, 0)])
def test_blocks_of_torchvision_models_are_found_and_removal_equals_masking(name, blocks, projections):
    model = _randomised(getattr(torchvision.models, name)(num_classes=10))
    x, _ = _data(2)
    graph = trace(model, x)
    found, refused = find_blocks(graph, model)
    everything, _ = find_blocks(graph, model, projection=True)
    assert len(found) == blocks and len(everything) == blocks + projections
    assert all(reason.startswith("it has a projection shortcut") for reason in refused.values())
    removed = speedup_model(copy.deepcopy(model), block_masks(model, everything), x)
    masked = mask_like_removal(copy.deepcopy(model), block_masks(model, everything), x)
    with torch.no_grad():
        assert _relative(removed(x), masked(x)) < 1e-5
    assert count_flops(removed, x) < 0.6 * count_flops(model, x)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
def test_layer_pruner_removes_blocks_of_torchvision_models_to_the_target(name):
    model = _randomised(getattr(torchvision.models, name)(num_classes=10))
    x, y = _data()
    pruner = LayerPruner(copy.deepcopy(model), CONVS, calibration=(x, y), criterion="norm", progress=False)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    report = pruner.allocation
    shares = {row.unit: row.budget_share for row in report.report}
    assert pruner.removed and report.achieved >= 0.2
    assert report.achieved - 0.2 < max(shares[b.name] for b in pruner.removed)  # within one block's share
    removed = speedup_model(copy.deepcopy(model), masks, x[:1])
    with torch.no_grad():
        assert _relative(removed(x), mask_like_removal(copy.deepcopy(model), masks, x[:1])(x)) < 1e-5
    assert 1 - count_flops(removed, x[:1]) / count_flops(model, x[:1]) == pytest.approx(report.achieved, abs=1e-6)


def _quiet_block(model: nn.Module, block: str) -> nn.Module:
    """Our ResNet18 with one block's branch computing zeros (its last BatchNorm scaled to 0): removing it changes
    nothing, so every criterion must rank it first."""
    norm = model.get_submodule(block).bn2
    norm.weight.data.zero_()
    norm.bias.data.zero_()
    return model.eval()


@pytest.mark.parametrize("criterion", ["adversarial", "norm"])
def test_a_block_that_computes_nothing_is_scored_zero_and_goes_first(criterion):
    model = _quiet_block(build_model("resnet18", in_channels=1, width=0.125), "layer3.1")
    x, y = _data(8, 1, 28)
    pruner = LayerPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.05}], calibration=(x, y),
                         criterion=criterion, steps=2, eps=0.1, progress=False)
    pruner.compress()
    pruner.unwrap_model()
    scores = {row.unit: row.score for row in pruner.allocation.report}
    assert scores["layer3.1"] == pytest.approx(0.0, abs=1e-6)
    assert all(abs(score) > 1e-6 for unit, score in scores.items() if unit != "layer3.1")
    removed = {b.name for b in pruner.removed}
    assert len(removed) == 1 and removed == {min(scores, key=scores.get)}  # the lowest score goes
    if criterion == "norm":  # a norm is never below zero; a loss may fall when an untrained block goes
        assert removed == {"layer3.1"}


def test_layer_and_channel_masks_combine_in_one_removal():
    model = _randomised(build_model("resnet18", width=0.25))
    x, y = _data(4)
    channel = UniformPruner(copy.deepcopy(model), [{"op_types": ["Conv2d"], "sparse_ratio": 0.3}], dummy_input=x[:1])
    _, masks = channel.compress()
    channel.unwrap_model()
    blocks, _ = find_blocks(trace(model, x[:1]), model)
    both = {**masks, **block_masks(model, blocks[1:3])}
    removed = speedup_model(copy.deepcopy(model), both, x[:1])
    with torch.no_grad():
        assert _relative(removed(x), mask_like_removal(copy.deepcopy(model), both, x[:1])(x)) < 1e-4
    assert isinstance(removed.get_submodule(blocks[1].cut), nn.Module) and not list(
        removed.get_submodule(blocks[1].name).parameters())


def test_a_layer_pruned_model_saves_and_rebuilds(tmp_path):
    model = _randomised(build_model("resnet18", width=0.125))
    x, y = _data(4)
    blocks, _ = find_blocks(trace(model, x[:1]), model, projection=True)
    pruned = speedup_model(copy.deepcopy(model), block_masks(model, [blocks[2], blocks[4]]), x[:1])
    save_pruned(tmp_path / "pruned.pt", pruned, "resnet18", width=0.125)
    loaded = load_pruned(tmp_path / "pruned.pt").eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    assert count_flops(loaded, x[:1]) == count_flops(pruned, x[:1])


def test_the_registry_and_nni_namespace_name_the_layer_pruner():
    from nni.compression.pruning import LayerPruner as from_nni

    assert get_pruner("layer") is LayerPruner is from_nni


def test_bad_inputs_are_one_line_errors():
    x, y = _data(4)
    vgg = build_model("vgg16_bn", width=0.125)
    with pytest.raises(ValueError, match="VGG16BN has no removable residual block.*prune its channels instead"):
        LayerPruner(vgg, CONVS, calibration=(x, y), progress=False).compress()
    resnet = build_model("resnet18", width=0.125)
    with pytest.raises(ValueError, match=r"sparse_ratio 0.9 .* removing all 5 removable blocks saves"):
        LayerPruner(resnet, [{"op_types": ["Conv2d"], "sparse_ratio": 0.9}], calibration=(x, y),
                    criterion="norm", progress=False).compress()
    assert not resnet.layer1[0].conv1.__class__.__name__.startswith("Wrapper")  # the error unwrapped the model
    for keywords, message in [({"criterion": "l1"}, "unknown criterion 'l1' for LayerPruner"),
                              ({"budget": "channels"}, "budget must be 'flops' or 'params', got 'channels'"),
                              ({"calibration": None}, "needs calibration data")]:
        with pytest.raises(ValueError, match=message):
            LayerPruner(resnet, CONVS, **{"calibration": (x, y), **keywords})
    whole = {"conv1": {"weight": torch.zeros_like(resnet.conv1.weight)}}
    with pytest.raises(ValueError, match=r"layers \['conv1'\] are masked whole but are not the branch of a removable"):
        speedup_model(copy.deepcopy(resnet), whole, x[:1])


def _job(tmp_path, **pruning):
    from nni_mrs_plugin import load_config

    return load_config({"model": {"name": "resnet18", "kwargs": {"width": 0.125}},
                        "data": {"train_subset": 64, "test_subset": 32, "batch_size": 32},
                        "pretrain": {"epochs": 0}, "pruning": pruning, "progress": False,
                        "output": {"dir": str(tmp_path / "run")}})


def test_the_job_prunes_layers_alone_or_layers_then_channels(tmp_path):
    import json

    from nni_mrs_plugin import Pipeline

    alone = Pipeline(_job(tmp_path / "a", pruner="layer", target=0.3, options={"n_samples": 16, "steps": 1})).run(
        until="speedup")["stages"]
    removed = 1 - alone["speedup"]["pruned"]["flops"] / alone["pretrain"]["dense"]["flops"]
    assert removed == pytest.approx(alone["prune"]["predicted_removed"], abs=1e-6) and 0.3 <= removed < 0.3 + 0.17
    both = Pipeline(_job(tmp_path / "b", target=0.5, layers=0.2)).run(until="speedup")["stages"]
    removed = 1 - both["speedup"]["pruned"]["flops"] / both["pretrain"]["dense"]["flops"]
    assert abs(removed - 0.5) <= 0.01
    allocation = json.loads((tmp_path / "b" / "run" / "allocation.json").read_text())
    gone = [row["unit"] for row in allocation["layers"]["units"] if row["ratio"] == 1.0]
    assert gone and allocation["layers"]["achieved"] >= 0.2 and allocation["rule"] == "power"
    pruned = load_pruned(tmp_path / "b" / "run" / "pruned_init.pt")
    assert not list(pruned.get_submodule(gone[0]).parameters())  # the block's branch went, not just its channels
