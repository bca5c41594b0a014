"""Sensitivity curves: the rise of the adversarial loss, Delta L_u(r), when a fraction r of unit u's channels is
removed (by the pruning criterion, with ``mask_like_removal``'s removal semantics) and nothing else changes.

One curve per unit over a grid of ratios is what the cost-aware ``budget`` rule trades against what each
unit's channels cost; one point of it is the ``probe`` estimator. Forward passes only (plus one backward for the
Taylor criterion). ``x_adv`` may be a callable ``model -> X'`` to re-run the attack on every pruned model
instead of reusing the dense model's X'.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from ..host.speedup import mask_like_removal, recalibrate_batchnorm, trace
from ..evaluate import mean_loss
from ..budget.importance import unit_keep_masks
from ..budget.units import Unit

__all__ = ["DEFAULT_RATIOS", "check_ratios", "prune_count", "loss_curves"]

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
Adversarial = Union[torch.Tensor, Callable[[nn.Module], torch.Tensor]]


def check_ratios(ratios: Sequence[float]) -> tuple:
    """The grid as a sorted tuple; a clear error for an empty grid or a ratio outside (0, 1)."""
    values = tuple(float(r) for r in ratios)
    bad = [r for r in values if not (math.isfinite(r) and 0.0 < r < 1.0)]
    if not values or bad:
        raise ValueError(f"curve ratios must be a non-empty list of numbers in (0, 1), got {list(ratios)}")
    return tuple(sorted(set(values)))


def prune_count(unit: Unit, ratio: float) -> int:
    """Channels per block removed at ``ratio``, as NNI counts them (floor), always keeping one per block."""
    return min(int(unit.per_block * ratio + 1e-9), unit.per_block - 1)


def loss_curves(model: nn.Module, units: Sequence[Unit], x_adv: Adversarial, y: torch.Tensor,
                ratios: Sequence[float] = DEFAULT_RATIOS, criterion: str = "l1",
                graph_module: Optional[torch.fx.GraphModule] = None,
                grads: Optional[Mapping[str, torch.Tensor]] = None, x: Optional[torch.Tensor] = None,
                recalibrate: bool = False, batch_size: int = 256, progress: bool = False,
                desc: str = "MRS curves") -> Dict[str, List[float]]:
    """{unit: [L(theta with ratio r of u removed) - L(theta) for r in ratios]}, in eval mode; the model (BatchNorm
    statistics included) is restored exactly. With ``recalibrate`` each pruned model's BatchNorm statistics are
    re-estimated on the clean samples ``x`` first (adaptive BN), as they would be after real removal."""
    ratios = check_ratios(ratios)
    if recalibrate and x is None:
        raise ValueError("recalibrate=True needs the clean calibration samples x")
    if isinstance(x_adv, torch.Tensor) and len(x_adv) == 0:
        raise ValueError("calibration data is empty: 0 adversarial samples")
    was_training = model.training
    model.eval()
    modules = dict(model.named_modules())
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def loss() -> float:
        data = x_adv(model) if callable(x_adv) else x_adv
        return float(mean_loss(model, data, y, batch_size))

    try:
        if graph_module is None:
            sample = x if x is not None else x_adv if isinstance(x_adv, torch.Tensor) else None
            if sample is None:
                raise ValueError("need graph_module, or clean samples x to trace the model with")
            graph_module = trace(model, sample[:1])
        base = loss()
        curves: Dict[str, List[float]] = {}
        for unit in tqdm(units, desc=desc, disable=not progress, leave=False):
            curve = []
            for ratio in ratios:
                masks = unit_keep_masks(modules, unit, prune_count(unit, ratio), criterion, grads)
                mask_like_removal(model, masks, None, graph_module=graph_module)
                if recalibrate:
                    recalibrate_batchnorm(model, x, batch_size)
                    model.eval()
                curve.append(loss() - base)
                model.load_state_dict(state)
            curves[unit.name] = curve
        return curves
    finally:
        model.load_state_dict(state)
        model.train(was_training)
