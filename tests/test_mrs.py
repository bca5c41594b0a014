"""Module robustness sensitivity and MRSPruner: the estimators rank a critical unit first, the pruner is a
real NNI pruner (masks, unwrap, ModelSpeedup), and bad input fails with one clear line."""
import copy
import re

import numpy as np
import pytest
import torch
from conftest import DEVICES, dummy_input, make_model, run_python
from torch import nn
from torch.nn import functional as F

from nni_mrs_plugin.mrs.allocator import MRSSparsityAllocator
from nni_mrs_plugin.data import load_dataset
from nni_mrs_plugin.evaluate import count_flops
from nni_mrs_plugin.mrs.pruner import MRSPruner
from nni_mrs_plugin.mrs.sensitivity import WeightMRS
from nni_mrs_plugin.nni.speedup import TraceError, compute_masks, speedup_model
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
def fashion():
    train = load_dataset("fashion_mnist", train=True, subset=2000, seed=0)
    return torch.utils.data.DataLoader(train, batch_size=100, shuffle=False)


@pytest.fixture(scope="module")
def branches(fashion):
    torch.manual_seed(0)
    return train_natural(Branches(), fashion, epochs=2, lr=0.1, progress=False)


@pytest.fixture(scope="module")
def calibration(fashion):
    return next(iter(torch.utils.data.DataLoader(fashion.dataset, batch_size=128)))


@pytest.mark.parametrize("estimator", ["weight", "probe", "taylor"])
def test_critical_unit_gets_highest_mrs_and_lowest_ratio(estimator, branches, calibration):
    model = copy.deepcopy(branches)
    allocator = MRSSparsityAllocator(estimator, "flops", n_samples=128, progress=False)
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

    from nni_mrs_plugin.nni.registry import get_pruner

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


def test_import_from_nni_pruning_in_a_fresh_interpreter():
    result = run_python("from nni.compression.pruning import MRSPruner, L1NormPruner\n"
                        "from nni.compression.base.compressor import Pruner\n"
                        "import nni_mrs_plugin\n"
                        "assert issubclass(MRSPruner, Pruner) and MRSPruner is nni_mrs_plugin.MRSPruner\n"
                        "print('ok')")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_registry_names_and_entry_points(tmp_path):
    from nni_mrs_plugin.nni.registry import available_pruners, get_pruner

    assert {"mrs", "l1", "l2", "fpgm", "taylor"} <= set(available_pruners())
    assert get_pruner("mrs") is MRSPruner
    with pytest.raises(ValueError, match="unknown pruner 'nope'; available: .*mrs"):
        get_pruner("nope")
    # a third-party package adds a name through the entry-point group
    (tmp_path / "thirdparty.py").write_text("from nni.compression.pruning import L1NormPruner\n"
                                            "class MyPruner(L1NormPruner):\n    pass\n")
    info = tmp_path / "thirdparty-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[nni_mrs_plugin.pruners]\nmine = thirdparty:MyPruner\n")
    result = run_python("from nni_mrs_plugin.nni.registry import get_pruner\nprint(get_pruner('mine').__name__)",
                        env_extra={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0 and result.stdout.strip() == "MyPruner", result.stderr[-2000:]


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
    ({"estimator": "hessian"}, SELECT, r"unknown estimator 'hessian'; choose one of weight, probe, taylor"),
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
    pruner = MRSPruner(model, SELECT, calibration=calibration, tau=0.0, criterion="taylor", n_samples=64,
                       progress=False)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    assert {row.mrs for row in pruner.allocation.report} == {1.0}  # not measured: cannot change uniform ratios
    assert abs(pruner.allocation.achieved - 0.5) <= 0.01
    assert set(pruner._gradients) == {"features.0", "features.3", "features.7", "features.10", "classifier.1"}
