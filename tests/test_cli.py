"""The main job, end to end on a small Fashion-MNIST subset."""
import json

import torch

from conftest import run_python
from nni_mrs_plugin.checkpoint import load_pruned
from nni_mrs_plugin.metrics import count_params


def test_run_trains_prunes_removes_and_reports(tmp_path):
    out = tmp_path / "run"
    result = run_python(["-m", "nni_mrs_plugin", "run", "--epochs", "1", "--finetune-epochs", "1",
                         "--train-subset", "1024", "--test-subset", "512", "--no-progress", "--output", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ModelSpeedup" in result.stdout and "CPU latency" in result.stdout
    results = json.loads((out / "results.json").read_text())
    dense, pruned = results["dense"], results["pruned"]
    assert pruned["params"] < 0.6 * dense["params"]
    assert pruned["flops"] < 0.5 * dense["flops"]
    assert dense["accuracy"] > 0.3  # one short epoch already beats chance (0.1) by far
    model = load_pruned(out / "pruned.pt")
    assert count_params(model) == pruned["params"]
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_missing_data_exits_2_with_one_line(tmp_path):
    result = run_python(["-m", "nni_mrs_plugin", "run", "--data-root", str(tmp_path)])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nni-mrs: Fashion-MNIST not found")


def test_bad_option_names_value_and_range():
    result = run_python(["-m", "nni_mrs_plugin", "run", "--sparsity", "1.5"])
    assert result.returncode == 2
    assert "--sparsity: must be in (0, 1), got 1.5" in result.stderr
