"""Module Robustness Sensitivity (MRS): how much the adversarial loss L(theta) = CE(f(X'), Y) rises when one
unit is disturbed. Five estimators behind one call, ``estimator(model, units, x_adv, y, x=clean) -> {unit: MRS}``:

- ``weight``: the largest rise of L within ||Delta_u|| <= rho ||W_u||, by T steps of normalised gradient
  ascent with projection; Delta = 0 is in the ball, so MRS >= 0. Weights are restored bit for bit.
- ``probe``: the rise of L when the unit's least important channels (fraction p, by the pruning criterion)
  are removed as ModelSpeedup removes them (the following BatchNorm's output is zeroed too).
- ``curve``: the probe at every ratio of a grid (``curves.loss_curves``); the score is the curve's mean, and
  the curves themselves (``.curves``) feed the cost-aware ``budget`` allocation rule.
- ``taylor``: sum |grad_W L * W| over the unit, divided by its size; one backward pass for all units.
- ``feature``: ||f_u(X') - f_u(X)|| / ||f_u(X)||, how much the attack moves the unit's output.

The formulation is this project's own (see docs/method.md): the MRPF paper's text was not available.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn
from tqdm.auto import tqdm

from .curves import DEFAULT_RATIOS, check_ratios, loss_curves
from ..evaluate import mean_loss
from ..budget.importance import CRITERIA, channel_importance, weight_gradients
from ..budget.units import Unit

__all__ = ["Estimator", "WeightMRS", "ProbeMRS", "CurveMRS", "TaylorMRS", "FeatureMRS", "ESTIMATORS", "CRITERIA",
           "build_estimator", "channel_importance", "weight_gradients", "curve_scores"]


def curve_scores(curves: Dict[str, Sequence[float]]) -> Dict[str, float]:
    """One MRS number per unit from its loss-rise curve: the curve's mean (what the power rule reads)."""
    return {name: sum(curve) / len(curve) for name, curve in curves.items()}


def _unit_params(model: nn.Module, unit: Unit) -> List[nn.Parameter]:
    modules = dict(model.named_modules())
    return [p for layer in unit.layers for p in modules[layer].parameters(recurse=False)]


