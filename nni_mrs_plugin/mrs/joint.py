"""The ``joint`` rule: per-unit prune counts chosen on the measured adversarial loss of the jointly pruned model.

The ``budget`` rule adds single-unit loss curves measured around the dense model, but the loss of the model pruned
everywhere at once need not be that sum (docs/benchmarks.md measures how far it is), so the rule can steer to
where additivity fails. This rule measures around the operating point instead,
as NetAdapt (Yang et al., ECCV 2018) does with accuracy: in each of ``steps`` rounds every unit proposes removing
just enough more of its channels to save another 1/steps of the target, each proposal is measured with every
unit's channels removed at once (removal-equivalent masking, adaptive BN on the clean samples), and the proposal
with the smallest loss rise per unit of budget saved is taken. About ``steps`` x units probes: as many as the
``budget`` rule's curves on their default grid of 9 ratios when ``steps`` is 9. See docs/method.md.
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from ..host.speedup import mask_like_removal, recalibrate_batchnorm
from ..evaluate import mean_loss
from ..budget.problem import BudgetProblem
from ..budget.units import Unit
from ..budget.importance import unit_keep_masks

__all__ = ["JointLoss", "allocate_jointly"]


class JointLoss:
    """``loss(counts)``: the mean loss on (X', Y) with ``counts[unit]`` channels per block of every unit removed at
    once (by ``criterion``, ranked on the unpruned weights), after adaptive BN on the clean ``x`` when
    ``recalibrate``; the model, BatchNorm statistics included, is restored after every call."""

    def __init__(self, model: nn.Module, units: Sequence[Unit], x: torch.Tensor, x_adv: torch.Tensor,
                 y: torch.Tensor, criterion: str, graph_module: torch.fx.GraphModule,
                 grads: Optional[Mapping[str, torch.Tensor]] = None, recalibrate: bool = True,
                 batch_size: int = 256):
        if len(x_adv) == 0:
            raise ValueError("calibration data is empty: 0 adversarial samples")
        self.model, self.units, self.graph_module = model, {u.name: u for u in units}, graph_module
        self.x, self.x_adv, self.y, self.batch_size = x, x_adv, y, batch_size
        self.criterion, self.grads, self.recalibrate = criterion, grads, recalibrate
        self.calls = 0
        self._modules = dict(model.named_modules())
        self._masks: Dict[Tuple[str, int], Dict] = {}  # a unit's masks depend on its own count only

    def _unit_masks(self, name: str, count: int) -> Dict[str, Dict[str, torch.Tensor]]:
        if (name, count) not in self._masks:  # ranked on the unpruned weights: every call restores them
            self._masks[(name, count)] = unit_keep_masks(self._modules, self.units[name], count, self.criterion,
                                                         self.grads)
        return self._masks[(name, count)]

    @torch.no_grad()
    def __call__(self, counts: Mapping[str, int]) -> float:
        model = self.model
        was_training = model.training
        state = {k: v.clone() for k, v in model.state_dict().items()}
        masks: Dict[str, Dict[str, torch.Tensor]] = {}
        for name, count in counts.items():
            if count > 0:
                masks.update(self._unit_masks(name, count))
        try:
            model.eval()
            if masks:
                mask_like_removal(model, masks, None, graph_module=self.graph_module)
                if self.recalibrate:
                    recalibrate_batchnorm(model, self.x, self.batch_size)
                    model.eval()
            self.calls += 1
            return float(mean_loss(model, self.x_adv, self.y, self.batch_size))
        finally:
            model.load_state_dict(state)
            model.train(was_training)


def _count_reaching(unit: Unit, pruned: Mapping[str, int], removed, goal: float) -> Optional[int]:
    """The smallest prune count of ``unit`` above its current one whose removed fraction reaches ``goal`` (its
    largest count if none does); None when the unit cannot lose another channel."""
    low, high = pruned[unit.name] + 1, unit.max_pruned_per_block()
    if low > high:
        return None
    while low < high:  # removing more of a unit's channels never removes less of the budget
        middle = (low + high) // 2
        if removed(dict(pruned, **{unit.name: middle})) >= goal:
            high = middle
        else:
            low = middle + 1
    return low


def allocate_jointly(problem: BudgetProblem, loss: Callable[[Mapping[str, int]], float], steps: int = 10,
                     progress: bool = False) -> Tuple[Dict[str, int], Dict[str, float]]:
    """(channels to prune per block for each unit, the last measured loss rise per unit of budget for each unit)
    by the greedy above, then single-channel moves into tolerance (more from the units whose last proposal cost
    least). ``loss(counts)`` measures the jointly pruned model, e.g. a :class:`JointLoss`."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    units, removed, target, tolerance = problem.units, problem.removed_counts, problem.target, problem.tolerance
    problem.check_reachable()
    pruned = {u.name: u.min_pruned_per_block() for u in units}
    current, level = removed(pruned), loss(pruned)
    rates = {u.name: 0.0 for u in units}
    with tqdm(total=steps, desc="MRS (joint)", disable=not progress, leave=False) as bar:
        while current < target - tolerance:
            goal = min(target, current + target / steps)
            best = None
            for unit in units:
                count = _count_reaching(unit, pruned, removed, goal)
                if count is None:
                    continue
                trial = dict(pruned, **{unit.name: count})
                saved = removed(trial) - current
                if saved <= 1e-12:
                    continue
                value = loss(trial)
                rates[unit.name] = (value - level) / saved
                key = (rates[unit.name], -saved)
                if best is None or key < best[0]:
                    best = (key, trial, value)
            if best is None:
                break
            pruned, level = best[1], best[2]
            current = removed(pruned)
            bar.update(1)
    weights = {name: 1.0 / (1e-9 + max(rate, 0.0)) for name, rate in rates.items()}
    return problem.refine(pruned, weights), rates
