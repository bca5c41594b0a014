"""Learnable channel gates, the object HARP trains: per unit one keep rate (how many channels stay) and per channel
one score (which ones), applied to the unit's layers by forward hooks so the model itself is never rebuilt.

The forward pass keeps, in each block of a unit, the ``floor(rate * per_block)`` channels with the largest |score|
and lets the next one through at the fractional part of ``rate * per_block``: a mask that is 0/1 but for one
channel per block, so the loss is interpolated linearly between whole channel counts and differentiable in the
rate. Gradients: the mask's gradient g passes straight through to the scores (HARP's rule), and the rate gets the
exact derivative of that interpolation, per_block x g of the partial channel, summed over blocks: the first-order
loss change of keeping one channel more. (HARP passes sum(g) over all channels to the rate; g of a kept channel
measures scaling it beyond 1, and g of a pruned one is zero behind a ReLU, so that sum can point the wrong way.)
The model runs in eval mode while the gates learn, the attack's passes included: train-mode BatchNorm would
renormalise a partial channel back to full scale (and move the model's running statistics). The rate is a sigmoid of a free parameter between the unit's bounds, so it never leaves them.
docs/method.md states the objective.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence

import torch
from torch import nn

from ..budget.cost import CostModel
from ..budget.units import Unit

__all__ = ["ChannelGates", "resource_loss"]


class _TopK(torch.autograd.Function):
    """Top-scored channels per block row, the next one at the fractional part; see the module docstring."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        per_block = scores.shape[1]
        count = min(max(float(rate) * per_block, 1.0), float(per_block))
        whole = min(int(count), per_block - 1)
        order = scores.argsort(dim=1, descending=True)
        mask = torch.zeros_like(scores)
        mask.scatter_(1, order[:, :whole], 1.0)
        mask.scatter_(1, order[:, whole:whole + 1], count - whole)
        ctx.save_for_backward(order[:, whole:whole + 1])
        return mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (partial,) = ctx.saved_tensors
        return grad, grad.gather(1, partial).sum() * grad.shape[1]


def _logit(p: float) -> float:
    p = min(max(p, 1e-3), 1 - 1e-3)
    return float(torch.logit(torch.tensor(p)))


class ChannelGates(nn.Module):
    """Scores and keep rates for ``units``; ``attach(model)`` makes the model's forward use their masks."""

    def __init__(self, units: Sequence[Unit], keep: Mapping[str, float], scores: Mapping[str, torch.Tensor]):
        super().__init__()
        self.units: List[Unit] = list(units)
        self.low = {u.name: 1.0 - u.max_pruned_per_block() / u.per_block for u in self.units}
        self.high = {u.name: 1.0 - u.min_pruned_per_block() / u.per_block for u in self.units}
        self.scores = nn.ParameterList()
        self.logits = nn.ParameterList()
        for unit in self.units:
            span = max(self.high[unit.name] - self.low[unit.name], 1e-9)
            start = (keep[unit.name] - self.low[unit.name]) / span
            self.logits.append(nn.Parameter(torch.tensor(_logit(start))))
            values = scores[unit.name].detach().float().reshape(unit.block, unit.per_block)
            self.scores.append(nn.Parameter(values / values.abs().mean().clamp_min(1e-12)))  # scale-free start
        self._handles: list = []

    def rate(self, index: int) -> torch.Tensor:
        name = self.units[index].name
        return self.low[name] + (self.high[name] - self.low[name]) * torch.sigmoid(self.logits[index])

    def rates(self) -> Dict[str, float]:
        """Each unit's current keep rate (fraction of its channels kept)."""
        return {unit.name: self.rate(i).item() for i, unit in enumerate(self.units)}

    def mask(self, index: int) -> torch.Tensor:
        return _TopK.apply(self.scores[index].abs(), self.rate(index)).flatten()

    def kept_channels(self) -> Dict[str, torch.Tensor]:
        """Continuous kept channel counts, differentiable in the rates: what the resource loss prices."""
        return {unit.name: self.rate(i) * unit.channels for i, unit in enumerate(self.units)}

    def pruned_counts(self) -> Dict[str, int]:
        """Channels pruned per block at the current rates, as the hard masks prune them."""
        counts = {}
        for i, unit in enumerate(self.units):
            kept = min(max(math.floor(self.rate(i).item() * unit.per_block + 0.5), 1), unit.per_block)
            counts[unit.name] = min(max(unit.per_block - kept, unit.min_pruned_per_block()),
                                    unit.max_pruned_per_block())
        return counts

    def channel_scores(self) -> Dict[str, torch.Tensor]:
        """|score| per output channel of each unit (dim 0 of its layers' weights), detached."""
        return {unit.name: self.scores[i].detach().abs().flatten() for i, unit in enumerate(self.units)}

    def attach(self, model: nn.Module) -> None:
        """Multiply each unit layer's output channels by the unit's mask on every forward pass."""
        self.detach()
        modules = dict(model.named_modules())
        for index, unit in enumerate(self.units):
            for layer in unit.layers:
                linear = isinstance(modules[layer], nn.Linear)
                self._handles.append(modules[layer].register_forward_hook(self._hook(index, linear)))

    def _hook(self, index: int, linear: bool):
        def scale(output: torch.Tensor) -> torch.Tensor:
            mask = self.mask(index).to(output.dtype)
            return mask if linear else mask.view(1, -1, *[1] * (output.dim() - 2))

        def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
            return output * scale(output)
        hook.interval_scale = scale  # a mask in [0, 1]: interval bounds (certified training) scale both ends
        return hook

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def resource_loss(gates: ChannelGates, cost: CostModel, target: float, budget: str = "flops") -> torch.Tensor:
    """HARP's resource term on the exact cost model of the sped-up model: how far (relative) the kept budget is
    above what the target leaves, max(kept / (1 - target) - 1, 0); zero once the rates meet the target."""
    kept = cost.cost(gates.kept_channels(), budget) / cost.dense[budget]
    return torch.relu(kept / (1.0 - target) - 1.0)