class Estimator:
    """Common interface: subclasses compute one MRS value per unit, in eval mode, leaving the model unchanged."""

    name = ""
    options: Tuple[str, ...] = ()  # its constructor options (an old flat config key maps to these: job/legacy.py)
    needs_clean = False  # True where the estimate reads the clean samples x, not only X'

    def __init__(self, batch_size: int = 256, progress: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.progress = progress
        self.gradients: Dict[str, torch.Tensor] = {}  # adversarial weight gradients of the last call, if it took any
        self.clean: Optional[torch.Tensor] = None  # the clean samples during a call, if given
        self.attack: Optional[Callable[[nn.Module], torch.Tensor]] = None  # X' for another model, during a call

    def __call__(self, model: nn.Module, units: Sequence[Unit], x_adv: torch.Tensor, y: torch.Tensor,
                 graph_module: Optional[torch.fx.GraphModule] = None, x: Optional[torch.Tensor] = None,
                 attack: Optional[Callable[[nn.Module], torch.Tensor]] = None) -> Dict[str, float]:
        """One MRS value per unit. ``x``: the clean samples X' was made from; ``attack(m)``: the calibration
        attack re-run on ``m`` (the model masked in place), for estimators that re-attack each probe."""
        if len(x_adv) == 0:
            raise ValueError("calibration data is empty: 0 adversarial samples")
        if self.needs_clean and x is None:
            raise ValueError(f"the {self.name!r} estimator needs the clean calibration samples x as well as X'")
        self.clean, self.attack = x, attack
        was_training = model.training
        model.eval()
        try:
            return self.estimate(model, units, x_adv, y, graph_module)
        finally:
            self.clean = self.attack = None  # the calibration set is not kept alive between calls
            model.train(was_training)

    def estimate(self, model, units, x_adv, y, graph_module) -> Dict[str, float]:
        raise NotImplementedError

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
                # Delta = 0 is inside the ball, so the maximum is at least the unperturbed loss: MRS >= 0
                best = self._ascend(model, unit_params[unit.name], first[unit.name], x_adv, y)
                scores[unit.name] = max(best - base, 0.0)
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
    options = ("recalibrate",)
    reattack = False  # CurveMRS: re-run the attack on every probed model (the call's ``attack``)

    def __init__(self, ratio: float = 0.5, criterion: str = "l1", recalibrate: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"probe ratio must be in (0, 1), got {ratio}")
        if criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
        self.ratios, self.criterion, self.recalibrate = (ratio,), criterion, bool(recalibrate)
        self.needs_clean = self.recalibrate
        self.curves: Dict[str, List[float]] = {}

    def estimate(self, model, units, x_adv, y, graph_module):
        grads = {}
        if self.criterion == "taylor":
            grads = weight_gradients(model, [layer for unit in units for layer in unit.layers], x_adv, y,
                                     self.batch_size)
        self.gradients = grads
        adversarial = x_adv
        if self.reattack:
            if self.attack is None:
                raise ValueError("reattack=True needs the calibration attack: pass attack=(model -> X') to the call, "
                                 "as MRSSparsityAllocator does")
            adversarial = self.attack
        self.curves = loss_curves(model, units, adversarial, y, self.ratios, self.criterion, graph_module, grads,
                                  self.clean, self.recalibrate, self.batch_size, self.progress, f"MRS ({self.name})")
        return curve_scores(self.curves)


class CurveMRS(ProbeMRS):
    """The probe at every ratio of a grid: ``.curves`` holds Delta L_u(r); the score is the curve's mean."""

    name = "curve"

    def __init__(self, ratios: Sequence[float] = DEFAULT_RATIOS, criterion: str = "l1", recalibrate: bool = False,
                 reattack: bool = False, **kwargs):
        super().__init__(0.5, criterion, recalibrate, **kwargs)
        self.ratios = check_ratios(ratios)
        self.reattack = bool(reattack)


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


class FeatureMRS(Estimator):
    """||f_u(X') - f_u(X)|| / ||f_u(X)|| over the calibration set, averaged over the unit's layers: how far the
    attack moves what the unit computes (another reading of "sensitivity to adversarial perturbations")."""

    name = "feature"
    needs_clean = True

    def estimate(self, model, units, x_adv, y, graph_module):
        modules = dict(model.named_modules())
        layers = sorted({layer for unit in units for layer in unit.layers})
        outputs: Dict[str, torch.Tensor] = {}
        hooks = [modules[layer].register_forward_hook(
            lambda module, args, out, layer=layer: outputs.__setitem__(layer, out.detach())) for layer in layers]
        change = dict.fromkeys(layers, 0.0)
        size = dict.fromkeys(layers, 0.0)
        try:
            with torch.no_grad():
                for start in range(0, len(x_adv), self.batch_size):
                    model(self.clean[start:start + self.batch_size])
                    clean = dict(outputs)
                    model(x_adv[start:start + self.batch_size])
                    for layer in layers:
                        change[layer] += float((outputs[layer] - clean[layer]).pow(2).sum())
                        size[layer] += float(clean[layer].pow(2).sum())
        finally:
            for hook in hooks:
                hook.remove()
        relative = {layer: (change[layer] / max(size[layer], 1e-30)) ** 0.5 for layer in layers}
        return {unit.name: sum(relative[layer] for layer in unit.layers) / len(unit.layers) for unit in units}


ESTIMATORS: Dict[str, Type[Estimator]] = {
    cls.name: cls for cls in (WeightMRS, ProbeMRS, CurveMRS, TaylorMRS, FeatureMRS)}


def build_estimator(estimator, **options) -> Estimator:
    """An estimator instance from a name in ``ESTIMATORS`` (options go to its constructor) or an instance."""
    if isinstance(estimator, Estimator):
        return estimator
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[estimator](**options)
