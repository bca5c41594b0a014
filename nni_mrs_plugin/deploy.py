"""``export``: a model (pruned or not) as a deployment artifact that runs in its own runtime, checked there.

On a copy of the model: BatchNorm folded into the Conv/Linear before it (``fold_batchnorm``), channels_last for
``pt2``, then ONNX (``torch.onnx.export``: dynamo, else TorchScript), OpenVINO IR (``convert_model``) or an
AOTInductor package (``torch.export`` + ``aoti_compile_and_package``). Before anything is written in place, the
artifact is loaded in its runtime and compared with the eager model; what was checked goes to ``export.json``
beside it. The runtimes are the ``deploy`` extra: ``pip install "nni-mrs-plugin[deploy]"``.
"""
from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .checkpoint import atomic_json
from .evaluate import measure_latency
from .host.speedup import trace

__all__ = ["FORMATS", "DEPLOY_EXTRA", "export", "fold_batchnorm", "load_artifact", "report_path", "MissingExtraError"]

FORMATS = {"onnx": ".onnx", "openvino": ".xml", "pt2": ".pt2"}
DEPLOY_EXTRA = 'pip install "nni-mrs-plugin[deploy]"'
_NEEDS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "openvino": ("openvino",), "pt2": ()}
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TOLERANCE = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 3e-2}  # max |difference| / max |logit|


class MissingExtraError(ImportError):
    """A runtime of the ``deploy`` extra is not installed."""


