"""A roofline bound on what pruning can buy in latency, to report a measured speedup against.

One forward pass under a ``TorchDispatchMode`` records every aten op it runs: its FLOPs (torch's flop counter
registry) and the bytes it moves (tensor inputs, weights included, and outputs; a view moves nothing). With a
device's peak FLOP/s P, memory bandwidth W and per-op overhead tau, an op takes at least max(F / P, B / W) and a
model T = sum over ops of max(F / P, B / W) + tau. Two sums:

- **as run** (eager, unfused): every op as recorded, each paying tau;
- **fused** (the physical limit): only the compute ops (convolutions, matrix products, pooling) with their own
  inputs, weights and outputs, no overhead: BatchNorm folded, elementwise ops fused into their producer.

``latency_bound(dense, pruned, x)`` is T(dense) / T(pruned) for both: the speedup the hardware allows. Channel
pruning by a FLOPs ratio R shrinks activations only by about sqrt(R), so where bytes dominate the bound stays far
below R. ``calibrate`` measures P, W and tau on this machine with three micro-benchmarks.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

__all__ = ["OpCost", "Device", "op_costs", "model_time", "calibrate", "latency_bound"]

_COMPUTE = {"convolution", "addmm", "mm", "bmm", "matmul", "linear", "max_pool2d_with_indices", "avg_pool2d",
            "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "max_pool2d", "scaled_dot_product_attention", "baddbmm",
            "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention"}


_FREE = {"detach", "empty", "empty_like", "empty_strided"}  # allocate or relabel: no bytes move


@dataclass(frozen=True)
class OpCost:
    """One aten op of a forward pass: its name, FLOPs and bytes moved."""

    name: str
    flops: float
    bytes: float

    @property
    def compute(self) -> bool:
        return self.name in _COMPUTE


@dataclass(frozen=True)
class Device:
    """Peak FLOP/s, memory bandwidth (bytes/s) and per-op overhead (s) of a device, as ``calibrate`` measured."""

    flops_per_s: float
    bytes_per_s: float
    overhead_s: float
    name: str = "cpu"

    def __post_init__(self):
        for key in ("flops_per_s", "bytes_per_s"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        if not self.overhead_s >= 0:
            raise ValueError(f"overhead_s must be >= 0, got {self.overhead_s}")


def _nbytes(values: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tree_flatten(values)[0] if isinstance(t, torch.Tensor))


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: List[OpCost] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not func.is_view and func._overloadpacket.__name__ not in _FREE:
            counter = flop_registry.get(func._overloadpacket)
            flops = counter(*args, **kwargs, out_val=out) if counter is not None else 0
            self.ops.append(OpCost(func._overloadpacket.__name__, float(flops), float(_nbytes((args, kwargs, out)))))
        return out


@torch.no_grad()
def op_costs(model: nn.Module, example_inputs: Any) -> List[OpCost]:
    """The aten ops of one eval-mode forward pass of ``model`` on ``example_inputs`` (a tensor or a tuple)."""
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was_training = model.training
    model.eval()
    recorder = _Recorder()
    try:
        with recorder:
            model(*args)
    finally:
        model.train(was_training)
    return recorder.ops


def model_time(ops: List[OpCost], device: Device, fused: bool = False) -> float:
    """Seconds the ops take at least on ``device``: as run (each op, plus its overhead) or fused (compute ops only,
    no overhead)."""
    chosen = [op for op in ops if op.compute] if fused else ops
    overhead = 0.0 if fused else device.overhead_s
    return sum(max(op.flops / device.flops_per_s, op.bytes / device.bytes_per_s) + overhead for op in chosen)


def _seconds(call, repeats: int, cuda: bool) -> float:
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def calibrate(device: str = "cpu", repeats: int = 5, size: int = 1) -> Device:
    """P, W and tau measured here: one large 3x3 convolution (FLOP/s), one large elementwise add (bytes/s: two
    reads and a write), a loop of 1000 adds on one-element tensors (overhead per op); the best of ``repeats``.
    ``size`` scales the problems (1: ~1 GFLOP and ~200 MB)."""
    conv = nn.Conv2d(256, 256, 3, padding=1).to(device)
    x = torch.rand(8 * size, 256, 28, 28, device=device)
    flops = 2 * 8 * size * 256 * 256 * 9 * 28 * 28
    a, b = torch.rand(16_000_000 * size, device=device), torch.rand(16_000_000 * size, device=device)
    tiny, cuda = torch.rand(1, device=device), torch.device(device).type == "cuda"

    def loop():
        for _ in range(1000):
            tiny.add(tiny)

    return Device(flops_per_s=flops / _seconds(lambda: conv(x), repeats, cuda),
                  bytes_per_s=3 * a.numel() * a.element_size() / _seconds(lambda: a.add(b), repeats, cuda),
                  overhead_s=_seconds(loop, repeats, cuda) / 1000, name=str(device))


def latency_bound(dense: nn.Module, pruned: nn.Module, example_inputs: Any,
                  device: Optional[Device] = None) -> Dict[str, Any]:
    """T(dense) / T(pruned) as run and fused, with the device's constants (``calibrate()`` when not given) and each
    model's FLOPs and bytes: the speedup a measurement of ``pruned`` against ``dense`` can reach at most."""
    device = device if device is not None else calibrate()
    costs = {"dense": op_costs(dense, example_inputs), "pruned": op_costs(pruned, example_inputs)}
    times = {name: {kind: model_time(ops, device, fused=kind == "fused") for kind in ("as_run", "fused")}
             for name, ops in costs.items()}
    return {"as_run": times["dense"]["as_run"] / times["pruned"]["as_run"],
            "fused": times["dense"]["fused"] / times["pruned"]["fused"],
            "seconds": times, "device": asdict(device),
            "ops": {name: len(ops) for name, ops in costs.items()},
            "flops": {name: sum(op.flops for op in ops) for name, ops in costs.items()},
            "bytes": {name: sum(op.bytes for op in ops) for name, ops in costs.items()}}
