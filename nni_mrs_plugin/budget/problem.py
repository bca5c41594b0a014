"""``BudgetProblem``: the method-neutral core under every budget pruner: the units of a selection, the exact cost
model of the model ModelSpeedup will build, the global target and the bounds, with one way to measure what a set of
ratios removes and one way to meet the target from rough ratios.

Ratios are per-unit fractions of channels to prune; counts are channels pruned per block (what NNI prunes). A rule
may return any ratios: ``meet`` scales them by one factor c (r_u = clip(c * w_u, bounds), c found by bisection on
the cost model), then moves single steps (a channel, or ``round_to`` channels) until the removed fraction is within
the tolerance of the target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .cost import BUDGETS, CostModel
from .report import Allocation, UnitReport
from .selection import parse_config_list
from .units import DEFAULT_ROUND_TO, Unit, check_round_to, find_units

__all__ = ["BudgetProblem", "check_budget", "check_bounds", "check_target", "check_tolerance", "refine"]


def check_bounds(r_min: float, r_max: float) -> None:
    """The one rule for the pruned fraction's bounds: a unit always keeps a channel."""
    if not 0.0 <= r_min <= r_max < 1.0:
        raise ValueError(f"need 0 <= r_min <= r_max < 1, got r_min={r_min}, r_max={r_max}")


def check_tolerance(tolerance: float) -> None:
    if not 0.0 < tolerance < 0.5:
        raise ValueError(f"tolerance must be in (0, 0.5), got {tolerance}")


def check_budget(budget: str) -> None:
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")


def check_target(target: float, budget: str) -> None:
    check_budget(budget)
    if not 0.0 < target < 1.0:
        raise ValueError(f"target sparse_ratio must be in (0, 1), got {target}")


