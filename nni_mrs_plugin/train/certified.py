"""Certified (verifiable) training by interval bound propagation, so that Sehwag et al.'s rule, one robust
objective for pre-training and fine-tuning, holds for verified robustness too.

The loss is IBP's (Gowal et al. 2018): κ · CE(z(x), y) + (1 − κ) · CE(ẑ(x, ε), y), where ẑ takes the true
class's lower bound and every other class's upper bound over the ε-ball (``bounds.py``). The schedule is theirs
as CROWN-IBP (Zhang et al. 2020) runs it: ε is 0 for a warm-up, then grows linearly to its target over a ramp, and
κ falls from 1 to ``kappa_end`` (0.5, Gowal et al.) over the same ramp; both hold afterwards. The warm-up and the
ramp are fractions of the training run (default 0.1 and 0.4: CROWN-IBP's MNIST schedule, ε from epoch 10 to 50 of
100). ``fit`` tells the objective where the run is at every epoch, so a resumed run follows the same schedule;
without it (NNI's ``TorchEvaluator``), or outside training mode (calibration, HARP), ε and κ are at their targets.
"""
from __future__ import annotations

from typing import Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import check_pixel_range
from ..bounds import IntervalBounds

__all__ = ["CertifiedObjective", "SCHEDULE_KEYS"]

SCHEDULE_KEYS = ("warmup", "ramp", "kappa_end")


class CertifiedObjective:
    """IBP's training loss with its ε and κ schedule; ``at_step(step, total)`` sets where the run is."""

    def __init__(self, eps: float, warmup: float = 0.1, ramp: float = 0.4, kappa_end: float = 0.5,
                 normalization: Optional[tuple] = None):
        for name, value in (("warmup", warmup), ("ramp", ramp), ("kappa_end", kappa_end)):
            if not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise ValueError(f"ibp {name} must be in [0, 1], got {value!r}")
        if warmup + ramp > 1:
            raise ValueError(f"ibp warmup + ramp must be at most 1 (fractions of the run), got {warmup} + {ramp}")
        self.eps, self.warmup, self.ramp, self.kappa_end = float(eps), float(warmup), float(ramp), float(kappa_end)
        self.normalization = normalization
        self.step: int = 0
        self.total: Optional[int] = None
        self._bounds: Optional[Tuple[nn.Module, IntervalBounds]] = None
        self._checked = False

    @classmethod
    def build(cls, eps: float, schedule: Optional[Mapping[str, float]], normalization: Optional[tuple] = None
              ) -> "CertifiedObjective":
        """From ``AdversarialTrainer``'s ``ibp=`` mapping: an unknown key is a one-line error."""
        unknown = sorted(set(schedule or {}) - set(SCHEDULE_KEYS))
        if unknown:
            raise ValueError(f"ibp: unknown key {unknown[0]!r}; the schedule takes {', '.join(SCHEDULE_KEYS)}")
        return cls(eps, normalization=normalization, **dict(schedule or {}))

    def settings(self) -> dict:
        return {"warmup": self.warmup, "ramp": self.ramp, "kappa_end": self.kappa_end}

    def at_step(self, step: int, total: int) -> None:
        """The run is at optimiser step ``step`` of ``total``; each training-mode loss counts one more."""
        self.step, self.total = int(step), int(total)

    def schedule(self, training: bool) -> Tuple[float, float]:
        """(ε, κ) now: the ramp's point in training mode when the run's length is known, else the targets."""
        if not training or not self.total:
            return self.eps, self.kappa_end
        done = self.step / self.total
        progress = 0.0 if done < self.warmup else 1.0 if self.ramp == 0 else min(1.0, (done - self.warmup) / self.ramp)
        return self.eps * progress, 1.0 - (1.0 - self.kappa_end) * progress

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self._checked:  # once: a loader that normalises would put the ball in the wrong space
            from ..attacks import PixelSpace

            check_pixel_range(x, "AdversarialTrainer('ibp')", PixelSpace(self.normalization))
            self._checked = True
        eps, kappa = self.schedule(model.training)
        if model.training:
            self.step += 1
        natural = F.cross_entropy(model(x), y)
        if eps == 0 or kappa == 1:
            return natural
        inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model  # fx traces it
        if self._bounds is None or self._bounds[0] is not inner:
            self._bounds = (inner, IntervalBounds(inner, self.normalization, training=True))
        lower, upper = self._bounds[1](x, eps)
        worst = upper.scatter(1, y.view(-1, 1), lower.gather(1, y.view(-1, 1)))
        return kappa * natural + (1 - kappa) * F.cross_entropy(worst, y)
