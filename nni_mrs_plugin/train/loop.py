"""The one training loop of the package: an epoch of ``loss_fn(model, x, y)`` steps with SGD + cosine schedule,
a progress bar and a NaN/inf guard that does not synchronise with the device every step.

``train_natural`` (cross-entropy) is the baseline; the adversarial trainer, its NNI ``training_func`` and the
standalone ``fit`` run their steps through ``train_epoch`` too, so all of them fail the same clear way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from ..attacks import outside_pixel_range, pixel_range_error
from ..evaluate import check_labels

__all__ = ["train_natural", "train_epoch", "scheduled_sgd", "SCHEDULES", "cross_entropy_loss", "NonFiniteLossError", "EpochStats"]

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and the step."""


@dataclass
class EpochStats:
    loss: float  # mean training loss over the epoch's steps
    steps: int
    samples: int  # on this process


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


SCHEDULES = ("cosine", "onecycle")


def scheduled_sgd(model: nn.Module, lr: float, total_steps: int, momentum: float = 0.9, weight_decay: float = 5e-4,
                  schedule: str = "cosine") -> Tuple[torch.optim.SGD, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with a per-step learning-rate schedule over ``total_steps``: 'cosine' decays from ``lr`` to 0;
    'onecycle' (torch's ``OneCycleLR``, momentum held) warms up from lr/25 to ``lr`` over the first 30% of the
    steps, then anneals along a cosine to lr/25e4."""
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps = max(1, total_steps)
    if schedule == "onecycle" and steps >= 2:
        return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps + 1,
                                                              pct_start=0.3, cycle_momentum=False)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def _is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def train_epoch(model: nn.Module, loader: Iterable, loss_fn: LossFn, optimizer: torch.optim.Optimizer,
                scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None, *, epoch: int = 1,
                epochs: int = 1, device: torch.device | str = "cpu", desc: str = "train", progress: bool = True,
                log_every: int = 50, max_steps: Optional[int] = None,
                prepare: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                pixels: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                after_step: Optional[Callable[[], None]] = None) -> EpochStats:
    """One pass over ``loader`` (or ``max_steps`` steps), ``epoch`` counted from 1.

    The loss is accumulated and checked for NaN/inf on the device; the host reads it only every ``log_every``
    steps and at the end (under torch.distributed, with one all-reduce so every rank stops together). A bad
    loss raises ``NonFiniteLossError`` naming the exact first bad step, not the step it was noticed at.
    ``scheduler`` is stepped after every optimizer step. ``prepare`` converts inputs (e.g. channels_last).
    ``pixels`` (adversarial training: inputs -> pixels, identity unless the loader normalises) checks, on the
    device and read at the same points, that pixels lie in [0, 1]: otherwise every attack would be wrong.
    ``after_step()`` runs after each optimizer step (e.g. a weight average's update).
    """
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    device = torch.device(device)
    model.train()
    loss_sum = torch.zeros((), device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    bad_value = torch.zeros((), device=device)
    seen_range = torch.tensor([float("inf"), -float("inf")], device=device)  # lowest and highest input seen
    steps = samples = 0

    def check() -> None:
        if pixels is not None and steps:
            extremes = seen_range * torch.tensor([-1.0, 1.0], device=device)  # [-lowest, highest]: one MAX reduce
            if _is_distributed():
                torch.distributed.all_reduce(extremes, op=torch.distributed.ReduceOp.MAX)
            low, high = -extremes[0].item(), extremes[1].item()
            if outside_pixel_range(low, high):
                raise pixel_range_error(low, high, desc)
        flag = first_bad.clone()
        if _is_distributed():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        step = int(flag.item())
        if step >= 0:
            value = bad_value.item() if int(first_bad.item()) == step else float("nan")
            raise NonFiniteLossError(
                f"{desc}: the loss became {value} at epoch {epoch}, step {step} (of this epoch, counted from 0); "
                f"training stopped. Lower the learning rate or check the data, then resume from the last checkpoint"
            )

    bar = tqdm(loader, desc=f"{desc} {epoch}/{epochs}", disable=not progress, leave=False)
    for x, y in bar:
        if max_steps is not None and steps >= max_steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if pixels is not None:
            image = pixels(x)
            seen_range = torch.stack([torch.minimum(seen_range[0], image.min()),
                                      torch.maximum(seen_range[1], image.max())])
        if prepare is not None:
            x = prepare(x)
        if steps == 0:
            check_labels(model, x, y, desc)
        loss = loss_fn(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step()
        detached = loss.detach().float()
        newly_bad = ~torch.isfinite(detached) & (first_bad < 0)
        first_bad = torch.where(newly_bad, steps, first_bad)
        bad_value = torch.where(newly_bad, detached, bad_value)
        loss_sum += torch.nan_to_num(detached)
        steps += 1
        samples += len(y)
        if steps % log_every == 0:
            check()
            bar.set_postfix(loss=f"{loss_sum.item() / steps:.3f}")
    check()
    return EpochStats(loss=loss_sum.item() / max(steps, 1), steps=steps, samples=samples)


def train_natural(model: nn.Module, loader: Iterable, epochs: int, lr: float = 0.05, momentum: float = 0.9,
                  weight_decay: float = 5e-4, device: torch.device | str = "cpu", desc: str = "train",
                  progress: bool = True) -> nn.Module:
    """Cross-entropy training; stops with a clear error naming epoch and step if the loss becomes NaN/inf."""
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    optimizer, schedule = scheduled_sgd(model, lr, epochs * len(loader), momentum, weight_decay)
    model.to(device)
    for epoch in range(1, epochs + 1):
        train_epoch(model, loader, cross_entropy_loss, optimizer, schedule, epoch=epoch, epochs=epochs,
                    device=device, desc=desc, progress=progress, log_every=20)
    return model.eval()