@dataclass
class BudgetProblem:
    """Remove ``target`` of the ``budget`` ('flops', 'params', 'channels') of the sped-up model by pruning
    ``units``, each within its bounds, to within ``tolerance``."""

    units: List[Unit]
    cost: CostModel
    target: float
    budget: str = "flops"
    tolerance: float = 0.01
    skipped: Dict[str, str] = field(default_factory=dict)
    model: Optional[nn.Module] = None
    graph_module: Optional[torch.fx.GraphModule] = None
    dummy_input: Any = None

    @property
    def round_to(self) -> Union[int, str]:
        """The units' common step, or 'auto' when they differ."""
        steps = {unit.round_to for unit in self.units} or {1}
        return steps.pop() if len(steps) == 1 else "auto"

    def __post_init__(self):
        check_target(self.target, self.budget)
        check_tolerance(self.tolerance)
        self.units = list(self.units)

    @classmethod
    def build(cls, model: nn.Module, config_list: Sequence[Dict[str, Any]], dummy_input: Any, budget: str = "flops",
              r_min: float = 0.0, r_max: float = 0.9, tolerance: float = 0.01,
              round_to: Union[int, str] = DEFAULT_ROUND_TO) -> "BudgetProblem":
        """The problem an NNI config_list poses: its ``sparse_ratio`` is the global fraction of ``budget`` to
        remove, ``min/max_sparse_ratio`` bound layers, ``r_min``/``r_max`` bound the rest; every pruned unit
        keeps a multiple of ``round_to`` channels ('auto': each unit its own step, ``units.auto_round_to``, or
        exact counts where those steps cannot meet the target with one ratio for all)."""
        check_bounds(r_min, r_max)
        check_budget(budget)
        check_round_to(round_to)
        selection = parse_config_list(model, config_list)
        units, skipped, graph_module = find_units(model, selection, dummy_input, r_min, r_max, round_to=round_to)
        problem = cls(units, CostModel(model, graph_module, units, dummy_input), selection.target, budget, tolerance,
                      skipped, model, graph_module, dummy_input)
        if round_to == "auto" and problem.reachable() and not problem.meets_uniformly():  # too coarse: exact counts
            problem = replace(problem, units=[replace(unit, round_to=1) for unit in units])
        return problem

    # -- measuring ------------------------------------------------------------------------------------------
    def counts(self, ratios: Mapping[str, float]) -> Dict[str, int]:
        """Channels pruned per block for per-unit ratios (a missing unit: 0), within each unit's bounds."""
        unknown = sorted(set(ratios) - {u.name for u in self.units})
        if unknown:
            raise ValueError(f"ratios name units {unknown} that this problem does not have; its units are "
                             f"{', '.join(u.name for u in self.units)}")
        out = {}
        for unit in self.units:
            ratio = float(ratios.get(unit.name, 0.0))
            if not math.isfinite(ratio):
                raise ValueError(f"ratio of unit {unit.name!r} must be a finite number, got {ratio}")
            out[unit.name] = unit.snap(math.floor(unit.per_block * min(max(ratio, 0.0), 1.0) + 1e-9))
        return out

    def removed_counts(self, pruned: Mapping[str, int]) -> float:
        """The fraction of the budget the sped-up model loses with ``pruned[unit]`` channels per block pruned."""
        return self.cost.removed_fraction({u.name: u.kept(pruned[u.name]) for u in self.units}, self.budget)

    def removed(self, ratios: Mapping[str, float]) -> float:
        """The fraction of the budget the sped-up model loses at per-unit ratios."""
        return self.removed_counts(self.counts(ratios))

    def reachable(self) -> bool:
        try:
            self.check_reachable()
        except ValueError:
            return False
        return True

    def meets_uniformly(self) -> bool:
        """Whether one ratio for every unit, in its steps, meets the target within the tolerance."""
        try:
            self.scale({unit.name: 1.0 for unit in self.units})
        except ValueError:
            return False
        return True

    def check_reachable(self) -> None:
        """A clear error when the units' bounds cannot reach the target."""
        lowest = self.removed_counts({u.name: u.min_pruned_per_block() for u in self.units})
        highest = self.removed_counts({u.name: u.max_pruned_per_block() for u in self.units})
        if self.target > highest + self.tolerance:
            raise ValueError(f"cannot remove {self.target:.4f} of the model's {self.budget}: with this selection and "
                             f"max_sparse_ratio bounds the most reachable is {highest:.4f} (select more layers or "
                             f"raise max_sparse_ratio/r_max)")
        if self.target < lowest - self.tolerance:
            raise ValueError(f"cannot remove only {self.target:.4f} of the model's {self.budget}: min_sparse_ratio "
                             f"bounds already remove {lowest:.4f}")

    # -- meeting the target ---------------------------------------------------------------------------------
    def scale(self, weights: Mapping[str, float]) -> Dict[str, int]:
        """Counts at r_u = clip(c * w_u) with c found by bisection, then ``refine``d (more from large weights)."""
        self.check_reachable()
        bad = {name: w for name, w in weights.items() if not (math.isfinite(w) and w > 0)}
        if bad:
            raise ValueError(f"weights must be positive finite numbers, got {bad}")

        def counts_at(c: float) -> Dict[str, int]:
            return self.counts({u.name: c * weights[u.name] for u in self.units})

        low, high = 0.0, max(unit.max_ratio / weights[unit.name] for unit in self.units) + 1e-9
        for _ in range(60):
            middle = 0.5 * (low + high)
            low, high = (middle, high) if self.removed_counts(counts_at(middle)) < self.target else (low, middle)
        best = min((counts_at(low), counts_at(high)), key=lambda p: abs(self.removed_counts(p) - self.target))
        return self.refine(best, weights)

    def meet(self, ratios: Mapping[str, float]) -> Dict[str, int]:
        """Counts meeting the target from a rule's rough ratios: taken as they are when within the tolerance,
        else scaled by one factor (all zero: uniform) and refined."""
        counts = self.counts(ratios)
        if abs(self.removed_counts(counts) - self.target) <= self.tolerance:
            return counts
        weights = {u.name: float(ratios.get(u.name, 0.0)) for u in self.units}
        if max(weights.values()) <= 0:
            weights = {name: 1.0 for name in weights}
        floor = max(weights.values()) * 1e-6
        return self.scale({name: max(w, floor) for name, w in weights.items()})

    def refine(self, pruned: Mapping[str, int], weights: Mapping[str, float]) -> Dict[str, int]:
        """``refine`` on this problem: single-channel moves into the tolerance, largest weight pruned first."""
        return refine(self.units, weights, pruned, self.removed_counts, self.target, self.tolerance)

    def align(self, pruned: Mapping[str, int]) -> Dict[str, int]:
        """Counts a rule chose, each moved to an allowed one (a multiple of ``round_to`` kept, within bounds) and
        refined back into the tolerance, the units the rule pruned most giving first."""
        if all(pruned[u.name] in u.allowed for u in self.units):
            return dict(pruned)
        nearest = {u.name: min(u.allowed, key=lambda p: (abs(p - pruned[u.name]), p)) for u in self.units}
        weights = {u.name: pruned[u.name] / u.per_block + 1e-6 for u in self.units}
        return self.refine(nearest, weights)

    def allocation(self, pruned: Mapping[str, int], scores: Optional[Mapping[str, float]] = None,
                   rule: str = "power") -> Allocation:
        """The ``Allocation`` for per-unit counts (``align``ed): one NNI config_list entry (``op_names``,
        ``sparse_ratio``, ``dependency_group_id``) and one report row per unit (``scores``, default the ratio)."""
        pruned = self.align(pruned)
        kept = {unit.name: unit.kept(pruned[unit.name]) for unit in self.units}
        shares = self.cost.unit_share(self.budget)
        config_list: List[dict] = []
        rows = []
        for unit in self.units:
            entry = {"op_names": list(unit.layers), "sparse_ratio": unit.sparse_ratio(pruned[unit.name]),
                     "dependency_group_id": unit.name}
            if unit.block > 1:
                entry["internal_metric_block"] = unit.block
            config_list.append(entry)
            ratio = 1.0 - kept[unit.name] / unit.channels
            rows.append(UnitReport(unit.name, list(unit.layers), float(scores[unit.name]) if scores else ratio,
                                   ratio, unit.channels, kept[unit.name], shares[unit.name]))
        return Allocation(config_list, rows, self.target, self.cost.removed_fraction(kept, self.budget), self.budget,
                          dict(self.skipped), rule=rule, round_to=self.round_to)


