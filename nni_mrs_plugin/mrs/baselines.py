"""Baselines that meet the same budget as MRS, so that only the choice of channels differs.

- **uniform** (any NNI pruner: ``l1``, ``l2``, ``fpgm``, ``taylor``, ``random``, ...): every unit loses the same
  ratio (the budget solver with tau = 0), the named pruner picks the channels inside each unit;
- **global** (``l1-global``, ``GlobalL1NormPruner``): every channel ranked across layers by its filter's L1 norm,
  pruned lowest first until the sped-up model loses the target budget, each layer capped at r_max.

``RandomPruner`` and ``GlobalL1NormPruner`` are real NNI pruners (registry names ``random``, ``l1-global``).
``baseline_masks`` builds any pruner at a budget, ``MRSPruner`` included: pruners whose ``allocates`` is true
take the global target themselves, the others get uniform per-unit ratios.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from nni.compression.pruning import L1NormPruner
from nni.compression.pruning.tools import generate_sparsity
from torch import nn

from ..nni.speedup import Masks, compute_masks
from .allocation import Allocation, allocate, budget_units, build_allocation
from .cost import BUDGETS, CostModel
from .pruner import apply_allocation
from .importance import channel_importance
from .units import normalize_config, parse_config_list

__all__ = ["RandomPruner", "GlobalL1NormPruner", "baseline_masks", "global_l1_allocation"]


class RandomPruner(L1NormPruner):
    """Channels chosen at random (seeded): the floor any importance criterion must beat."""

    def __init__(self, model: nn.Module, config_list: List[Dict], evaluator: Any = None,
                 existed_wrappers: Any = None, seed: int = 0):
        super().__init__(model, config_list, evaluator, existed_wrappers)
        self.seed = seed

    def _calculate_metrics(self, data):
        metrics = super()._calculate_metrics(data)
        generator = torch.Generator().manual_seed(self.seed)
        return {module: {target: torch.rand(metric.shape, generator=generator).to(metric.device)
                         for target, metric in targets.items()} for module, targets in metrics.items()}


class GlobalL1NormPruner(L1NormPruner):
    """One ranking of every channel by its filter's L1 norm across the selected layers, pruned lowest first until
    the sped-up model loses ``sparse_ratio`` of the ``budget`` (as for ``MRSPruner``, a global target), each layer
    capped at ``r_max``. Unlike NNI's own ``global_group_id`` mode the cap matters: raw L1 norms grow with fan-in,
    so an uncapped global threshold empties whole early layers before it touches the later ones.

    ``dummy_input`` (or the evaluator's) is needed to trace the model and measure the budget. After
    ``compress()``, ``allocation`` holds the per-unit report.
    """

    allocates = True

    def __init__(self, model: nn.Module, config_list: List[Dict], evaluator: Any = None,
                 existed_wrappers: Any = None, *, dummy_input: Any = None, budget: str = "flops", r_max: float = 0.9,
                 tolerance: float = 0.01):
        if budget not in BUDGETS:
            raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
        if not 0.0 < r_max < 1.0:
            raise ValueError(f"r_max must be in (0, 1), got {r_max}")
        parse_config_list(model, config_list)  # a clear error now, not NNI's schema traceback later
        super().__init__(model, [normalize_config(c) for c in config_list], evaluator, existed_wrappers)
        self.dummy_input, self.budget, self.r_max, self.tolerance = dummy_input, budget, r_max, tolerance
        self.allocation: Optional[Allocation] = None

    def _collect_data(self):
        dummy = self.dummy_input if self.dummy_input is not None else (
            self.evaluator.get_dummy_input() if self.evaluator is not None else None)
        if dummy is None:
            raise ValueError("GlobalL1NormPruner needs dummy_input (or an evaluator's) to measure the budget")
        was_wrapped = self._is_wrapped
        if was_wrapped:
            self.unwrap_model()
        try:
            self.allocation = global_l1_allocation(self.bound_model, self.config_list, dummy, self.budget,
                                                   self.r_max, self.tolerance)
        finally:
            if was_wrapped:
                self.wrap_model()
        return super()._collect_data()

    def _generate_sparsity(self, metrics):
        apply_allocation(self._target_spaces, self.allocation)  # L1 inside each unit takes the ranking's channels
        return generate_sparsity(metrics, self._target_spaces)


def global_l1_allocation(model: nn.Module, config_list: List[Dict[str, Any]], dummy_input: Any,
                         budget: str = "flops", r_max: float = 0.9, tolerance: float = 0.01) -> Allocation:
    """The global L1 ranking's allocation (NNI's metric; a coupled unit's channel scores the mean over its
    layers, as NNI's dependency rule does), pruned lowest first until the budget is met."""
    target, units, skipped, graph_module = budget_units(model, config_list, dummy_input, 0.0, r_max)
    cost = CostModel(model, graph_module, units, dummy_input)
    modules = dict(model.named_modules())
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

    def removed(pruned: Dict[str, int]) -> float:
        return cost.removed_fraction({u.name: u.kept(pruned[u.name]) for u in units}, budget)

    low, high = 0, len(ranking)  # the removed fraction grows with the number of channels taken
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if removed(first(middle)) < target else (low, middle)
    best = min((first(max(low - 1, 0)), first(low)), key=lambda p: abs(removed(p) - target))
    result = build_allocation(units, {u.name: 1.0 for u in units}, best, cost, target, budget, skipped)
    if abs(result.achieved - target) > tolerance:
        raise ValueError(f"l1-global: the global L1 ranking cannot remove {target:.3f} of the {budget} "
                         f"(closest {result.achieved:.3f}; r_max {r_max} caps each layer)")
    return result


def baseline_masks(model: nn.Module, config_list: List[Dict[str, Any]], dummy_input: Any, pruner_cls: type,
                   budget: str = "flops", r_max: float = 0.9, **pruner_kwargs) -> Tuple[Allocation, Masks]:
    """(allocation, NNI masks) of a pruner at the budget the config_list's ``sparse_ratio`` asks for."""
    if getattr(pruner_cls, "allocates", False):
        pruner = pruner_cls(model, config_list, dummy_input=dummy_input, budget=budget, r_max=r_max, **pruner_kwargs)
        _, masks = pruner.compress()
        pruner.unwrap_model()
        return pruner.allocation, masks
    target, units, skipped, graph_module = budget_units(model, config_list, dummy_input, 0.0, r_max)
    cost = CostModel(model, graph_module, units, dummy_input)
    scores = {unit.name: 1.0 for unit in units}
    pruned = allocate(units, scores, cost, target, budget, tau=0.0)
    allocation = build_allocation(units, scores, pruned, cost, target, budget, skipped)
    return allocation, compute_masks(model, allocation.config_list, pruner_cls, **pruner_kwargs)
