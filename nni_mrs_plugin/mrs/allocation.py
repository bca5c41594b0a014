"""The budget solver: per-unit pruning ratios that meet a global budget on the sped-up model, and the
``Allocation`` that carries them (an NNI config_list plus the report). Every allocator uses it: MRS, uniform
ratios (tau = 0) and the global L1 ranking.

r_u = clip(c * (mean(m) / m_u) ** tau, r_min_u, r_max_u): more sensitive units are pruned less; tau = 0 gives
one ratio for every unit (the uniform baseline). ``c`` is found by bisection on the *predicted sped-up model*
(``CostModel``), then single channels are adjusted, least sensitive units first, until the removed fraction
is within the tolerance of the target.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

from .cost import BUDGETS, CostModel
from .units import Unit, find_units, parse_config_list

__all__ = ["UnitReport", "Allocation", "allocate", "refine", "check_target", "check_reachable", "weights_from_scores",
           "budget_units", "build_allocation", "check_selection_reachable", "RULES"]

RULES = ("power", "budget", "joint")  # sensitivity -> ratios (power); curves + cost -> counts (budget);
# the loss of the model pruned so far + cost -> counts, step by step (joint)


@dataclass
class UnitReport:
    """One row of the allocation report."""

    unit: str
    layers: List[str]
    mrs: float
    ratio: float
    channels_before: int
    channels_after: int
    budget_share: float


@dataclass
class Allocation:
    """An NNI config_list (per-layer ``sparse_ratio`` + ``dependency_group_id``) and why each ratio was chosen."""

    config_list: List[dict]
    report: List[UnitReport]
    target: float
    achieved: float
    budget: str
    skipped: Dict[str, str]
    rule: str = "power"
    curves: Dict[str, List[float]] = field(default_factory=dict)  # unit -> Delta L at ``ratios`` (budget rule)
    ratios: List[float] = field(default_factory=list)
    measured: bool = True  # False: uniform ratios (tau 0), the MRS column holds placeholders, not sensitivities

    def as_dict(self) -> dict:
        out = {"target": self.target, "achieved": self.achieved, "budget": self.budget, "skipped": self.skipped,
               "rule": self.rule, "units": [asdict(row) for row in self.report], "config_list": self.config_list,
               "measured": self.measured}
        if self.curves:
            out.update(curves=self.curves, ratios=self.ratios)
        return out

    def table(self) -> str:
        """The report as aligned text, most sensitive unit first."""
        rows = sorted(self.report, key=lambda row: -row.mrs)
        lines = [f"{'unit':<28} {'layers':>6} {'MRS':>10} {'ratio':>6} {'channels':>11} {'share':>6}"]
        for row in rows:
            mrs = f"{row.mrs:>10.4g}" if self.measured else f"{'-':>10}"
            lines.append(f"{row.unit[:28]:<28} {len(row.layers):>6} {mrs} {row.ratio:>6.3f} "
                         f"{row.channels_before:>5}->{row.channels_after:<5} {row.budget_share:>6.3f}")
        lines.append(f"removed {self.achieved:.4f} of {self.budget} (target {self.target:.4f})")
        return "\n".join(lines)


def weights_from_scores(scores: Mapping[str, float], tau: float) -> Dict[str, float]:
    """(mean(m) / m_u) ** tau, with non-positive sensitivities floored at a millionth of the largest."""
    if not math.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be a finite number >= 0 (0 = uniform ratios), got {tau}")
    bad = {name: value for name, value in scores.items() if not math.isfinite(value)}
    if bad:
        raise ValueError(f"sensitivities must be finite, got {bad}")
    if tau == 0 or not scores:
        return {name: 1.0 for name in scores}
    floor = max(max((abs(v) for v in scores.values()), default=0.0) * 1e-6, 1e-12)
    clipped = {name: max(value, floor) for name, value in scores.items()}
    mean = sum(clipped.values()) / len(clipped)
    return {name: (mean / value) ** tau for name, value in clipped.items()}


def _pruned(units: Sequence[Unit], weights: Mapping[str, float], c: float) -> Dict[str, int]:
    out = {}
    for unit in units:
        ratio = min(max(c * weights[unit.name], unit.min_ratio), unit.max_ratio)
        count = math.floor(unit.per_block * ratio + 1e-9)
        out[unit.name] = min(max(count, unit.min_pruned_per_block()), unit.max_pruned_per_block())
    return out


def allocate(units: Sequence[Unit], scores: Mapping[str, float], cost: CostModel, target: float,
             budget: str = "flops", tau: float = 1.0, tolerance: float = 0.01) -> Dict[str, int]:
    """Channels to prune per block for each unit so that the sped-up model loses ``target`` of ``budget``."""
    check_target(target, budget)
    missing = [unit.name for unit in units if unit.name not in scores]
    if missing:
        raise ValueError(f"no sensitivity for units {missing}")
    weights = weights_from_scores({unit.name: scores[unit.name] for unit in units}, tau)

    def removed(pruned: Mapping[str, int]) -> float:
        return cost.removed_fraction({u.name: u.kept(pruned[u.name]) for u in units}, budget)

    c_high = max(unit.max_ratio / weights[unit.name] for unit in units) + 1e-9
    check_reachable(units, removed, target, budget, tolerance)
    low, high = 0.0, c_high
    for _ in range(60):
        middle = 0.5 * (low + high)
        if removed(_pruned(units, weights, middle)) < target:
            low = middle
        else:
            high = middle
    below, above = _pruned(units, weights, low), _pruned(units, weights, high)
    best = min((below, above), key=lambda p: abs(removed(p) - target))
    return refine(units, weights, best, removed, target, tolerance)


def check_target(target: float, budget: str) -> None:
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    if not 0.0 < target < 1.0:
        raise ValueError(f"target sparse_ratio must be in (0, 1), got {target}")


def check_reachable(units: Sequence[Unit], removed, target: float, budget: str, tolerance: float) -> None:
    """A clear error when the units' min/max bounds cannot reach ``target`` (``removed(pruned) -> fraction``)."""
    lowest = removed({unit.name: unit.min_pruned_per_block() for unit in units})
    highest = removed({unit.name: unit.max_pruned_per_block() for unit in units})
    if target > highest + tolerance:
        raise ValueError(f"cannot remove {target:.4f} of the model's {budget}: with this selection and "
                         f"max_sparse_ratio bounds the most reachable is {highest:.4f} (select more layers or raise "
                         f"max_sparse_ratio/r_max)")
    if target < lowest - tolerance:
        raise ValueError(f"cannot remove only {target:.4f} of the model's {budget}: min_sparse_ratio bounds already "
                         f"remove {lowest:.4f}")


