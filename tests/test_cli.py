"""`nni-mrs run`: the main job from the command line, on a small Fashion-MNIST subset."""
import json

import torch
from conftest import run_python

from nni_mrs_plugin.checkpoint import load_pruned
from nni_mrs_plugin.evaluate import count_params

TINY = ["--set", "data.train_subset=256", "--set", "data.test_subset=64", "--set", "data.batch_size=64",
        "--set", "pretrain.epochs=1", "--set", "pretrain.steps=2", "--set", "pruning.options.n_samples=64",
        "--set", "finetune.steps=2", "--set", "eval.samples=64",
        "--set", "eval.attacks=[clean, pgd20]"]


def test_run_prints_dense_vs_pruned_and_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    result = run_python(["-m", "nni_mrs_plugin", "run", *TINY, "--no-progress", "--output", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    for label in ("params", "flops", "cpu_latency_ms", "clean accuracy", "pgd20 accuracy", "run folder"):
        assert label in result.stdout, label
    stages = json.loads((out / "stages.json").read_text())["stages"]
    dense, pruned = stages["pretrain"]["dense"], stages["speedup"]["pruned"]
    assert abs(1 - pruned["flops"] / dense["flops"] - 0.5) <= 0.01
    model = load_pruned(out / "pruned.pt")
    assert count_params(model) == pruned["params"]
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert (out / "report.md").exists() and (out / "mrs_units.png").stat().st_size > 1000


def test_missing_data_exits_2_with_one_line(tmp_path):
    result = run_python(["-m", "nni_mrs_plugin", "run", "--set", f"data.root={tmp_path}", "--output",
                         str(tmp_path / "run")])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nni-mrs: Fashion-MNIST not found")


def test_version_names_the_package_and_what_it_runs_on():
    import nni_mrs_plugin

    result = run_python(["-m", "nni_mrs_plugin", "--version"])
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"nni-mrs {nni_mrs_plugin.__version__} (nni 3.0") and "torch 2." in line and "\n" not in line


def test_bad_override_syntax_is_rejected():
    result = run_python(["-m", "nni_mrs_plugin", "run", "--set", "pruning.target"])
    assert result.returncode == 2
    assert "expected KEY=VALUE (e.g. pruning.tau=0.5), got 'pruning.target'" in result.stderr


def test_eval_scores_a_saved_model_with_the_runs_config(tmp_path):
    out = tmp_path / "run"
    result = run_python(["-m", "nni_mrs_plugin", "run", *TINY, "--set", "pretrain.epochs=0", "--until", "speedup",
                         "--no-progress", "--output", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_python(["-m", "nni_mrs_plugin", "eval", str(out / "pruned_init.pt"), "--set", "eval.samples=32",
                         "--set", "eval.attacks=[clean, pgd5]", "--out", str(tmp_path / "eval.json")])
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert scores["clean"]["samples"] == 32 and scores["pgd5"]["samples"] == 32
    assert scores["settings"]["eps"] == 0.1  # Fashion-MNIST's default radius, from the run's config
    assert 0 <= scores["pgd5"]["accuracy"] <= scores["clean"]["accuracy"]
    # the same model exported to ONNX, checked on the run's test images at its radius
    result = run_python(["-m", "nni_mrs_plugin", "export", str(out / "pruned_init.pt"), "--samples", "32"])
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "pruned_init.onnx.export.json").read_text())
    assert (out / "pruned_init.onnx").is_file() and record["input_shape"] == [1, 28, 28]
    checks = record["verify"]
    assert checks["labels"] == "given" and checks["samples"] == 32 and checks["eps"] == 0.1
    assert checks["relative_difference_batch_32"] <= 1e-3
    result = run_python(["-m", "nni_mrs_plugin", "export", str(out / "pruned_init.pt"), "--format", "openvino", "--out",
                         str(tmp_path / "model.onnx")])
    assert result.returncode == 2 and result.stderr.strip() == (
        f"nni-mrs: error: an OpenVINO model is an .xml file with a .bin beside it: give a path ending in .xml, got "
        f"'{tmp_path / 'model.onnx'}'")


def test_eval_of_a_missing_checkpoint_is_one_line(tmp_path):
    result = run_python(["-m", "nni_mrs_plugin", "eval", str(tmp_path / "nope.pt")])
    assert result.returncode == 2
    assert result.stderr.strip() == f"nni-mrs: config error: checkpoint '{tmp_path / 'nope.pt'}' does not exist"


def test_the_job_refuses_torchrun_in_one_line():
    """Under torchrun every process would prune on its own and fine-tuning would hang: say so instead."""
    result = run_python(["-m", "nni_mrs_plugin", "run"], {"WORLD_SIZE": "2"}, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == ("nni-mrs: run runs as one process, not under torchrun (WORLD_SIZE=2); for "
                                     "several GPUs call fit() under torchrun in your own script")


def test_an_old_flat_key_is_one_warning_line_and_still_runs(tmp_path):
    config = tmp_path / "old.yaml"
    config.write_text("pretrain:\n  epochs: 0\npruning:\n  tau: 1.0\n  samples: 32\nprogress: false\n")
    result = run_python(["-m", "nni_mrs_plugin", "run", str(config), "--until", "pretrain", "--output",
                         str(tmp_path / "run")])
    assert result.returncode == 0, result.stderr[-3000:]
    warned = [line for line in result.stderr.splitlines() if "flat pruning keys" in line]
    assert warned == ["nni-mrs: FutureWarning: flat pruning keys are deprecated, use pruning.options: moved "
                      "pruning.tau -> pruning.options.tau, pruning.samples -> pruning.options.n_samples"]
