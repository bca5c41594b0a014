"""Smoke tests for the benchmark scripts (benchmarks/ is not a package: loaded by path)."""
import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speedup_benchmark_small_cnn(tmp_path, capsys):
    speedup = load_script("speedup")
    out = tmp_path / "s.json"
    speedup.main(["--models", "small_cnn", "--targets", "0.5", "--batches", "1", "--dtypes", "fp32", "--runs", "2",
                  "--warmup", "0", "--devices", "cpu", "--samples", "16", "--out", str(out), "--no-progress"])
    result = json.loads(out.read_text())
    dense, pruned = result["rows"]
    assert dense["target"] is None and pruned["target"] == 0.5
    assert pruned["flops"] < dense["flops"] and pruned["params"] < dense["params"]
    # counted FLOPs after ModelSpeedup are within 0.01 of the target: removed in [0.49, 0.51]
    assert 1 / 0.51 <= pruned["flops_ratio"] <= 1 / 0.49
    assert pruned["flops_ratio"] == pytest.approx(dense["flops"] / pruned["flops"])
    assert dense["latency_ms"] > 0 and pruned["latency_ms"] > 0 and pruned["speedup_seconds"] > 0
    assert pruned["efficiency"] == pytest.approx(pruned["speedup"] / pruned["flops_ratio"])
    assert result["machine"]["torch"] and "--targets 0.5" in result["command"]
    assert "| small_cnn | 0.5 |" in capsys.readouterr().out

    with pytest.raises(SystemExit):
        speedup.main(["--targets", "1.5", "--out", str(tmp_path / "bad.json")])
    assert "1.5" in capsys.readouterr().err and not (tmp_path / "bad.json").exists()
