"""MRSPruner (mrs/pruner.py): a real NNI pruner (masks, unwrap, ModelSpeedup), seeded, fed by calibration data or an
evaluator, and bad input fails with one clear line."""
import re

import numpy as np
import pytest
import torch
from conftest import DEVICES, dummy_input, make_model
from torch import nn
from torch.nn import functional as F

from nni_mrs_plugin.mrs.allocator import MRSSparsityAllocator
from nni_mrs_plugin.evaluate import count_flops
from nni_mrs_plugin.mrs.pruner import MRSPruner
from nni_mrs_plugin.host.speedup import TraceError, compute_masks, speedup_model

SELECT = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm", "taylor"])
def test_mrs_pruner_is_an_nni_pruner(criterion, device, calibration):
    from nni.compression.base.compressor import Pruner
    from nni.compression.speedup import ModelSpeedup

    model = make_model("small_cnn").to(device)
    x = dummy_input("small_cnn", 1, device)
    dense = count_flops(model, x)
    pruner = MRSPruner(model, SELECT, calibration=calibration, estimator="taylor", criterion=criterion,
                       n_samples=128, progress=False)
    assert isinstance(pruner, Pruner)
    returned, masks = pruner.compress()
    assert returned is model and set(masks) >= {"features.0", "features.3", "features.7", "features.10"}
    assert all(masks[name]["weight"].device.type == device for name in masks)
    pruner.unwrap_model()
    ModelSpeedup(model, x, masks).speedup_model()
    removed = 1 - count_flops(model, x) / dense
    assert abs(removed - 0.5) <= 0.01
    assert removed == pytest.approx(pruner.allocation.achieved, abs=1e-9)
    model(x).sum().backward()  # still trains


def test_same_seed_same_masks(calibration):
    results = []
    for _ in range(2):
        model = make_model("small_cnn")
        pruner = MRSPruner(model, SELECT, calibration=calibration, estimator="weight", steps=2, n_samples=64,
                           seed=3, progress=False)
        results.append(pruner.compress()[1])
        pruner.unwrap_model()
    first, second = results
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k]["weight"], second[k]["weight"]) for k in first)


@pytest.mark.parametrize("pruner_name", ["l1", "l2", "fpgm", "taylor"])
def test_config_list_accepted_by_nni_pruners(pruner_name, calibration):
    import nni
    from nni.compression import TorchEvaluator

    from nni_mrs_plugin.host.registry import get_pruner

    model, x = make_model("resnet18"), dummy_input("resnet18", 1)
    images = torch.rand(16, 3, 32, 32)
    labels = torch.randint(0, 10, (16,))
    allocation = MRSSparsityAllocator("taylor", "flops", progress=False).allocate(
        model, SELECT, (images, labels), x)
    dense = count_flops(model, x)
    kwargs = {}
    if pruner_name == "taylor":
        def training_func(model, optimizer, training_step, lr_scheduler, max_steps, max_epochs):
            for step in range(max_steps or 1):
                loss = training_step((images[:8], labels[:8]), model)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

        def training_step(batch, model):
            return F.cross_entropy(model(batch[0]), batch[1])

        optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01)
        kwargs = {"evaluator": TorchEvaluator(training_func, optimizer, training_step, dummy_input=x),
                  "training_steps": 2}
    masks = compute_masks(model, allocation.config_list, get_pruner(pruner_name), **kwargs)
    speedup_model(model, masks, x)
    assert abs((1 - count_flops(model, x) / dense) - 0.5) <= 0.01


def test_pruner_draws_calibration_batches_from_evaluator(fashion):
    import nni
    from nni.compression import TorchEvaluator

    seen = []

    def training_func(model, optimizer, training_step, lr_scheduler, max_steps, max_epochs):
        model.train()
        for step, batch in enumerate(fashion):
            if max_steps is not None and step >= max_steps:
                break
            seen.append(len(batch[0]))
            loss = training_step(batch, model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def training_step(batch, model):
        return F.cross_entropy(model(batch[0]), batch[1])

    model, x = make_model("small_cnn"), dummy_input("small_cnn", 1)
    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01)
    evaluator = TorchEvaluator(training_func, optimizer, training_step, dummy_input=x)
    pruner = MRSPruner(model, SELECT, evaluator, estimator="taylor", training_steps=3, n_samples=1000,
                       progress=False)
    _, masks = pruner.compress()
    assert seen == [100, 100, 100]
    assert pruner.allocation is not None and abs(pruner.allocation.achieved - 0.5) <= 0.01
    kept = {name: m["weight"].flatten(1).any(1).float().mean().item() for name, m in masks.items()}
    assert {row.unit: 1 - row.ratio for row in pruner.allocation.report} == pytest.approx(
        {name: kept[name] for name in ("features.0", "features.3", "features.7", "features.10", "classifier.1")})


class NumpyInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.conv(torch.from_numpy(np.tanh(x.detach().numpy()))).mean((2, 3)))