def refine(units, weights, pruned, removed, target, tolerance) -> Dict[str, int]:
    """Move single steps (to a unit's next allowed count) until the removed fraction is within tolerance: prune
    more from the units with the largest weight first, give back to the smallest first. Where single steps are
    too coarse (one channel of a small early conv can be worth 10% of a model's FLOPs), trade steps between two
    units; if the target still cannot be met, a ValueError names the nearest reachable fractions."""
    pruned = dict(pruned)
    order = sorted(units, key=lambda unit: -weights[unit.name])
    seen: Dict[float, None] = {}
    for _ in range(sum(unit.per_block for unit in units)):
        current = removed(pruned)
        seen[current] = None
        if abs(current - target) <= tolerance:
            return pruned
        step = 1 if current < target else -1
        moved = False
        for unit in (order if step == 1 else order[::-1]):
            trial = _moved(pruned, unit, step)
            if trial is not None:
                seen[removed(trial)] = None
                if abs(removed(trial) - target) < abs(current - target):
                    pruned, moved = trial, True
                    break
        if not moved:
            trial = _best_trade(units, pruned, removed, target, seen)
            if trial is None:
                break
            pruned = trial
    current = removed(pruned)
    if abs(current - target) > tolerance:
        below = max((v for v in seen if v <= target), default=None)
        above = min((v for v in seen if v >= target), default=None)
        nearest = " and ".join(f"{v:.4f}" for v in (below, above) if v is not None)
        raise ValueError(f"cannot remove {target:.4f} of the model's budget within ±{tolerance}: at channel "
                         f"granularity the closest reachable fractions found are {nearest} (ask for one of them, "
                         f"select more layers, or raise the tolerance)")
    return pruned


def _moved(pruned: Mapping[str, int], unit: Unit, step: int) -> Optional[Dict[str, int]]:
    """One allowed count more (step 1) or fewer (-1) in ``unit``; None at its bound."""
    count = unit.shift(pruned[unit.name], step)
    if count == pruned[unit.name]:
        return None
    return dict(pruned, **{unit.name: count})


def _best_trade(units, pruned, removed, target, seen) -> Optional[Dict[str, int]]:
    """One channel more or fewer in one unit, then as many channels of another unit the other way as bring the
    removed fraction closest to the target (a unit's channels cost about the same each); None when no such
    trade gets closer."""
    best, gap = None, abs(removed(pruned) - target)
    for coarse in units:
        for step in (1, -1):
            moved = _moved(pruned, coarse, step)
            if moved is None:
                continue
            base = removed(moved)
            direction = 1 if base < target else -1
            for fine in units:
                one = _moved(moved, fine, direction) if fine is not coarse else None
                delta = removed(one) - base if one is not None else 0.0
                if delta == 0.0:
                    continue
                count = fine.shift(moved[fine.name], direction * max(1, round((target - base) / delta)))
                trial = dict(moved, **{fine.name: count})
                value = removed(trial)
                seen[value] = None
                if abs(value - target) < gap:
                    best, gap = trial, abs(value - target)
    return best
