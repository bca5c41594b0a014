"""``export``: BatchNorm folding is exact, each format runs in its own runtime (ONNX Runtime, OpenVINO,
AOTInductor) and computes what the eager pruned model does, and bad input is one line that leaves nothing behind."""
import copy
import json
import random
import sys

import pytest
import torch
from torch import nn

from conftest import DEVICES, dummy_input, make_model
from nni_mrs_plugin import GlobalL1NormPruner, build_model, export, fold_batchnorm, load_artifact
from nni_mrs_plugin.deploy import MissingExtraError, report_path
from nni_mrs_plugin.host.speedup import speedup_model

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _with_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms: folding a default BatchNorm would hide a wrong formula."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, BATCHNORMS):
            for tensor, low, high in ((module.weight, 0.5, 1.5), (module.bias, -0.5, 0.5),
                                      (module.running_mean, -0.3, 0.3), (module.running_var, 0.5, 2.0)):
                tensor.data = torch.rand(tensor.shape, generator=generator) * (high - low) + low
    return model.eval()


@pytest.mark.parametrize("name", ["resnet18", "vgg16_bn", "mobilenet_v2", "small_cnn", "mobilevit_xxs"])
def test_folding_batchnorm_is_exact_and_leaves_none_after_a_conv(name):
    if name == "mobilevit_xxs":
        model, x = _with_statistics(build_model(name)), torch.rand(4, 3, 32, 32)
    else:
        model, x = _with_statistics(make_model(name)), dummy_input(name, 4)
    before = sum(isinstance(m, BATCHNORMS) for m in model.modules())
    folded = fold_batchnorm(model, x)
    assert before > 0 and not any(isinstance(m, BATCHNORMS) for m in folded.modules())
    assert sum(isinstance(m, BATCHNORMS) for m in model.modules()) == before  # on a copy
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-5


def test_a_batchnorm_after_an_add_stays():
    class AddThenNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.bn = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)

        def forward(self, x):
            return self.bn(self.a(x) + self.b(x)).mean((2, 3))

    model, x = _with_statistics(AddThenNorm()), torch.rand(2, 3, 8, 8)
    folded = fold_batchnorm(model, x)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    assert torch.allclose(folded(x), model(x))


@pytest.fixture(scope="module")
def pruned_resnet():
    """ResNet18 with 0.75 of its FLOPs removed by the global L1 ranking, channels kept in multiples of 8."""
    torch.manual_seed(0)
    model, x = _with_statistics(make_model("resnet18")), dummy_input("resnet18", 1)
    pruner = GlobalL1NormPruner(model, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.75}], dummy_input=x,
                                round_to=8)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    speedup_model(model, masks, x)
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("format, suffix", [("onnx", ".onnx"), ("openvino", ".xml"), ("pt2", ".pt2")])
def test_each_format_runs_in_its_runtime_and_computes_what_the_eager_model_does(pruned_resnet, format, suffix,
                                                                               tmp_path):
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    path = tmp_path / "deploy" / f"resnet18{suffix}"
    record = export(pruned_resnet, x[:1], path, format, data=(x, y), samples=16)
    assert path.is_file() and json.loads(report_path(path).read_text()) == json.loads(json.dumps(record))
    if format == "openvino":
        assert path.with_suffix(".bin").is_file()
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []  # no staging left
    assert record["batchnorm_left"] == 0 and record["batchnorm_folded"] == 20 and record["unaligned_convs"] == {}
    checks = record["verify"]
    assert checks["labels"] == "given" and checks["samples"] == 16
    assert checks["relative_difference_batch_1"] <= 1e-3 and checks["relative_difference_batch_16"] <= 1e-3
    assert checks["top1_agreement_clean"] >= 0.9 and checks["top1_agreement_pgd20"] >= 0.9
    assert abs(checks["pgd20_accuracy_folded"] - checks["pgd20_accuracy_eager"]) <= checks["pgd20_interval"]
    assert record["latency_ms_batch_1"][format] > 0
    artifact = load_artifact(path, format)  # any batch size: the batch dimension is dynamic
    with torch.no_grad():
        expected, got = pruned_resnet(x[:5]), artifact(x[:5])
    assert got.shape == (5, 10) and float((got - expected).abs().max() / expected.abs().max()) <= 1e-3