@pytest.mark.parametrize("kwargs, config, message", [
    ({}, [{"op_types": ["Conv2d"], "sparse_ratio": 1.0}], r"sparse_ratio must be in \(0, 1\).*got 1.0"),
    ({}, [{"op_types": ["Conv2d"], "sparse_ratio": 0}], r"sparse_ratio must be in \(0, 1\).*got 0"),
    ({}, [{"op_types": ["Conv2d"], "sparse_ratio": -0.2}], r"sparse_ratio must be in \(0, 1\).*got -0.2"),
    ({}, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "min_sparse_ratio": 0.8, "max_sparse_ratio": 0.2}],
     r"min_sparse_ratio 0.8 > max_sparse_ratio 0.2"),
    ({"r_min": 0.6, "r_max": 0.3}, SELECT, r"r_min <= r_max.*r_min=0.6, r_max=0.3"),
    ({"estimator": "hessian"}, SELECT, r"unknown estimator 'hessian'; choose one of weight, probe, curve, taylor, feature"),
    ({"criterion": "l3"}, SELECT, r"unknown criterion 'l3'; choose one of l1, l2, fpgm, taylor"),
    ({"budget": "latency"}, SELECT, r"unknown budget 'latency'; choose one of flops, params, channels"),
    ({"tau": -1.0}, SELECT, r"tau must be a finite number >= 0.*got -1.0"),
    ({}, [{"op_names": ["nope"], "sparse_ratio": 0.5}], r"op_names \['nope'\] are not layers of SmallCNN"),
    ({}, [{"op_types": ["Conv1d"], "sparse_ratio": 0.5}], r"selects no layer of SmallCNN"),
    ({}, [{"op_types": ["BatchNorm2d"], "sparse_ratio": 0.5}], r"cannot handle: .*BatchNorm2d.*allowed types"),
    ({}, [{"op_types": ["Conv2d"], "sparsity": 0.5, "bogus": 1}], r"not a valid NNI pruning config"),
    ({}, [{"op_types": ["Conv2d"]}], r"gives no sparse_ratio"),
])
def test_bad_input_is_one_clear_error(kwargs, config, message, calibration):
    model = make_model("small_cnn")
    with pytest.raises(ValueError, match=message):
        MRSPruner(model, config, calibration=calibration, progress=False, **kwargs).compress()


@pytest.mark.parametrize("calibration", [
    torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(0, 1, 28, 28),
                                                               torch.zeros(0, dtype=torch.long)), batch_size=4),
    (torch.rand(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)),
], ids=["empty-loader", "empty-pair"])
def test_empty_calibration_is_a_clear_error(calibration):
    model, x = make_model("small_cnn"), dummy_input("small_cnn", 1)
    with pytest.raises(ValueError, match="calibration data is empty"):
        MRSPruner(model, SELECT, calibration=calibration, dummy_input=x, progress=False).compress()


def test_untraceable_model_says_so_and_how_to_exclude():
    model = NumpyInForward()
    calibration = (torch.rand(8, 1, 6, 6), torch.randint(0, 10, (8,)))
    with pytest.raises(TraceError, match=r"NNI cannot trace NumpyInForward.*prune a traceable submodule"):
        MRSPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], calibration=calibration,
                  progress=False).compress()


def test_allocation_table_and_json(calibration):
    import json

    model = make_model("small_cnn")
    result = MRSSparsityAllocator("taylor", progress=False).allocate(model, SELECT, calibration)
    table = result.table()
    assert "features.3" in table and re.search(r"removed 0\.\d{4} of flops \(target 0\.5000\)", table)
    data = json.loads(json.dumps(result.as_dict()))
    assert data["budget"] == "flops" and len(data["units"]) == 5 and "classifier.3" in data["skipped"]
    assert sum(row["budget_share"] for row in data["units"]) > 0.9


def test_tau_zero_skips_sensitivity_but_taylor_criterion_still_gets_gradients(calibration):
    model = make_model("small_cnn")
    pruner = MRSPruner(model, SELECT, calibration=calibration, n_samples=64, progress=False)  # default: tau 0, taylor
    _, masks = pruner.compress()
    pruner.unwrap_model()
    assert {row.mrs for row in pruner.allocation.report} == {1.0}  # not measured: cannot change uniform ratios
    assert pruner.allocation.measured is False and pruner.allocation.as_dict()["measured"] is False
    assert "1.0" not in pruner.allocation.table().split("removed")[0]  # placeholders are not shown as MRS
    assert abs(pruner.allocation.achieved - 0.5) <= 0.01
    l1 = MRSPruner(make_model("small_cnn"), SELECT, calibration=calibration, tau=0.0, criterion="l1", n_samples=64,
                   progress=False)
    _, l1_masks = l1.compress()
    l1.unwrap_model()
    # same uniform ratios, other channels: the Taylor scores came from adversarial gradients, not weight norms
    kept = {k: int(m["weight"].sum()) for k, m in masks.items()}
    assert kept == {k: int(m["weight"].sum()) for k, m in l1_masks.items()}
    assert any(not torch.equal(masks[k]["weight"], l1_masks[k]["weight"]) for k in masks)


