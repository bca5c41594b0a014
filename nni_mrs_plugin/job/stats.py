"""Comparisons over seeds, one rule for ``compare`` and every benchmark: mean and spread, and the paired per-seed
difference to a reference with its 95% Student-t interval, a win or a loss when the interval excludes zero.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

__all__ = ["mean_std", "interval", "verdict", "paired"]


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def interval(values: Sequence[float], confidence: float = 0.95) -> Tuple[float, float, float]:
    """(mean, low, high) of the Student-t interval of the mean; one value has an infinite interval."""
    from scipy.stats import t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, -math.inf, math.inf
    half = float(t.ppf((1 + confidence) / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def verdict(low: float, high: float) -> str:
    """A win is an interval above zero, a loss one below it, anything else a tie."""
    return "win" if low > 0 else "loss" if high < 0 else "tie"


def paired(values: Mapping[Any, float], reference: Mapping[Any, float]) -> Optional[Dict[str, Any]]:
    """``values`` minus ``reference`` over the seeds both have: mean difference, interval, verdict and count;
    None when they share no seed."""
    seeds = sorted(set(values) & set(reference))
    if not seeds:
        return None
    mean, low, high = interval([values[seed] - reference[seed] for seed in seeds])
    return {"diff": mean, "low": low, "high": high, "verdict": verdict(low, high), "n": len(seeds)}