def test_export_names_the_convolutions_whose_channels_runtimes_run_slowly(tmp_path):
    """Channel counts off a multiple of 8 (what round_to=1 leaves) are recorded and warned about in one line; the
    artifact is still written."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 13, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(13, 10)).eval()
    with pytest.warns(UserWarning, match=r"^1 convolution\(s\) keep .* \(e\.g\. 2: 13\).* round_to=8") as caught:
        record = export(model, torch.rand(1, 3, 12, 12), tmp_path / "m.onnx", "onnx", verify=False)
    assert "\n" not in str(caught[0].message) and (tmp_path / "m.onnx").is_file()
    assert record["unaligned_convs"] == {"2": 13}


@pytest.mark.parametrize("device", DEVICES[1:])
def test_a_pt2_package_is_built_for_the_model_s_device_and_checked_there(pruned_resnet, device, tmp_path):
    """On CUDA the AOTInductor package is compiled for the GPU, channels_last, and checked there, bf16 included."""
    model = copy.deepcopy(pruned_resnet).to(device)
    for dtype, tolerance in ((None, 1e-3), (torch.bfloat16, 3e-2)):
        path = tmp_path / f"resnet18-{dtype}.pt2"
        record = export(model, torch.rand(1, 3, 32, 32, device=device), path, "pt2", dtype=dtype, samples=16)
        assert record["channels_last"] and record["verify"]["relative_difference_batch_16"] <= tolerance
        artifact = load_artifact(path, "pt2")
        x = torch.rand(3, 3, 32, 32, device=device, dtype=dtype or torch.float32)
        assert artifact(x).shape == (3, 10) and artifact(x).device.type == "cuda"


class _Unexportable(nn.Module):
    """Draws a Python random number each call: an exporter can only bake one in, which computes something else."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * (1.0 + random.random())