def test_taylor_criterion_reuses_the_estimators_gradients_and_keeps_batchnorm_statistics(calibration, monkeypatch):
    """One backward pass over X' when estimator and criterion are both taylor, in eval mode: pruning a model in
    train mode must not move its BatchNorm running statistics (they decide the sped-up model's outputs)."""
    from nni_mrs_plugin.mrs import pruner as pruner_module
    from nni_mrs_plugin.mrs import sensitivity

    calls = []
    real = sensitivity.weight_gradients

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sensitivity, "weight_gradients", counted)  # the estimator's calls
    monkeypatch.setattr(pruner_module, "weight_gradients", counted)  # the criterion's
    model = make_model("small_cnn").train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    pruner = MRSPruner(model, SELECT, calibration=calibration, estimator="taylor", criterion="taylor", n_samples=64,
                       progress=False)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    assert len(calls) == 1 and model.training
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert abs(pruner.allocation.achieved - 0.5) <= 0.01


def _evaluator(model, loader, seen=None):
    import nni
    from nni.compression import TorchEvaluator

    def training_func(model, optimizer, training_step, lr_scheduler, max_steps, max_epochs):
        model.train()
        step = 0
        while max_steps is None or step < max_steps:
            for batch in loader:
                if max_steps is not None and step >= max_steps:
                    break
                loss = training_step(batch, model)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
            if max_steps is None:
                break

    def training_step(batch, model):
        return F.cross_entropy(model(batch[0]), batch[1])

    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01)
    return TorchEvaluator(training_func, optimizer, training_step, dummy_input=dummy_input("small_cnn", 1))


@pytest.mark.parametrize("scheduler", ["AGPPruner", "LinearPruner"])
def test_nni_scheduled_pruners_grow_the_mrs_ratios_to_the_allocation(scheduler, fashion, monkeypatch):
    """NNI's scheduled pruning wraps MRSPruner unchanged (issue 13 §2): MRS is measured once, on the first
    training batches, and every ``interval_steps`` the masks grow along NNI's schedule, to the allocation."""
    import nni.compression.pruning as nni_pruning
    from nni.compression.speedup import ModelSpeedup

    model, x = make_model("small_cnn"), dummy_input("small_cnn", 1)
    dense = count_flops(model, x)
    evaluator = _evaluator(model, fashion)
    pruner = MRSPruner(model, SELECT, evaluator, estimator="taylor", training_steps=2, n_samples=200, progress=False)
    measured, kept = [], []
    solve = pruner.allocator.solve
    monkeypatch.setattr(pruner.allocator, "solve", lambda *a, **k: measured.append(1) or solve(*a, **k))
    update = pruner.update_masks
    monkeypatch.setattr(pruner, "update_masks", lambda masks: kept.append(
        {n: m["weight"].flatten(1).any(1).float().mean().item() for n, m in masks.items()}) or update(masks))
    scheduled = getattr(nni_pruning, scheduler)(pruner, interval_steps=3, total_times=4)
    _, masks = scheduled.compress(max_steps=12, max_epochs=None)
    assert len(measured) == 1 and len(kept) == 4
    final = {row.unit: 1 - row.ratio for row in pruner.allocation.report}
    shrinking = [kept[i]["features.3"] for i in range(4)]
    assert shrinking == sorted(shrinking, reverse=True) and shrinking[0] > shrinking[-1]  # the schedule grows
    assert {name: kept[-1][name] for name in final} == pytest.approx(final, abs=1e-6)  # ... to the allocation
    scheduled.unwrap_model()
    ModelSpeedup(model, x, masks).speedup_model()
    assert abs(1 - count_flops(model, x) / dense - 0.5) <= 0.01


def test_config_list_from_nni_dependency_groups_is_accepted():
    """NNI's examples pass config_list through auto_set_denpendency_group_ids first; the allocator's units come
    from the same analysis, so the config means the same and gives the same masks."""
    from nni.compression.utils import auto_set_denpendency_group_ids

    masks = []
    for grouped in (False, True):
        model = make_model("resnet18")
        x = dummy_input("resnet18", 1)
        config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]
        if grouped:
            config = auto_set_denpendency_group_ids(model, config, x)
            assert all("dependency_group_id" in entry for entry in config)
        torch.manual_seed(0)
        pairs = (torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,)))
        pruner = MRSPruner(model, config, calibration=pairs, dummy_input=x, estimator="taylor", n_samples=16, seed=0,
                           progress=False)
        masks.append(pruner.compress()[1])
        pruner.unwrap_model()
    assert masks[0].keys() == masks[1].keys()
    assert all(torch.equal(masks[0][k]["weight"], masks[1][k]["weight"]) for k in masks[0])
