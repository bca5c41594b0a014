"""What pruning buys: parameter count, FLOPs (counted by ``torch.utils.flop_counter``), latency, accuracy."""
from __future__ import annotations

import statistics
import time
from typing import Any, Iterable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_flops", "measure_latency", "accuracy"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, dummy_input: Any) -> int:
    """FLOPs of one forward pass at the dummy input's shape (a multiply-add counts 2), eval mode."""
    args = dummy_input if isinstance(dummy_input, tuple) else (dummy_input,)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(*args)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@torch.no_grad()
def measure_latency(model: nn.Module, dummy_input: torch.Tensor, warmup: int = 5, runs: int = 20) -> float:
    """Median wall-clock milliseconds of one forward pass (CUDA events on GPU), after ``warmup`` passes."""
    if warmup < 0 or runs < 1:
        raise ValueError(f"need warmup >= 0 and runs >= 1, got {warmup} and {runs}")
    was_training = model.training
    model.eval()
    cuda = dummy_input.is_cuda
    times = []
    try:
        for i in range(warmup + runs):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(dummy_input)
                end.record()
                torch.cuda.synchronize()
                elapsed = start.elapsed_time(end)
            else:
                t0 = time.perf_counter()
                model(dummy_input)
                elapsed = (time.perf_counter() - t0) * 1000.0
            if i >= warmup:
                times.append(elapsed)
    finally:
        model.train(was_training)
    return statistics.median(times)


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu") -> float:
    """Clean top-1 accuracy in [0, 1] over a loader."""
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            correct += (model(x).argmax(1) == y).sum().item()
            total += y.numel()
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("accuracy: the loader yielded no samples")
    return correct / total
