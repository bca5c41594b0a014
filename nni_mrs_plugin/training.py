"""Plain (natural) training with SGD + cosine schedule and a progress bar: the baseline the adversarial
trainer builds on, and what the foundation job uses to get a dense model worth pruning."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["train_natural"]


def train_natural(model: nn.Module, loader: Iterable, epochs: int, lr: float = 0.05, momentum: float = 0.9,
                  weight_decay: float = 5e-4, device: torch.device | str = "cpu", desc: str = "train",
                  progress: bool = True) -> nn.Module:
    """Cross-entropy training; stops with a clear error naming epoch and step if the loss becomes NaN/inf."""
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps = max(1, epochs * len(loader))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.to(device).train()
    for epoch in range(epochs):
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for step, (x, y) in enumerate(bar):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 20 == 0:
                value = loss.item()
                if not math.isfinite(value):
                    raise FloatingPointError(f"{desc}: loss is {value} at epoch {epoch + 1}, step {step}")
                bar.set_postfix(loss=f"{value:.3f}")
    return model.eval()
