"""The cost-aware ``budget`` rule: per-unit prune counts that minimise the predicted rise of the adversarial loss,
sum_u Delta L_u(r_u), subject to the sped-up model losing ``target`` of its budget.

Delta L_u is the unit's measured sensitivity curve (``curves.loss_curves``), made monotone and replaced by its
lower convex hull; what each step saves comes from the exact ``CostModel`` of the sped-up model, so a unit whose
channels are expensive is pruned before an equally sensitive cheap one. The solver is the greedy of the
multiple-choice knapsack: repeatedly take the step (one candidate count further in one unit) with the smallest
loss rise per unit of budget saved, ties going to the step that saves most. On convex curves and a separable
cost that greedy is optimal; the cost of a layer couples neighbouring units (its inputs are the previous unit's
outputs), which the greedy follows exactly by re-measuring every step on the cost model. See docs/method.md.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

from ..budget.problem import BudgetProblem
from ..budget.units import Unit
from .curves import check_ratios

__all__ = ["convex_curve", "predicted_rise", "allocate_by_curves"]


def convex_curve(points: Sequence[Tuple[float, float]]) -> List[Tuple[float, float]]:
    """The lower convex hull of (ratio, loss rise) points through (0, 0), after a running maximum (removing more
    channels cannot be predicted to help) and a floor at 0."""
    points = sorted([(0.0, 0.0)] + [(float(r), float(v)) for r, v in points])
    monotone, top = [], 0.0
    for ratio, value in points:
        top = max(top, value)
        monotone.append((ratio, top))
    hull: List[Tuple[float, float]] = []
    for point in monotone:
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            if (y1 - y0) * (point[0] - x0) >= (point[1] - y0) * (x1 - x0):  # hull[-1] lies on or above the chord
                hull.pop()
            else:
                break
        hull.append(point)
    return hull


def _interpolate(hull: Sequence[Tuple[float, float]], ratio: float) -> float:
    for (x0, y0), (x1, y1) in zip(hull, hull[1:]):
        if ratio <= x1:
            return y0 + (y1 - y0) * (ratio - x0) / max(x1 - x0, 1e-12)
    (x0, y0), (x1, y1) = hull[-2], hull[-1]  # beyond the grid: the last slope
    return y1 + (y1 - y0) / max(x1 - x0, 1e-12) * (ratio - x1)


def predicted_rise(curves: Mapping[str, Sequence[float]], ratios: Sequence[float],
                   chosen: Mapping[str, float]) -> float:
    """The objective the ``budget`` rule minimises, sum_u Delta L_u(r_u), at any per-unit ratios ``chosen`` (the
    convex curves, as the rule sees them): lets a benchmark ask whether it predicts what the pruned model does."""
    ratios = check_ratios(ratios)
    missing = sorted(set(chosen) - set(curves))
    if missing:
        raise ValueError(f"no sensitivity curve for units {missing}")
    return sum(_interpolate(convex_curve(list(zip(ratios, curves[name]))), float(r)) for name, r in chosen.items())


def _candidates(unit: Unit, steps: int) -> List[int]:
    low, high = unit.min_pruned_per_block(), unit.max_pruned_per_block()
    stride = max(1, unit.per_block // steps)
    return sorted({low, high, *range(low, high + 1, stride)})


def allocate_by_curves(problem: BudgetProblem, curves: Mapping[str, Sequence[float]], ratios: Sequence[float],
                       steps: int = 32) -> Dict[str, int]:
    """Channels to prune per block for each unit: the greedy above, then single-channel moves into tolerance."""
    units, removed, target = problem.units, problem.removed_counts, problem.target
    ratios = check_ratios(ratios)
    missing = [unit.name for unit in units if unit.name not in curves]
    if missing:
        raise ValueError(f"no sensitivity curve for units {missing}")
    wrong = {unit.name: len(curves[unit.name]) for unit in units if len(curves[unit.name]) != len(ratios)}
    if wrong:
        raise ValueError(f"each curve needs one value per ratio ({len(ratios)}), got lengths {wrong}")
    problem.check_reachable()
    hulls = {u.name: convex_curve(list(zip(ratios, curves[u.name]))) for u in units}

    def loss(unit: Unit, count: int) -> float:
        return _interpolate(hulls[unit.name], count / unit.per_block)

    options = {u.name: _candidates(u, steps) for u in units}
    position = {u.name: 0 for u in units}
    pruned = {u.name: options[u.name][0] for u in units}
    current = removed(pruned)
    while current < target:
        best = None
        for unit in units:
            index = position[unit.name] + 1
            if index >= len(options[unit.name]):
                continue
            count = options[unit.name][index]
            saved = removed(dict(pruned, **{unit.name: count})) - current
            if saved <= 1e-12:
                continue
            rate = (loss(unit, count) - loss(unit, pruned[unit.name])) / saved
            key = (rate, -saved)
            if best is None or key < best[0]:
                best = (key, unit, count, saved)
        if best is None:
            break
        _, unit, count, _ = best
        position[unit.name] += 1
        pruned[unit.name] = count
        current = removed(pruned)
    rates = {u.name: 1.0 / (1e-9 + (loss(u, min(pruned[u.name] + 1, u.per_block - 1)) - loss(u, pruned[u.name])))
             for u in units}  # refine prunes more where the next channel costs least loss
    return problem.refine(pruned, rates)
