"""The collapse guard of ``fit``: single-step and high-learning-rate adversarial training can fall to chance in one
epoch and never recover (the loss stuck at ln(classes)). When an epoch ends at chance (validation clean accuracy
at most 1/classes + 2 points, or a cross-entropy training loss within 0.005 of ln(classes)) while the run started
above chance, ``fit`` restores the state after the last good epoch (weights, optimizer, schedule, average, RNG),
halves the learning rate and runs the epoch again; after ``retries`` such retries it stops with
``TrainingCollapsedError``, its last checkpoint still the last good epoch.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, Optional

import torch
from torch import nn

from . import distributed

__all__ = ["CollapseGuard", "TrainingCollapsedError", "scale_learning_rate"]

_CE_METHODS = ("pgd", "fast", "nfgsm", "natural")  # whose training loss is a cross-entropy, ln(C) at chance


class TrainingCollapsedError(RuntimeError):
    """Training fell to chance and halving the learning rate did not help."""


def scale_learning_rate(optimizer: torch.optim.Optimizer, schedule: Any, factor: float) -> None:
    """Scale the learning rate now and for the rest of the schedule (LambdaLR's base rates, OneCycleLR's
    initial/max/min rates, all kept in the state dicts a checkpoint saves)."""
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            if key in group:
                group[key] *= factor
    if hasattr(schedule, "base_lrs"):
        schedule.base_lrs = [rate * factor for rate in schedule.base_lrs]


class CollapseGuard:
    """Detects a collapsed epoch and rolls back to the last good one; ``baseline`` is the starting model's clean
    accuracy (the guard stays off when it was at chance already)."""

    def __init__(self, classes: int, baseline: float, method: str, retries: int = 2):
        self.classes, self.baseline, self.retries = classes, baseline, retries
        self.chance = 1 / classes
        self.ce_loss = method in _CE_METHODS
        self._saved: Optional[Dict[str, Any]] = None

    @property
    def armed(self) -> bool:
        return self.baseline > self.chance + 0.02

    def collapsed(self, row: Dict[str, Any]) -> Optional[str]:
        """Why the epoch counts as collapsed, or None."""
        if not self.armed:
            return None
        if "clean_acc" in row and row["clean_acc"] <= self.chance + 0.02:
            return f"validation clean accuracy {row['clean_acc']:.1%} at chance ({self.chance:.1%})"
        if self.ce_loss and abs(row["train_loss"] - math.log(self.classes)) < 0.005:
            return f"training loss stuck at {row['train_loss']:.4f} = ln({self.classes})"
        return None

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any, averaged: Optional[nn.Module],
             ctx: distributed.Context) -> None:
        """Remember the state after a good epoch (or the start), in memory."""
        self._saved = {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict()),
                       "schedule": copy.deepcopy(schedule.state_dict()), "rng": distributed.gather_rng(ctx),
                       "averaged": copy.deepcopy(averaged.state_dict()) if averaged is not None else None}

    def roll_back(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any,
                  averaged: Optional[nn.Module], ctx: distributed.Context, factor: float = 0.5) -> None:
        """Back to the saved state, with the learning rate scaled by ``factor``."""
        model.load_state_dict(self._saved["model"])
        optimizer.load_state_dict(self._saved["optimizer"])
        schedule.load_state_dict(self._saved["schedule"])
        if averaged is not None:
            averaged.load_state_dict(self._saved["averaged"])
        distributed.set_rng(self._saved["rng"], ctx)
        scale_learning_rate(optimizer, schedule, factor)


def starting_point(model: nn.Module, batch: Any, device: torch.device) -> tuple:
    """(classes, clean accuracy) of ``model`` on one training batch, in eval mode (its mode is restored)."""
    was_training = model.training
    x, y = batch[0].to(device), batch[1].to(device)
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    finally:
        model.train(was_training)
    return logits.shape[1], float((logits.argmax(1) == y).float().mean())
