"""Module Robustness Sensitivity (MRS): how much the adversarial loss L(theta) = CE(f(X'), Y) rises when one
unit is disturbed. Three estimators behind one call, ``estimator(model, units, x_adv, y) -> {unit: MRS}``:

- ``weight``: the largest rise of L within ||Delta_u|| <= rho ||W_u||, by T steps of normalised gradient
  ascent with projection; weights are restored bit for bit.
- ``probe``: the rise of L when the unit's least important channels (fraction p, by the pruning criterion)
  are removed as ModelSpeedup removes them (the following BatchNorm's output is zeroed too).
- ``taylor``: sum |grad_W L * W| over the unit, divided by its size; one backward pass for all units.

The formulation is this project's own (see docs/method.md): the MRPF paper's text was not available.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibration import mean_loss
from ..nni.speedup import mask_like_removal
from .units import Unit

__all__ = ["Estimator", "WeightMRS", "ProbeMRS", "TaylorMRS", "ESTIMATORS", "CRITERIA", "build_estimator",
           "channel_importance", "weight_gradients"]

CRITERIA = ("l1", "l2", "fpgm", "taylor")


def _unit_params(model: nn.Module, unit: Unit) -> List[nn.Parameter]:
    modules = dict(model.named_modules())
    return [p for layer in unit.layers for p in modules[layer].parameters(recurse=False)]


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


class Estimator:
    """Common interface: subclasses compute one MRS value per unit, in eval mode, leaving the model unchanged."""

    name = ""
    options: Tuple[str, ...] = ()  # constructor options a config may set (the job passes exactly these)

    def __init__(self, batch_size: int = 256, progress: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.progress = progress
        self.gradients: Dict[str, torch.Tensor] = {}  # adversarial weight gradients of the last call, if it took any

    def __call__(self, model: nn.Module, units: Sequence[Unit], x_adv: torch.Tensor, y: torch.Tensor,
                 graph_module: Optional[torch.fx.GraphModule] = None) -> Dict[str, float]:
        if len(x_adv) == 0:
            raise ValueError("calibration data is empty: 0 adversarial samples")
        was_training = model.training
        model.eval()
        try:
            return self.estimate(model, units, x_adv, y, graph_module)
        finally:
            model.train(was_training)

    def estimate(self, model, units, x_adv, y, graph_module) -> Dict[str, float]:
        raise NotImplementedError

    def _loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(mean_loss(model, x, y, self.batch_size))

    def _bar(self, units: Sequence[Unit]):
        return tqdm(units, desc=f"MRS ({self.name})", disable=not self.progress, leave=False)


class WeightMRS(Estimator):
    """max over ||Delta_u||_2 <= rho ||W_u||_2 of L(theta + Delta_u) - L(theta)."""

    name = "weight"
    options = ("rho", "steps")

    def __init__(self, rho: float = 0.1, steps: int = 5, **kwargs):
        super().__init__(**kwargs)
        if not rho > 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.rho, self.steps = rho, steps

    def estimate(self, model, units, x_adv, y, graph_module):
        params = list(model.parameters())
        flags = [p.requires_grad for p in params]
        unit_params = {unit.name: _unit_params(model, unit) for unit in units}
        scores = {}
        try:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
            for group in unit_params.values():  # the gradient at Delta = 0 is shared: one backward for all
                for p in group:
                    p.requires_grad_(True)
            base = float(mean_loss(model, x_adv, y, self.batch_size, grad=True))
            first = {name: [p.grad.clone() for p in group] for name, group in unit_params.items()}
            for group in unit_params.values():
                for p in group:
                    p.requires_grad_(False)
                    p.grad = None
            for unit in self._bar(units):
                scores[unit.name] = self._ascend(model, unit_params[unit.name], first[unit.name], x_adv, y) - base
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
                p.grad = None
        return scores

    def _ascend(self, model, group, grads, x_adv, y) -> float:
        saved = [p.detach().clone() for p in group]
        radius = self.rho * torch.sqrt(sum(w.pow(2).sum() for w in saved))
        step = 2.5 * radius / self.steps
        delta = [torch.zeros_like(w) for w in saved]
        best = -float("inf")
        try:
            for t in range(self.steps):
                norm = torch.sqrt(sum(g.pow(2).sum() for g in grads)).clamp_min(1e-12)
                delta = [d + step * g / norm for d, g in zip(delta, grads)]
                size = torch.sqrt(sum(d.pow(2).sum() for d in delta))
                if size > radius:
                    delta = [d * (radius / size) for d in delta]
                last = t == self.steps - 1
                with torch.no_grad():
                    for p, w, d in zip(group, saved, delta):
                        p.copy_(w + d)
                for p in group:
                    p.requires_grad_(not last)
                best = max(best, float(mean_loss(model, x_adv, y, self.batch_size, grad=not last)))
                if not last:
                    grads = [p.grad.clone() for p in group]
                    for p in group:
                        p.grad = None
        finally:
            with torch.no_grad():
                for p, w in zip(group, saved):
                    p.requires_grad_(False)
                    p.grad = None
                    p.copy_(w)
        return best


class ProbeMRS(Estimator):
    """L(theta with fraction p of unit u's channels removed by the criterion) - L(theta); forward passes only."""

    name = "probe"

    def __init__(self, ratio: float = 0.5, criterion: str = "l1", **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"probe ratio must be in (0, 1), got {ratio}")
        if criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
        self.ratio, self.criterion = ratio, criterion

    def estimate(self, model, units, x_adv, y, graph_module):
        from ..nni.speedup import trace

        graph_module = graph_module if graph_module is not None else trace(model, x_adv[:1])
        modules = dict(model.named_modules())
        grads = {}
        if self.criterion == "taylor":
            grads = weight_gradients(model, [layer for unit in units for layer in unit.layers], x_adv, y,
                                     self.batch_size)
        self.gradients = grads
        base = self._loss(model, x_adv, y)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        scores = {}
        try:
            for unit in self._bar(units):
                masks = self.unit_masks(modules, unit, grads)
                mask_like_removal(model, masks, None, graph_module=graph_module)
                scores[unit.name] = self._loss(model, x_adv, y) - base
                model.load_state_dict(state)
        finally:
            model.load_state_dict(state)
        return scores

    def unit_masks(self, modules, unit: Unit, grads) -> Dict[str, Dict[str, torch.Tensor]]:
        """The unit's weight masks at the probe ratio; group members share one mean-fused importance."""
        scores = torch.stack([channel_importance(modules[layer].weight, self.criterion, grads.get(layer))
                              for layer in unit.layers]).mean(0).view(unit.block, -1)
        count = int(unit.per_block * self.ratio)
        keep = torch.ones_like(scores)
        keep.scatter_(1, scores.topk(count, dim=1, largest=False).indices, 0.0)
        keep = keep.flatten()
        return {layer: {"weight": keep.view(-1, *[1] * (modules[layer].weight.dim() - 1))
                        .expand_as(modules[layer].weight).clone()} for layer in unit.layers}


class TaylorMRS(Estimator):
    """First-order: sum |grad_W L * W| over the unit's weights, divided by their number."""

    name = "taylor"

    def estimate(self, model, units, x_adv, y, graph_module):
        modules = dict(model.named_modules())
        layers = [layer for unit in units for layer in unit.layers]
        grads = self.gradients = weight_gradients(model, layers, x_adv, y, self.batch_size)
        scores = {}
        for unit in units:
            total = sum(float((grads[layer] * modules[layer].weight.detach()).abs().sum()) for layer in unit.layers)
            size = sum(modules[layer].weight.numel() for layer in unit.layers)
            scores[unit.name] = total / size
        return scores


ESTIMATORS: Dict[str, Type[Estimator]] = {cls.name: cls for cls in (WeightMRS, ProbeMRS, TaylorMRS)}


def build_estimator(estimator, **options) -> Estimator:
    """An estimator instance from a name in ``ESTIMATORS`` (options go to its constructor) or an instance."""
    if isinstance(estimator, Estimator):
        return estimator
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[estimator](**options)
