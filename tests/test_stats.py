"""One comparison rule for compare and every benchmark: paired per-seed differences, 95% t-intervals, verdicts."""
import math

import pytest

from nni_mrs_plugin.job.compare import compare_verdicts
from nni_mrs_plugin.job.stats import interval, mean_std, paired, verdict


def test_interval_is_student_t():
    mean, low, high = interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)  # t(0.975, 2) = 4.3027
    mean, low, high = interval([1.0] * 12 + [2.0] * 12)  # 24 seeds: t(0.975, 23) = 2.0687, not the normal 1.96
    assert high - mean == pytest.approx(2.0687 * 0.5108 / math.sqrt(24), rel=1e-3)
    assert interval([0.5]) == (0.5, -math.inf, math.inf)


def test_verdict_and_paired_difference():
    assert [verdict(0.1, 0.2), verdict(-0.2, -0.1), verdict(-0.1, 0.1)] == ["win", "loss", "tie"]
    steady = paired({0: 0.52, 1: 0.42, 2: 0.62}, {0: 0.50, 1: 0.40, 2: 0.60})  # +2 points on every seed
    assert steady["verdict"] == "win" and steady["diff"] == pytest.approx(0.02) and steady["n"] == 3
    noisy = paired({0: 0.60, 1: 0.38, 2: 0.70}, {0: 0.50, 1: 0.40, 2: 0.60})
    assert noisy["verdict"] == "tie"
    assert paired({0: 0.5, 5: 0.6}, {0: 0.4, 1: 0.4})["n"] == 1  # only seeds both have are paired
    assert paired({3: 0.5}, {0: 0.4}) is None
    assert mean_std([0.5, 0.7]) == {"mean": pytest.approx(0.6), "std": pytest.approx(0.1414, rel=1e-3), "n": 2}


def test_compare_verdicts_pair_each_variant_with_the_reference_per_seed():
    runs = [{"variant": v, "target": 0.5, "seed": s, "accuracy": {"clean": c, "pgd20": p}}
            for v, rows in {"mrs": [(0.80, 0.50), (0.70, 0.42), (0.75, 0.46)],
                            "l1": [(0.80, 0.47), (0.70, 0.39), (0.75, 0.43)]}.items()
            for s, (c, p) in enumerate(rows)]
    found = {(v["variant"], v["attack"]): v for v in compare_verdicts(runs, "mrs")}
    assert set(found) == {("l1", "clean"), ("l1", "pgd20")}
    assert found["l1", "pgd20"]["verdict"] == "loss" and found["l1", "pgd20"]["diff"] == pytest.approx(-0.03)
    assert found["l1", "clean"]["verdict"] == "tie" and found["l1", "clean"]["reference"] == "mrs"
