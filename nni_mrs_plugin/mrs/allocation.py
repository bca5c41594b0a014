"""The ``power`` rule: per-unit ratios from one sensitivity value per unit.

r_u = clip(c * (mean(m) / m_u) ** tau, r_min_u, r_max_u): more sensitive units are pruned less; tau = 0 gives
one ratio for every unit (the uniform baseline). ``c`` is found by bisection on the *predicted sped-up model*
(``BudgetProblem.scale``), then single channels are adjusted, least sensitive units first, until the removed
fraction is within the tolerance of the target.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping

from ..budget.problem import BudgetProblem

__all__ = ["allocate", "weights_from_scores"]


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


def allocate(problem: BudgetProblem, scores: Mapping[str, float], tau: float = 1.0) -> Dict[str, int]:
    """Channels to prune per block for each unit so that the sped-up model loses the problem's target."""
    missing = [unit.name for unit in problem.units if unit.name not in scores]
    if missing:
        raise ValueError(f"no sensitivity for units {missing}")
    return problem.scale(weights_from_scores({unit.name: scores[unit.name] for unit in problem.units}, tau))
