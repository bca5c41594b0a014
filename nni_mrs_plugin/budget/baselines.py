"""Baselines that meet the same budget as MRS, so that only the choice of channels differs; each is a
``BudgetPruner`` whose ``allocate`` is a few lines.

- **uniform** (``UniformPruner``, and any NNI pruner through ``baseline_masks``: ``l1``, ``l2``, ``fpgm``,
  ``taylor``, ...): every unit loses the same ratio, the criterion picks the channels inside each unit;
- **random** (``RandomPruner``): uniform ratios, channels drawn at random (seeded);
- **global** (``l1-global``, ``GlobalL1NormPruner``): every channel ranked across layers by its filter's L1 norm,
  pruned lowest first until the sped-up model loses the target budget, each layer capped at r_max.

``baseline_masks`` builds any pruner at a budget: a ``BudgetPruner`` takes the global target itself, any other
NNI pruner gets uniform per-unit ratios.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple, Union

import torch
from torch import nn

from ..host.speedup import Masks, compute_masks
from .importance import channel_importance
from .problem import BudgetProblem
from .pruner import BudgetPruner
from .report import Allocation
from .units import DEFAULT_ROUND_TO

__all__ = ["UniformPruner", "RandomPruner", "GlobalL1NormPruner", "baseline_masks", "global_l1_allocation"]


class UniformPruner(BudgetPruner):
    """Every unit loses the same ratio; channels inside a unit by ``criterion`` ('l1', 'l2', 'fpgm')."""

    def __init__(self, model: nn.Module, config_list: List[Dict], evaluator: Any = None, *, criterion: str = "l1",
                 **options: Any):
        if criterion not in ("l1", "l2", "fpgm"):
            raise ValueError(f"unknown criterion {criterion!r}; choose one of l1, l2, fpgm")
        super().__init__(model, config_list, evaluator, **options)
        self.criterion = criterion

    def allocate(self, problem: BudgetProblem) -> Mapping[str, float]:
        return {unit.name: 1.0 for unit in problem.units}  # one ratio, scaled by the base to meet the target


class RandomPruner(UniformPruner):
    """Uniform ratios at the budget with channels drawn at random (seeded by ``seed``): the floor any importance
    criterion must beat."""

    def __init__(self, model: nn.Module, config_list: List[Dict], evaluator: Any = None, *, seed: int = 0,
                 **options: Any):
        super().__init__(model, config_list, evaluator, **options)
        self.seed = seed

    def channel_data(self, data: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, Dict[str, torch.Tensor]]:
        """Random weights in place of the real ones: the criterion then ranks the channels at random."""
        generator = torch.Generator().manual_seed(self.seed)
        return {module: {target: torch.rand(tensor.shape, generator=generator).to(tensor)
                         for target, tensor in targets.items()} for module, targets in data.items()}


class GlobalL1NormPruner(BudgetPruner):
    """One ranking of every channel by its filter's L1 norm across the selected layers, pruned lowest first until
    the sped-up model loses ``sparse_ratio`` of the ``budget`` (as for ``MRSPruner``, a global target), each layer
    capped at ``r_max``. Unlike NNI's own ``global_group_id`` mode the cap matters: raw L1 norms grow with fan-in,
    so an uncapped global threshold empties whole early layers before it touches the later ones.
    """

    def allocate(self, problem: BudgetProblem) -> Allocation:
        return global_l1_allocation(problem)


def global_l1_allocation(problem: BudgetProblem) -> Allocation:
    """The global L1 ranking's allocation (NNI's metric; a coupled unit's channel scores the mean over its
    layers, as NNI's dependency rule does), pruned lowest first until the budget is met."""
    units, target = problem.units, problem.target
    modules = dict(problem.model.named_modules())
    ranking = []  # (L1 norm, unit) for every channel position of every unit
    for unit in units:
        scores = torch.stack([channel_importance(modules[name].weight, "l1") for name in unit.layers]).mean(0)
        per_position = scores.reshape(unit.block, unit.per_block).mean(0)
        ranking += [(float(value), unit.name) for value in per_position]
    ranking.sort(key=lambda item: item[0])
    bounds = {u.name: (u.min_pruned_per_block(), u.max_pruned_per_block()) for u in units}

    def first(count: int) -> Dict[str, int]:
        pruned = {u.name: 0 for u in units}
        for _, name in ranking[:count]:
            pruned[name] = min(pruned[name] + 1, bounds[name][1])
        return {name: max(n, bounds[name][0]) for name, n in pruned.items()}

    low, high = 0, len(ranking)  # the removed fraction grows with the number of channels taken
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if problem.removed_counts(first(middle)) < target else (low, middle)
    best = min((first(max(low - 1, 0)), first(low)), key=lambda p: abs(problem.removed_counts(p) - target))
    result = problem.allocation(best, {u.name: 1.0 for u in units}, rule="l1-global")
    if abs(result.achieved - target) > problem.tolerance:
        raise ValueError(f"l1-global: the global L1 ranking cannot remove {target:.3f} of the {problem.budget} "
                         f"(closest {result.achieved:.3f}; r_max caps each layer)")
    return result


def baseline_masks(model: nn.Module, config_list: List[Dict[str, Any]], dummy_input: Any, pruner_cls: type,
                   budget: str = "flops", r_max: float = 0.9, round_to: Union[int, str] = DEFAULT_ROUND_TO,
                   **pruner_kwargs) -> Tuple[Allocation, Masks]:
    """(allocation, NNI masks) of a pruner at the budget the config_list's ``sparse_ratio`` asks for, every pruned
    unit keeping a multiple of ``round_to`` channels."""
    if isinstance(pruner_cls, type) and issubclass(pruner_cls, BudgetPruner):
        pruner = pruner_cls(model, config_list, dummy_input=dummy_input, budget=budget, r_max=r_max,
                            round_to=round_to, **pruner_kwargs)
        _, masks = pruner.compress()
        pruner.unwrap_model()
        return pruner.allocation, masks
    problem = BudgetProblem.build(model, config_list, dummy_input, budget, 0.0, r_max, round_to=round_to)
    scores = {unit.name: 1.0 for unit in problem.units}
    allocation = problem.allocation(problem.scale(scores), scores)
    return allocation, compute_masks(model, allocation.config_list, pruner_cls, **pruner_kwargs)
