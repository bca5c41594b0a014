"""Baselines that meet the same budget as MRS, so that only the choice of channels differs.

- **uniform** (any NNI pruner: ``l1``, ``l2``, ``fpgm``, ``taylor``, ``random``, ...): every unit loses the same
  ratio (MRS allocation with tau = 0), the named pruner picks the channels inside each unit;
- **global** (``l1-global``): every channel ranked across layers by its filter's L1 norm, the global ranking of
  NNI's L1NormPruner with one ``global_group_id``, pruned lowest first until the sped-up model loses the
  target budget (each layer capped at r_max).

``RandomPruner`` and ``GlobalL1NormPruner`` are real NNI pruners (registry names ``random``, ``l1-global``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from nni.compression.pruning import L1NormPruner
from torch import nn

from .allocation import Allocation
from .allocator import MRSSparsityAllocator
from ..nni.speedup import Masks, compute_masks

__all__ = ["RandomPruner", "GlobalL1NormPruner", "baseline_masks"]


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
    """NNI's L1NormPruner with every selected layer in one ``global_group_id``: one threshold on the filters'
    L1 norms across layers (NNI ignores ``global_group_id`` on layers that carry a ``dependency_group_id``)."""

    global_ranking = True

    def __init__(self, model: nn.Module, config_list: List[Dict], evaluator: Any = None,
                 existed_wrappers: Any = None):
        config_list = [{**{k: v for k, v in entry.items() if k != "dependency_group_id"}, "global_group_id": "all"}
                       for entry in config_list]
        super().__init__(model, config_list, evaluator, existed_wrappers)


def baseline_masks(model: nn.Module, config_list: List[Dict[str, Any]], dummy_input: Any, pruner_cls: type,
                   budget: str = "flops", r_max: float = 0.9, **pruner_kwargs) -> Tuple[Allocation, Masks]:
    """(allocation, NNI masks) of a baseline pruner at the budget the config_list's sparse_ratio asks for."""
    allocator = MRSSparsityAllocator(budget=budget, tau=0.0, r_max=r_max, progress=False)
    if not getattr(pruner_cls, "global_ranking", False):
        allocation = allocator.allocate(model, config_list, dummy_input=dummy_input)
        return allocation, compute_masks(model, allocation.config_list, pruner_cls, **pruner_kwargs)
    return _global(model, config_list, dummy_input, pruner_cls, allocator, pruner_kwargs)


def _global(model: nn.Module, config_list: List[Dict[str, Any]], dummy_input: Any, pruner_cls: type,
            allocator: MRSSparsityAllocator, pruner_kwargs: Dict[str, Any]) -> Tuple[Allocation, Masks]:
    """One ranking of every channel by its filter's L1 norm (NNI's metric; a coupled unit's channel scores the
    mean over its layers, as NNI's dependency rule does), pruned lowest first until the budget is met. Unlike
    NNI's own global mode it respects the per-layer cap r_max: raw L1 norms grow with fan-in, so an uncapped
    global threshold empties whole early layers before it touches the later ones."""
    from .cost import CostModel
    from .sensitivity import channel_importance

    target, units, skipped, graph_module = allocator.units(model, config_list, dummy_input)
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
        return cost.removed_fraction({u.name: u.kept(pruned[u.name]) for u in units}, allocator.budget)

    low, high = 0, len(ranking)  # the removed fraction grows with the number of channels taken
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if removed(first(middle)) < target else (low, middle)
    best = min((first(max(low - 1, 0)), first(low)), key=lambda p: abs(removed(p) - target))
    allocation = allocator.report(units, {u.name: 1.0 for u in units}, best, cost, target, skipped)
    if abs(allocation.achieved - target) > allocator.tolerance:
        raise ValueError(f"l1-global: the global L1 ranking cannot remove {target:.3f} of the {allocator.budget} "
                         f"(closest {allocation.achieved:.3f}; r_max {allocator.r_max} caps each layer)")
    # L1NormPruner inside each unit then removes exactly the channels the global ranking took
    return allocation, compute_masks(model, allocation.config_list, L1NormPruner)