def refine(units, weights, pruned, removed, target, tolerance) -> Dict[str, int]:
    """Move single channels until the removed fraction is within tolerance: prune more from the least
    sensitive units (largest weight) first, give back to the most sensitive first. Where single channels are
    too coarse (one channel of a small early conv can be worth 10% of a model's FLOPs), trade channels between
    two units; if the target still cannot be met, a ValueError names the nearest reachable fractions."""
    pruned = dict(pruned)
    order = sorted(units, key=lambda unit: -weights[unit.name])
    seen: Dict[float, None] = {}
    for _ in range(sum(unit.per_block for unit in units)):
        current = removed(pruned)
        seen[current] = None
        if abs(current - target) <= tolerance:
            return pruned
        step = 1 if current < target else -1
        candidates = order if step == 1 else order[::-1]
        moved = False
        for unit in candidates:
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


def _moved(pruned: Mapping[str, int], unit, step: int) -> Optional[Dict[str, int]]:
    count = pruned[unit.name] + step
    if not unit.min_pruned_per_block() <= count <= unit.max_pruned_per_block():
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
                count = moved[fine.name] + direction * max(1, round((target - base) / delta))
                count = min(max(count, fine.min_pruned_per_block()), fine.max_pruned_per_block())
                trial = dict(moved, **{fine.name: count})
                value = removed(trial)
                seen[value] = None
                if abs(value - target) < gap:
                    best, gap = trial, abs(value - target)
    return best


def budget_units(model, config_list, dummy_input, r_min: float = 0.0, r_max: float = 0.9):
    """(global target, units, skipped layers, traced graph) for an NNI selection whose ``sparse_ratio`` is the
    global fraction of the budget to remove."""
    selection = parse_config_list(model, config_list)
    units, skipped, graph_module = find_units(model, selection, dummy_input, r_min, r_max)
    return selection.target, units, skipped, graph_module


def check_selection_reachable(model, config_list, dummy_input, budget: str = "flops", r_max: float = 0.9,
                              tolerance: float = 0.01) -> None:
    """Raise the allocator's one-line error now if no allocation of this selection can meet its target: the
    reachable range depends on the architecture and the bounds only, so a job can check it before training."""
    target, units, _, graph_module = budget_units(model, config_list, dummy_input, 0.0, r_max)
    cost = CostModel(model, graph_module, units, dummy_input)
    check_reachable(units, lambda pruned: cost.removed_fraction({u.name: u.kept(pruned[u.name]) for u in units},
                                                                budget), target, budget, tolerance)


def build_allocation(units: Sequence[Unit], scores: Mapping[str, float], pruned: Mapping[str, int], cost: CostModel,
                     target: float, budget: str, skipped: Mapping[str, str]) -> Allocation:
    """The ``Allocation`` for per-unit prune counts: one NNI config_list entry (``op_names``, ``sparse_ratio``,
    ``dependency_group_id``) and one report row per unit, and the removed fraction the cost model predicts."""
    kept = {unit.name: unit.kept(pruned[unit.name]) for unit in units}
    shares = cost.unit_share(budget)
    config_list: List[dict] = []
    rows = []
    for unit in units:
        entry = {"op_names": list(unit.layers), "sparse_ratio": unit.sparse_ratio(pruned[unit.name]),
                 "dependency_group_id": unit.name}
        if unit.block > 1:
            entry["internal_metric_block"] = unit.block
        config_list.append(entry)
        rows.append(UnitReport(unit.name, list(unit.layers), float(scores[unit.name]),
                               1.0 - kept[unit.name] / unit.channels, unit.channels, kept[unit.name],
                               shares[unit.name]))
    return Allocation(config_list, rows, target, cost.removed_fraction(kept, budget), budget, dict(skipped))
