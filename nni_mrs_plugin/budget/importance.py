"""Channel importance: which output channels of a unit go first. The criteria match NNI's pruners (a test keeps
the rankings equal); Taylor uses adversarial weight gradients, so it needs ``weight_gradients``.

Kept apart from sensitivity (how much a unit matters) as Torch-Pruning keeps importance apart from its pruners:
the probe and curve estimators, the global L1 ranking and the pruner all rank channels here.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch
from torch import nn

from ..evaluate import mean_loss
from .units import Unit

__all__ = ["CRITERIA", "channel_importance", "weight_gradients", "unit_keep_masks"]

CRITERIA = ("l1", "l2", "fpgm", "taylor")


def weight_gradients(model: nn.Module, layers: Sequence[str], x: torch.Tensor, y: torch.Tensor,
                     batch_size: int = 256) -> Dict[str, torch.Tensor]:
    """Gradient of the mean loss on (x, y) w.r.t. each layer's weight; other parameters get no gradient. In eval
    mode, so BatchNorm uses its running statistics and keeps them: measuring must not change the model."""
    modules = dict(model.named_modules())
    params = list(model.parameters())
    saved = [(p, p.requires_grad, p.grad) for p in params]
    was_training = model.training
    model.eval()
    try:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        for layer in layers:
            modules[layer].weight.requires_grad_(True)
        mean_loss(model, x, y, batch_size, grad=True)
        return {layer: modules[layer].weight.grad.detach().clone() for layer in layers}
    finally:
        model.train(was_training)
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad


def channel_importance(weight: torch.Tensor, criterion: str, grad: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One score per output channel (dim 0); the lowest are pruned first, as NNI's pruners do.

    NNI's own metrics (``norm_metrics``, ``fpgm_metrics``) need a wrapped pruner's target spaces; this raw-weight
    form serves where none is wrapped (the probe estimator, the global ranking). A test keeps both rankings equal."""
    rows = weight.detach().flatten(1)
    if criterion == "l1":
        return rows.abs().sum(1)
    if criterion == "l2":
        return rows.norm(dim=1)
    if criterion == "fpgm":
        return torch.cdist(rows, rows).sum(1)
    if criterion == "taylor":
        if grad is None:
            raise ValueError("the taylor criterion needs adversarial gradients")
        return (rows * grad.flatten(1)).pow(2).sum(1)
    raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")


def unit_keep_masks(modules: Mapping[str, nn.Module], unit: Unit, count: int, criterion: str,
                    grads: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, Dict[str, torch.Tensor]]:
    """NNI-style weight masks removing the ``count`` least important channels of each block of ``unit``; the
    group's members share one mean-fused importance, as NNI's ``generate_sparsity`` fuses a dependency group."""
    grads = grads or {}
    scores = torch.stack([channel_importance(modules[layer].weight, criterion, grads.get(layer))
                          for layer in unit.layers]).mean(0).view(unit.block, -1)
    keep = torch.ones_like(scores)
    if count > 0:
        keep.scatter_(1, scores.topk(count, dim=1, largest=False).indices, 0.0)
    keep = keep.flatten()
    return {layer: {"weight": keep.view(-1, *[1] * (modules[layer].weight.dim() - 1))
                    .expand_as(modules[layer].weight).clone()} for layer in unit.layers}