def test_a_loader_that_kills_its_process_is_one_line_tried_in_a_child_first(tmp_path):
    """AOTInductor's loader of a CUDA package segfaulted (torch 2.11, H200): no except catches that, so where CUDA is
    present load_artifact loads the package in a child process first. A crash there is one ValueError line, a
    clean exit or a Python error (left to the load in this process) is not."""
    from nni_mrs_plugin.deploy import _loads_in_child

    path = str(tmp_path / "m.pt2")
    _loads_in_child(path, code="import sys; open(sys.argv[1], 'w').close()")
    assert (tmp_path / "m.pt2").is_file()  # the child was given the path
    _loads_in_child(path, code="raise SystemExit(3)")
    with pytest.raises(ValueError, match=r"^AOTInductor's loader crashed \(signal 11\) loading .*m\.pt2 with torch "
                                         r".*; export to 'onnx' or 'openvino' instead$") as caught:
        _loads_in_child(path, code="import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert "\n" not in str(caught.value)


def test_bad_input_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    model, x = _with_statistics(make_model("small_cnn")), dummy_input("small_cnn", 1)
    folder = tmp_path / "out"
    cases = [
        (lambda: export(model, x, folder / "m.onnx", "tflite"), ValueError,
         "unknown export format 'tflite'; choose one of onnx, openvino, pt2"),
        (lambda: export(model, x, folder / "m.onnx", "onnx", dtype=torch.bfloat16), ValueError,
         "is for the pt2 and openvino formats"),
        (lambda: export(model, x, folder / "m.bin", "openvino"), ValueError, "give a path ending in .xml"),
        (lambda: export(model, "x", folder / "m.onnx"), ValueError, "example_inputs must be one batched input tensor"),
        (lambda: export(_Unexportable(), torch.rand(1, 3, 2, 2), folder / "u.onnx", "onnx", fold_bn=False),
         ValueError, "computes something else than the eager one"),
    ]
    (tmp_path / "a-file").write_text("")
    cases.append((lambda: export(model, x, tmp_path / "a-file" / "m.onnx"), ValueError,
                  "a-file is a file, not a folder"))
    for call, error, message in cases:
        with pytest.raises(error) as info:
            call()
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    monkeypatch.setitem(sys.modules, "openvino", None)  # how Python marks a package as not importable
    with pytest.raises(MissingExtraError, match=r'export to openvino needs openvino: pip install '
                                                r'"nni-mrs-plugin\[deploy\]"'):
        export(model, x, folder / "m.xml", "openvino")
    assert not folder.exists() or not any(folder.iterdir())


def test_the_roofline_bound_of_a_two_layer_model_is_the_hand_computed_one():
    """Linear(4, 3) -> ReLU at batch 2: addmm moves x (2x4), the weight (viewed transposed: free), the bias (3) and
    its output (2x3), 4 bytes each, for 2*2*4*3 FLOPs; relu reads and writes 2x3. At P = 1e9 FLOP/s, W = 1e8 B/s and
    tau = 1e-6 s, as run: max(48/P, 4*(8+12+3+6)/W) + tau + max(0, 4*12/W) + tau; fused: the addmm alone."""
    from nni_mrs_plugin import Device, latency_bound, op_costs
    from nni_mrs_plugin.roofline import model_time

    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(4, 3), nn.ReLU()), torch.rand(2, 4)
    ops = op_costs(model, x)
    assert [(op.name, op.flops, op.bytes) for op in ops] == [("addmm", 48.0, 4 * (3 + 8 + 12 + 6)),
                                                            ("relu", 0.0, 4 * 12)]
    device = Device(flops_per_s=1e9, bytes_per_s=1e8, overhead_s=1e-6)
    assert model_time(ops, device) == pytest.approx(max(48 / 1e9, 116 / 1e8) + 1e-6 + 48 / 1e8 + 1e-6)
    assert model_time(ops, device, fused=True) == pytest.approx(116 / 1e8)
    half = nn.Sequential(nn.Linear(4, 1), nn.ReLU())  # a third of the outputs
    bound = latency_bound(model, half, x, device)
    expected = (116 / 1e8 + 48 / 1e8 + 2e-6) / (4 * (1 + 8 + 4 + 2) / 1e8 + 4 * 4 / 1e8 + 2e-6)
    assert bound["as_run"] == pytest.approx(expected) and bound["fused"] == pytest.approx(116 / 60)


def test_the_roofline_time_is_monotone_in_flops_and_bytes():
    from nni_mrs_plugin import Device
    from nni_mrs_plugin.roofline import OpCost, model_time

    device = Device(flops_per_s=1e9, bytes_per_s=1e8, overhead_s=1e-6)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        ops = [OpCost(name, float(f), float(b)) for name, f, b in zip(
            ["convolution", "relu", "addmm"], torch.randint(0, 10**6, (3,), generator=generator).tolist(),
            torch.randint(0, 10**5, (3,), generator=generator).tolist())]
        for index in range(3):
            for more in ({"flops": ops[index].flops * 2 + 1}, {"bytes": ops[index].bytes * 2 + 1}):
                grown = list(ops)
                grown[index] = OpCost(ops[index].name, more.get("flops", ops[index].flops),
                                      more.get("bytes", ops[index].bytes))
                for fused in (False, True):
                    assert model_time(grown, device, fused) >= model_time(ops, device, fused)
    with pytest.raises(ValueError, match="bytes_per_s must be > 0, got 0"):
        Device(flops_per_s=1.0, bytes_per_s=0, overhead_s=0.0)


def test_calibrated_constants_and_the_bound_of_a_pruned_model_are_plausible(pruned_resnet):
    from nni_mrs_plugin import calibrate, latency_bound

    device = calibrate(repeats=2)
    assert device.flops_per_s > 1e9 and device.bytes_per_s > 1e8 and 0 < device.overhead_s < 1e-3
    x = dummy_input("resnet18", 1)
    bound = latency_bound(make_model("resnet18"), pruned_resnet, x, device)
    flops_ratio = bound["flops"]["dense"] / bound["flops"]["pruned"]
    assert 3.5 < flops_ratio < 4.5  # 0.75 of the FLOPs removed
    assert 1.0 < bound["as_run"] <= flops_ratio and 1.0 < bound["fused"] <= flops_ratio * 1.01