def _require(format: str) -> None:
    import importlib.util

    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    missing = [name for name in _NEEDS[format] if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(f"export to {format} needs {', '.join(missing)}: {DEPLOY_EXTRA}")


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example_inputs: Any) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm whose only input is a Conv's or Linear's output (used by
    nothing else) folded into that layer's weights and replaced by ``nn.Identity``: the same function, one op
    fewer per pair. A BatchNorm that follows anything else (an add, a concatenation) stays."""
    folded = copy.deepcopy(model).eval()
    graph = trace(folded, example_inputs).graph
    modules = dict(folded.named_modules())
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, _BATCHNORMS) or not bn.track_running_stats or calls[node.target] != 1:
            continue
        source = node.args[0] if node.args else None
        if getattr(source, "op", None) != "call_module" or len(source.users) != 1 or calls[source.target] != 1:
            continue
        layer = modules[source.target]
        shape = getattr(source.meta.get("tensor_meta"), "shape", None)
        if isinstance(layer, _CONVS) and layer.out_channels == bn.num_features:
            fused = fuse_conv_bn_eval(layer, bn)
        elif isinstance(layer, nn.Linear) and layer.out_features == bn.num_features and shape is not None \
                and len(shape) == 2:
            fused = fuse_linear_bn_eval(layer, bn)
        else:
            continue
        _set_module(folded, source.target, fused)
        _set_module(folded, node.target, nn.Identity())
    return folded


class _Artifact(nn.Module):
    """An exported artifact loaded in its runtime, called like the model (tensor in, tensor out, no gradients)."""

    def __init__(self, run: Callable[[torch.Tensor], Any], format: str):
        super().__init__()
        self.run, self.format = run, format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.run(x.detach()))


def load_artifact(path: Union[str, Path], format: str, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """The artifact at ``path`` in its own runtime (ONNX Runtime's CPU provider, OpenVINO on CPU at f32 unless
    ``dtype`` says otherwise, AOTInductor), as a module for measuring and comparing."""
    _require(format)
    path = str(path)
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return _Artifact(lambda x: session.run(None, {name: x.cpu().numpy()})[0], format)
    if format == "openvino":
        import openvino

        precision = "bf16" if dtype == torch.bfloat16 else "f16" if dtype == torch.float16 else "f32"
        compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": precision})
        return _Artifact(lambda x: compiled(x.cpu().numpy())[0], format)
    if torch.cuda.is_available():  # where a CUDA package can be loaded, torch 2.11's loader crashed (docs/deploy.md)
        _loads_in_child(path)
    package = torch._inductor.aoti_load_package(path)
    return _Artifact(lambda x: package(x), format)


def _loads_in_child(path: str, code: str = "import sys, torch; torch._inductor.aoti_load_package(sys.argv[1])") -> None:
    """``code`` run on ``path`` in a child process first: a loader that kills its process (no except catches a
    segmentation fault) becomes one ValueError line. Other failures are left to the load in this process."""
    returncode = subprocess.run([sys.executable, "-c", code, path], capture_output=True).returncode
    if returncode < 0:
        raise ValueError(f"AOTInductor's loader crashed (signal {-returncode}) loading {path} with "
                         f"torch {torch.__version__}; export to 'onnx' or 'openvino' instead")


def report_path(path: Union[str, Path]) -> Path:
    """Where ``export`` records what it checked: ``<artifact>.export.json`` beside the artifact."""
    return Path(path).with_name(f"{Path(path).name}.export.json")


def _write(model: nn.Module, x: torch.Tensor, path: Path, format: str, dynamic_batch: bool) -> str:
    """Write the artifact; returns how (the exporter used)."""
    if format == "onnx":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False, external_data=False,
                                  dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic_batch else None,
                                  input_names=["input"], output_names=["output"])
                return "torch.onnx.export (dynamo)"
            except Exception:  # the dynamo exporter cannot take every model: the TorchScript one next
                torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"], output_names=["output"],
                                  dynamic_axes={"input": {0: "batch"}} if dynamic_batch else None)
                return "torch.onnx.export (TorchScript)"
    if format == "openvino":
        import openvino

        shape = [openvino.PartialShape([-1 if dynamic_batch else x.shape[0], *x.shape[1:]])]
        openvino.save_model(openvino.convert_model(model, example_input=x, input=shape), str(path))
        return f"openvino.convert_model {openvino.__version__}"
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    program = torch.export.export(model, (x,), dynamic_shapes=shapes)
    torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return "torch.export + AOTInductor"


def _verify(model: nn.Module, folded: nn.Module, artifact: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor],
            eps: float, dtype: torch.dtype, dynamic_batch: bool) -> Dict[str, Any]:
    """The checks of ``export``: a dict, or a ValueError naming the first that fails."""
    from .attacks import build_attack

    tolerance = TOLERANCE[dtype]
    with torch.no_grad():
        eager = model(x)
        labels = y if y is not None else eager.argmax(1)
    out: Dict[str, Any] = {"tolerance": tolerance, "samples": len(x),
                           "labels": "given" if y is not None else "the eager model's predictions"}
    batches = {"batch_1": x[:1], f"batch_{len(x)}": x} if dynamic_batch else {f"batch_{len(x)}": x}
    for key, inputs in batches.items():
        with torch.no_grad():
            reference = model(inputs).float()
            got = artifact(inputs.to(dtype)).float().reshape(reference.shape)
        difference = float((got - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
        out[f"relative_difference_{key}"] = difference
        if not difference <= tolerance:
            raise ValueError(f"the exported model computes something else than the eager one ({key}: relative "
                             f"difference {difference:.3g}, allowed {tolerance})")
    adversarial = build_attack(model, "PGD", eps=eps, steps=20, random_start=True)(x, labels).detach()
    for key, inputs in (("clean", x), ("pgd20", adversarial)):
        with torch.no_grad():
            agree = (artifact(inputs.to(dtype)).float().argmax(1) == model(inputs).argmax(1)).float().mean().item()
        out[f"top1_agreement_{key}"] = agree
    accuracies = {}
    for name, candidate in (("eager", model), ("folded", folded)):
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(0)  # the same random start for both: only folding's rounding may tell them apart
            attacked = build_attack(candidate, "PGD", eps=eps, steps=20, random_start=True)(x, labels).detach()
        with torch.no_grad():
            accuracies[name] = (candidate(attacked).argmax(1) == labels).float().mean().item()
    p, n = accuracies["eager"], len(x)
    interval = 1.96 * math.sqrt(max(p * (1 - p), 0.25 / n) / n)  # normal interval; at p in {0, 1}: 1/sqrt(n)
    out.update(pgd20_accuracy_eager=accuracies["eager"], pgd20_accuracy_folded=accuracies["folded"],
               pgd20_interval=interval)
    if abs(accuracies["folded"] - p) > interval:
        raise ValueError(f"BatchNorm folding changed the PGD-20 accuracy from {p:.3f} to {accuracies['folded']:.3f} "
                         f"(beyond ±{interval:.3f})")
    return out


def export(model: nn.Module, example_inputs: Any, path: Union[str, Path], format: str = "onnx", *,
           dtype: Optional[torch.dtype] = None, fold_bn: bool = True, channels_last: bool = True,
           dynamic_batch: bool = True, verify: bool = True, data: Any = None, eps: Optional[float] = None,
           samples: int = 64) -> Dict[str, Any]:
    """Export ``model`` to ``path`` as ``format`` ('onnx', 'openvino', 'pt2') and return what ``export.json``
    beside it records. ``example_inputs`` (a tensor, or a 1-tuple) gives the input shape; with ``dynamic_batch``
    any batch size runs. ``dtype`` (float16/bfloat16; ``pt2`` and ``openvino`` only) casts model and inputs.
    With ``verify``, on ``samples`` inputs (``data``'s (x, y), else uniform in [0, 1] labelled by the model) the
    artifact in its runtime must match the eager model within ``TOLERANCE`` at batch 1 and at ``samples``;
    top-1 agreement on clean and PGD-20 inputs (crafted on the eager model, radius ``eps``) and the folded
    model's PGD-20 accuracy beside the original's (same random start) are recorded, the latter within its 95%
    interval. Any failure is one ValueError line and leaves nothing at ``path``."""
    _require(format)
    dtype = torch.float32 if dtype is None else dtype
    if dtype not in TOLERANCE:
        raise ValueError(f"dtype must be None, torch.float32, torch.float16 or torch.bfloat16, got {dtype}")
    if dtype != torch.float32 and format == "onnx":
        raise ValueError(f"dtype {dtype} is for the pt2 and openvino formats; ONNX Runtime's CPU kernels run float32")
    if isinstance(example_inputs, (tuple, list)) and len(example_inputs) == 1:
        example_inputs = example_inputs[0]
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() < 2:
        raise ValueError(f"example_inputs must be one batched input tensor (or a 1-tuple of one), got "
                         f"{type(example_inputs).__name__}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ValueError(f"samples must be an integer >= 2, got {samples!r}")
    path = Path(path)
    if format == "openvino" and path.suffix != ".xml":
        raise ValueError(f"an OpenVINO model is an .xml file with a .bin beside it: give a path ending in .xml, "
                         f"got {str(path)!r}")
    blocking = next((p for p in [path.parent, *path.parent.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"cannot write {path}: {blocking} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)

    device = next(model.parameters()).device if format == "pt2" else torch.device("cpu")
    original = copy.deepcopy(model).eval().to(device)
    x = example_inputs.to(device)
    if dynamic_batch and x.shape[0] == 1:  # a batch of 1 would be specialised into the graph
        x = x.expand(2, *x.shape[1:]).contiguous()
    try:
        prepared = fold_batchnorm(original, x) if fold_bn else copy.deepcopy(original)
    except Exception as err:
        raise ValueError(f"cannot fold BatchNorm in {type(model).__name__} ({str(err).splitlines()[0]}); "
                         f"export with fold_bn=False") from None
    left = sum(isinstance(m, _BATCHNORMS) for m in prepared.modules())
    layout = channels_last and format == "pt2" and x.dim() == 4
    if layout:
        prepared = prepared.to(memory_format=torch.channels_last)
    prepared = prepared.to(dtype)

    staging = path.parent / f".{path.name}.{os.getpid()}.export"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        target = staging / path.name
        try:
            exporter = _write(prepared, x.to(dtype), target, format, dynamic_batch)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"cannot export {type(model).__name__} to {format}: {first}") from None
        artifact = load_artifact(target, format, dtype)
        record: Dict[str, Any] = {
            "format": format, "path": str(path), "exporter": exporter, "dtype": str(dtype).replace("torch.", ""),
            "fold_bn": fold_bn, "batchnorm_left": left,
            "batchnorm_folded": sum(isinstance(m, _BATCHNORMS) for m in original.modules()) - left,
            "channels_last": layout, "dynamic_batch": dynamic_batch, "input_shape": list(example_inputs.shape[1:]),
            "torch": torch.__version__, "unaligned_convs": {  # blocked kernels run them slower (BENCHMARKS.md)
                name: m.out_channels for name, m in original.named_modules()
                if isinstance(m, _CONVS) and m.out_channels % 8}}
        if record["unaligned_convs"]:
            name, count = next(iter(record["unaligned_convs"].items()))
            warnings.warn(f"{len(record['unaligned_convs'])} convolution(s) keep a channel count that is not a "
                          f"multiple of 8 (e.g. {name}: {count}), which runtimes run slowly; prune with round_to=8 "
                          f"or 16 for speed (docs/deploy.md)", stacklevel=2)
        if verify:
            from .attacks import default_eps

            if data is not None:
                vx, vy = data[0][:samples].to(device), data[1][:samples].to(device)
            else:
                generator = torch.Generator().manual_seed(0)
                vx, vy = torch.rand(samples, *x.shape[1:], generator=generator).to(device), None
            radius = eps if eps is not None else default_eps(vx)
            record["verify"] = _verify(original, prepared.float(), artifact, vx, vy, radius, dtype, dynamic_batch)
            record["verify"]["eps"] = radius
            record["latency_ms_batch_1"] = {"eager": measure_latency(original, vx[:1]),
                                            format: measure_latency(artifact, vx[:1].to(dtype))}
        for produced in sorted(staging.iterdir(), key=lambda p: p == target):  # the artifact itself last
            os.replace(produced, path.parent / produced.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_json(report_path(path), record)
    return record
