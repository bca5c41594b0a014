"""Smoke tests for the benchmark scripts (benchmarks/ is not a package: loaded by path)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from nni_mrs_plugin.checkpoint import load_pruned

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_script(name: str):
    if str(BENCHMARKS) not in sys.path:  # scripts import their neighbours (grid.py), as when run from benchmarks/
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_grid(out: Path, *args: str, **overrides: object) -> list:
    """A grid's command line on a few dozen images: one epoch each way, ``overrides`` as job keys (``__`` for dots)."""
    keys = {"data.train_subset": 128, "data.test_subset": 32, "data.batch_size": 64, "pretrain.epochs": 1,
            "finetune.epochs": 1, "eval.samples": 32, "pruning.adapt_bn": 32,
            **{key.replace("__", "."): value for key, value in overrides.items()}}
    return ["--output", str(out), *args, *(item for key, value in keys.items() for item in ("--set", f"{key}={value}"))]


def test_speedup_benchmark_times_each_backend_interleaved_against_the_bound(tmp_path, capsys):
    speedup = load_script("speedup")
    out = tmp_path / "s.json"
    speedup.main(["--models", "small_cnn", "--targets", "0.5", "--round-to", "1", "8", "--batches", "1", "--dtypes",
                  "fp32", "--runs", "2", "--warmup", "0", "--devices", "cpu", "--backends", "eager", "onnx",
                  "--samples", "16", "--out", str(out), "--no-progress"])
    result = json.loads(out.read_text())
    rows = {(r["backend"], r["target"], r["round_to"]): r for r in result["rows"]}
    assert set(rows) == {(b, t, n) for b in ("eager", "onnx") for t, n in ((None, None), (0.5, 1), (0.5, 8))}
    dense, pruned = rows["eager", None, None], rows["eager", 0.5, 1]
    assert pruned["flops"] < dense["flops"] and pruned["params"] < dense["params"]
    assert 1 / 0.51 <= pruned["flops_ratio"] <= 1 / 0.49  # counted after ModelSpeedup: within 0.01 of the target
    assert pruned["speedup"] == pytest.approx(dense["latency_ms"] / pruned["latency_ms"])
    assert pruned["per_flops_ratio"] == pytest.approx(pruned["speedup"] / pruned["flops_ratio"])
    assert 1.0 < pruned["bound"] and pruned["per_bound"] == pytest.approx(pruned["speedup"] / pruned["bound"])
    onnx = rows["onnx", 0.5, 8]
    assert onnx["speedup_vs_eager"] == pytest.approx(dense["latency_ms"] / onnx["latency_ms"])
    assert onnx["speedup"] == pytest.approx(rows["onnx", None, None]["latency_ms"] / onnx["latency_ms"])
    assert result["machine"]["threads"] >= 1 and "cpu_flags" in result["machine"]
    assert result["device_constants"]["cpu"]["flops_per_s"] > 0 and "--round-to 1 8" in result["command"]
    assert "| small_cnn | 0.5 | 8 | cpu | onnx | fp32 | 1 |" in capsys.readouterr().out
    table = speedup.main(["--summarize", str(out), "--out", str(tmp_path / "summary.json")])["runs"][0]
    assert table["columns"] == ["model", "target (FLOPs ratio)", "round_to", "eager", "onnx"]
    assert [row[:3] for row in table["rows"]] == [["small_cnn", "dense", "–"],
                                                  ["small_cnn", f"0.5 ({pruned['flops_ratio']:.2f})", 1],
                                                  ["small_cnn", f"0.5 ({rows['eager', 0.5, 8]['flops_ratio']:.2f})", 8]]
    assert table["rows"][2][4] == (f"{onnx['speedup']:.2f}× ({onnx['speedup_vs_eager']:.2f}×, "
                                   f"{onnx['per_bound']:.2f})")

    with pytest.raises(SystemExit):
        speedup.main(["--targets", "1.5", "--out", str(tmp_path / "bad.json")])
    assert "1.5" in capsys.readouterr().err and not (tmp_path / "bad.json").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_speedup_benchmark_on_cuda_times_cuda_graphs(tmp_path):
    speedup = load_script("speedup")
    out = tmp_path / "s.json"
    speedup.main(["--models", "small_cnn", "--targets", "0.5", "--round-to", "8", "--batches", "1", "256", "--dtypes",
                  "fp32", "bf16", "--runs", "3", "--warmup", "2", "--devices", "cuda", "--backends", "eager", "folded",
                  "cudagraphs", "--samples", "16", "--out", str(out), "--no-progress"])
    rows = json.loads(out.read_text())["rows"]
    assert {(r["backend"], r["dtype"], r["batch"]) for r in rows} == {
        (b, d, n) for b in ("eager", "folded", "cudagraphs") for d in ("fp32", "bf16") for n in (1, 256)}
    assert all(r["device"] == "cuda" and r["latency_ms"] > 0 for r in rows)
    assert all(r["bound"] > 1.0 for r in rows if r["target"] is not None)


def test_robustness_verdicts_rule():
    """MRS against each baseline by the paired per-seed rule of every benchmark; natural rows are not baselines."""
    robustness = load_script("robustness")
    per_seed = {"mrs": (0.60, 0.61, 0.59), "l1": (0.55, 0.555, 0.545), "random": (0.62, 0.58, 0.60),
                "taylor": (0.65, 0.66, 0.64), "l1-natural": (0.1, 0.1, 0.1)}
    runs = [{"variant": variant, "target": 0.5, "seed": seed, "accuracy": {"pgd20": value}}
            for variant, values in per_seed.items() for seed, value in enumerate(values)]
    found = {v["baseline"]: v["verdict"] for v in robustness.verdicts(runs)}
    assert found == {"l1": "win", "random": "tie", "taylor": "loss"}
    assert all(v["variant"] == "mrs" and v["n"] == 3 for v in robustness.verdicts(runs))


@pytest.mark.slow
def test_robustness_benchmark_runs_and_resumes(tmp_path, capsys):
    import yaml
    from test_pipeline import TINY

    robustness = load_script("robustness")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    argv = ["--config", str(config), "--methods", "mrs", "random", "--natural", "mrs", "--targets", "0.5",
            "--seeds", "0", "--output", str(tmp_path / "out")]
    assert robustness.main(argv) == 0
    summary = json.loads((tmp_path / "out" / "robustness.json").read_text())
    assert {(v["baseline"], v["attack"]) for v in summary["verdicts"]} == {("random", "clean"), ("random", "pgd20")}
    rows = json.loads((tmp_path / "out" / "compare.json").read_text())["rows"]
    assert {r["variant"] for r in rows} == {"dense", "dense (mrs-natural)", "mrs", "random", "mrs-natural"}
    assert "| mrs-natural | 0.5 |" in capsys.readouterr().out
    for run in ("mrs-0.5", "mrs-natural-0.5"):  # MRPF allocates by MRS, whatever the job's default tau
        assert json.loads((tmp_path / "out" / "seed0" / run / "allocation.json").read_text())["measured"] is True
    model = tmp_path / "out" / "seed0" / "mrs-natural-0.5" / "pruned.pt"
    stamp = model.stat().st_mtime_ns
    assert robustness.main(argv) == 0  # resumes: nothing retrains
    assert model.stat().st_mtime_ns == stamp
    assert robustness.main(argv[:-2] + ["--set", "pruning.tua=1", "--output", str(tmp_path / "x")]) == 2


def _run(variant, seed, pgd, model="vgg16_bn", after=None):
    return {"model": model, "variant": variant, "target": 0.9, "seed": seed, "accuracy": {"pgd20": pgd},
            **({"accuracy_after_pruning": {"pgd20": after}} if after is not None else {})}


def test_allocation_grid_chooses_on_validation_and_credits_the_allocation_alone():
    """Select ranks candidates on l1 rows (uniform and measure-only ones aside) and picks the criterion on the
    pairs both have; the default is the best mean over shared (model, seed) pairs, uniform ratios included;
    same-criterion verdicts credit the allocation alone; carry-over is the rank correlation per seed."""
    allocation = load_script("allocation")
    assert allocation.variant("uniform-taylor") == {"pruning.pruner": "mrs", "pruning.options": {
        "tau": 0.0, "criterion": "taylor", "n_samples": 512}}
    assert allocation.variant("harp", 2) == {"pruning.pruner": "harp", "pruning.options": {"epochs": 2}}
    assert allocation.same_criterion("power-feature-taylor") == "uniform-taylor"
    assert allocation.same_criterion("l1-global") is None and allocation.same_criterion("harp") is None

    select = [_run("power-feature-l1", 0, 0.70), _run("power-weight-l1", 0, 0.60), _run("uniform-l1", 0, 0.65),
              _run("budget-curve-reattack-l1", 0, 0.90), _run("power-feature-taylor", 0, 0.66),
              _run("uniform-taylor", 0, 0.64)]
    record = allocation.choose_candidates(select, 1)
    assert record["selected"] == ["power-feature"]  # the re-attacking one ranks first but is not eligible
    assert record["criterion"] == "l1"  # (0.70 + 0.65) / 2 > (0.66 + 0.64) / 2 on the same two allocations
    assert record["criterion_pairs"] == ["vgg16_bn/power-feature", "vgg16_bn/uniform"]
    assert "criterion" not in allocation.choose_candidates(select[:3], 1)

    default = []
    for seed, (u, p) in enumerate([(0.60, 0.58), (0.62, 0.60), (0.64, 0.62)]):
        for model, shift in (("vgg16_bn", 0.0), ("resnet18", 0.05)):
            default += [_run("uniform-taylor", seed, u + shift, model), _run("power-feature-taylor", seed, p + shift,
                                                                            model)]
    default.append(_run("power-feature-taylor", 3, 0.99))  # a seed the others lack does not count
    record = allocation.choose_default(default)
    assert record["chosen"] == "uniform-taylor" and len(record["pairs"]) == 6
    assert record["versus_uniform"]["power-feature-taylor"]["verdict"] == "loss"  # -2 points on every pair
    assert allocation.choose_default([]) is None

    # Taylor channels give +10 points everywhere; the allocation adds nothing on top of them
    report = [_run("uniform-l1", s, 0.5, after=0.1 + s / 100) for s in range(3)]
    report += [_run("uniform-taylor", s, 0.6, after=0.2 + s / 100) for s in range(3)]
    report += [_run("power-feature-taylor", s, 0.6 + d, after=0.3) for s, d in enumerate((0.01, -0.01, 0.0))]
    against_l1 = {v["variant"]: v["verdict"] for v in allocation.verdicts(report, same=False)}
    alone = {v["variant"]: v for v in allocation.verdicts(report, same=True)}
    assert against_l1 == {"uniform-taylor": "win", "power-feature-taylor": "win"}
    assert set(alone) == {"power-feature-taylor"} and alone["power-feature-taylor"]["verdict"] == "tie"
    assert alone["power-feature-taylor"]["reference"] == "uniform-taylor"
    (carry,) = allocation.carry_over(report)  # per seed, after pruning 0.1 < 0.2 < 0.3; after fine-tuning the
    # same order (rho 1), the last two swapped (0.5) or tied (3 ** 0.5 / 2)
    assert carry["model"] == "vgg16_bn" and carry["rho"]["n"] == 3
    assert carry["rho"]["mean"] == pytest.approx((1 + 0.5 + 3 ** 0.5 / 2) / 3)


@pytest.mark.slow
def test_allocation_grid_runs_every_phase_on_the_harness_and_resumes(tmp_path, capsys):
    """select -> default -> report on a few images: each row a job run folder from one dense model per seed,
    every report row at its FLOPs target after removal, a summary that render.py reads, a rerun that trains
    nothing, and another recipe in the same folder refused in one line."""
    allocation = load_script("allocation")
    render = load_script("render")
    out = tmp_path / "out"
    argv = tiny_grid(out, "--models", "vgg16_bn", "--width", "0.0625", "--targets", "0.5", "--select-target", "0.5",
                     "--seeds", "0", "1", "--candidates", "power-weight", "power-feature", "--select", "1",
                     "--n-samples", "32", "--phases", "select", "default", "report", data__validation=64,
                     pretrain__steps=1, finetune__steps=1, eval__autoattack_samples=2)
    assert allocation.main(argv) == 0
    selected = json.loads((out / "selected.json").read_text())["selected"]
    assert len(selected) == 1 and json.loads((out / "default.json").read_text())["chosen"]
    runs = load_script("grid").finished(out, "report")
    assert {r["variant"] for r in runs} == set(allocation.report_rows({"selected": selected}))
    assert {r["seed"] for r in runs} == {0, 1} and len(runs) == 2 * 7
    for run in runs:
        assert abs(1 - run["pruned"]["flops"] / run["dense_measure"]["flops"] - 0.5) <= 0.01, run["variant"]
        assert set(run["accuracy"]) == {"clean", "pgd20", "autoattack"} and "pgd20" in run["accuracy_after_pruning"]
    assert len({r["dense"] for r in runs if r["seed"] == 0}) == 1  # one dense model per seed
    summary = json.loads((out / "summary.json").read_text())
    judged = render._judged(summary)
    assert {v["row"] for v in judged} == {f"{selected[0]}-l1", f"{selected[0]}-taylor"}
    assert all(v["n"] == 2 for v in judged) and summary["report"]["carry_over"]
    assert set(summary["report"]["seconds"]["vgg16_bn"]) == {"prune", "speedup", "finetune", "evaluate"}
    model = out / "report" / "vgg16_bn-seed1" / "seed1" / "harp-0.5" / "pruned.pt"
    stamp = model.stat().st_mtime_ns
    assert allocation.main(argv) == 0 and model.stat().st_mtime_ns == stamp  # resumes: nothing retrains
    capsys.readouterr()
    assert allocation.main(argv + ["--set", "finetune.lr=0.02"]) == 2
    error = capsys.readouterr().err.strip()
    assert "holds a run of a different config" in error and "\n" not in error


def test_finetune_grid_ranks_recipes_on_validation_and_judges_them_against_pgd_at_equal_epochs():
    finetune = load_script("finetune")
    grid = finetune.variants(["pgd", "rslad-ema"], [3, 10])
    assert grid["rslad-ema-10"] == {"finetune.method": "rslad", "finetune.ema": finetune.EMA, "finetune.epochs": 10}
    runs = [dict(_run(f"{r}-{e}", 0, pgd), target=t) for (r, e, pgd) in
            [("pgd", 3, 0.50), ("rslad-ema", 3, 0.55), ("pgd", 10, 0.60), ("rslad-ema", 10, 0.58)] for t in (0.75, 0.9)]
    selected = finetune.choose(runs)
    assert selected["best"] == {"3": "rslad-ema", "10": "pgd"}
    rows = finetune.allocation_rows(selected, 10, harp_epochs=2)
    assert rows["pgd-10-mrs"]["pruning.options.tau"] == 1.0 and rows["pgd-10-harp"]["pruning.pruner"] == "harp"
    assert rows["pgd-10-harp"]["pruning.options"] == {"epochs": 2, "stages": 2, "gamma": 0.01, "start": "dense"}
    report = [_run(v, s, 0.5 + d + 0.01 * s) for s in range(3) for v, d in
              [("pgd-3", 0.0), ("rslad-ema-3", 0.03), ("pgd-10", 0.05), ("rslad-ema-10", 0.04), ("pgd-10-mrs", 0.05)]]
    judged = {(v["variant"], v["reference"]): v["verdict"] for v in finetune.verdicts(report) if v["attack"] == "pgd20"}
    assert judged == {("rslad-ema-3", "pgd-3"): "win", ("rslad-ema-10", "pgd-10"): "loss",
                      ("pgd-10-mrs", "pgd-10"): "tie"}


@pytest.mark.slow
def test_finetune_grid_runs_select_and_report_on_the_harness(tmp_path):
    finetune = load_script("finetune")
    out = tmp_path / "out"
    argv = tiny_grid(out, "--models", "vgg16_bn", "--width", "0.0625", "--targets", "0.5", "--seeds", "0", "1",
                     "--recipes", "pgd", "rslad-ema", "nfgsm", "--epochs", "1", data__validation=64, pretrain__steps=1,
                     finetune__steps=1, eval__autoattack_samples=2, pruning__options__n_samples=32)
    with pytest.warns(UserWarning, match="ema=0.995 averages over about 200 steps"):
        assert finetune.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    best = summary["selected"]["best"]["1"]
    assert best in ("pgd", "rslad-ema", "nfgsm")
    runs = load_script("grid").finished(out, "report")
    assert {r["variant"] for r in runs} == {"pgd-1", "rslad-ema-1", "nfgsm-1", f"{best}-1-mrs"}
    assert all(abs(1 - r["pruned"]["flops"] / r["dense_measure"]["flops"] - 0.5) <= 0.01 for r in runs)
    assert {(v["variant"], v["reference"]) for v in summary["report"]["verdicts"]} == {
        ("rslad-ema-1", "pgd-1"), ("nfgsm-1", "pgd-1"), (f"{best}-1-mrs", f"{best}-1")}
    assert summary["report"]["seconds"]["rslad-ema-1"]["finetune"] > 0 and len(summary["report"]["dense"]) == 2
    assert "| vgg16_bn | 0.5 | rslad-ema-1 | 2 |" in (out / "summary.md").read_text()


def test_verified_grid_reports_ibp_before_and_after_fine_tuning_and_mrs_against_uniform(tmp_path):
    verified = load_script("verified")
    out = tmp_path / "out"
    argv = tiny_grid(out, "--targets", "0.5", "--seeds", "0", "1", pruning__options__n_samples=32)
    assert verified.main(argv) == 0
    runs = load_script("grid").finished(out, "report")
    assert {(r["variant"], r["seed"]) for r in runs} == {(v, s) for v in ("uniform", "mrs") for s in (0, 1)}
    assert all(set(r["accuracy"]) == set(r["accuracy_after_pruning"]) == {"clean", "pgd20", "ibp"} for r in runs)
    summary = json.loads((out / "summary.json").read_text())
    assert {(v["variant"], v["reference"]) for v in summary["report"]["verdicts"]} == {("mrs", "uniform")}
    assert "| 0.5 | mrs | 2 |" in (out / "summary.md").read_text()


def test_layers_grid_prunes_filters_layers_and_both_and_judges_them_against_dense_and_filters(tmp_path):
    layers = load_script("layers")
    out = tmp_path / "out"
    argv = tiny_grid(out, "--seeds", "0", data__train_subset=64, data__batch_size=32, eval__attacks="[clean, fgsm]",
                     pruning__options__n_samples=16, pruning__options__steps=1)
    assert layers.main(argv) == 0
    runs = load_script("grid").finished(out, "report")
    assert sorted(r["variant"] for r in runs) == ["both", "filters", "layers"]
    removed = {r["variant"]: 1 - r["pruned"]["flops"] / r["dense_measure"]["flops"] for r in runs}
    assert abs(removed["filters"] - 0.25) <= 0.01 and 0.25 <= removed["layers"] < 0.25 + 0.17
    assert abs(removed["both"] - 0.25) <= 0.01
    verdicts = json.loads((out / "summary.json").read_text())["report"]["verdicts"]
    assert {(v["variant"], v["reference"]) for v in verdicts} == {
        ("filters", "dense"), ("layers", "dense"), ("both", "dense"), ("layers", "filters"), ("both", "filters")}
    assert "| 0.25 | layers | 1 |" in (out / "summary.md").read_text()


def test_joint_removal_of_one_unit_is_its_curve_and_the_table_ranks_rows(fashion, calibration, monkeypatch):
    """allocation_joint.py compares the budget rule's sum of single-unit curves with removing every unit at once;
    that comparison holds only if its removal of one unit alone is exactly what the curves measured."""
    from nni_mrs_plugin.mrs.allocator import MRSSparsityAllocator
    from nni_mrs_plugin.evaluate import mean_loss
    from nni_mrs_plugin.mrs.curves import prune_count
    from conftest import make_model

    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports allocation.py, as when run from benchmarks/
    joint = load_script("allocation_joint")
    model = make_model("small_cnn").eval()
    ratios = (0.25, 0.5, 0.75)
    allocator = MRSSparsityAllocator(rule="budget", criterion="l1", n_samples=64, seed=3, progress=False,
                                     ratios=ratios, recalibrate=True)
    result = allocator.allocate(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], calibration)
    x, x_adv, y = allocator.calibration_set(model, calibration)
    _, units, _, _ = allocator.units(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], x[:1])
    base = float(mean_loss(model, x_adv, y))
    for unit in units:
        for i, ratio in enumerate(ratios):
            alone = joint.joint_rise(model, {unit: prune_count(unit, ratio)}, x, x_adv, y, base)
            assert alone == pytest.approx(result.curves[unit.name][i], abs=1e-5), (unit.name, ratio)
    joint.joint_rise(model, {u: prune_count(u, 0.75) for u in units}, x, x_adv, y, base)
    assert float(mean_loss(model, x_adv, y)) == base  # the model is restored

    def entry(row, seed, predicted, joint_rise, acc):
        return {"model": "m", "target": 0.9, "seed": seed, "row": row, "predicted": predicted, "joint": joint_rise,
                "pruned_pgd20": acc}

    rows = joint.ROWS[:3]
    entries = [entry(r, s, p, j, a) for s in (0, 1) for r, p, j, a in zip(rows, (0.1, 0.2, 0.3), (3, 2, 1),
                                                                               (0.01, 0.02, 0.03))]
    text = joint.table(entries)
    assert "| m | 0.9 | uniform-l1 | 2 | 0.100 | 3.000 | 1.00 |" in text
    assert "| m | 2 | -1.00 | +1.00 | -1.00 |" in text  # the prediction orders them backwards, the joint rise right


def test_mrs_cost_times_each_estimator_where_it_measures_and_the_default_pruner(tmp_path, capsys):
    """Every estimator is timed on a run that measures MRS (tau 0, the default, would skip it); `default` times
    MRSPruner's one-shot compress with its defaults, which measures no MRS."""
    mrs_cost = load_script("mrs_cost")
    out = tmp_path / "cost.json"
    result = mrs_cost.main(["--model", "small_cnn", "--samples", "32", "--at-samples", "32", "--batch-size", "16",
                            "--image-size", "28", "--estimators", "default,feature,curve", "--device", "cpu",
                            "--out", str(out)])
    assert json.loads(out.read_text()) == result
    estimators = result["estimators"]
    assert estimators["feature"]["mrs_measured"] and estimators["curve"]["mrs_measured"]
    assert estimators["default"]["mrs_measured"] is False
    assert all(0 < e["seconds"] and 0 < e["fraction_of_epoch"] for e in estimators.values())
    rate = result["pgd10_training_samples_per_s"]
    assert result["pgd10_epoch_50k_seconds_from_rate"] == pytest.approx(50_000 / rate)
    with pytest.raises(SystemExit):
        mrs_cost.main(["--estimators", "feature,magic"])
    assert "unknown estimator 'magic'" in capsys.readouterr().err


def test_benchmarks_page_is_rendered_from_the_summaries(tmp_path, monkeypatch):
    """BENCHMARKS.md is what benchmarks/render.py makes of benchmarks/results: a changed summary without a
    re-render fails here, and the allocation verdicts it prints are counted from the summaries."""
    render = load_script("render")
    assert render.main(["--check"]) == 0, "BENCHMARKS.md is stale: run python benchmarks/render.py"
    page = render.render()
    assert "| PGD-20 | 16 | 0 | 14 | 2 |" in page  # allocation-cpu: no win, 2 losses per metric (4 of 32)
    for name in ("adv-throughput", "mrs-cost", "speedup", "allocation-default", "allocation-gpu"):
        assert f'`benchmarks/results/kept.json` ("{name}", kept as measured' in page
    for name in ("allocation-cpu", "allocation-cpu-w0.0625", "allocation-cpu-w0.0625-fast"):
        assert f"`benchmarks/results/{name}/summary.json`" in page
    stale = tmp_path / "BENCHMARKS.md"
    stale.write_text(page.replace("| 0 | 14 | 2 |", "| 1 | 13 | 2 |"))
    monkeypatch.setattr(render, "PAGE", stale)
    assert render.main(["--check"]) == 1


def test_collapse_grid_reruns_each_collapsed_case_three_ways_and_tables_what_the_guard_did(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports allocation.py, as when run from benchmarks/
    collapse = load_script("collapse")
    out = tmp_path / "out"
    argv = tiny_grid(out, "--seeds", "2", data__train_subset=96, data__validation=32, data__batch_size=32,
                     eval__attacks="[clean, pgd20]", eval__after_pruning="[]")
    assert collapse.main(argv) == 0
    runs = load_script("grid").finished(out, "l1-global-0.9-seed2")
    assert sorted(r["variant"] for r in runs) == ["l1-global.fast", "l1-global.guarded", "l1-global.nfgsm"]
    assert all(abs(1 - r["pruned"]["flops"] / r["dense_measure"]["flops"] - 0.9) <= 0.01 for r in runs)
    configs = {r["variant"]: yaml.safe_load((Path(r["folder"]) / "config.yaml").read_text())["finetune"] for r in runs}
    assert configs["l1-global.guarded"]["collapse_retries"] == 2 and configs["l1-global.fast"]["method"] == "fast"
    assert configs["l1-global.nfgsm"]["method"] == "nfgsm"
    table = json.loads((out / "summary.json").read_text())["runs"][0]
    assert table["columns"][4:6] == ["clean", "pgd20"] and len(table["rows"]) == 3  # seed 2: one case
    assert not (out / "uniform-l1-0.9-seed1").exists()  # a seed not asked for


def test_finetune_grid_with_one_recipe_reports_round_to_rows_against_it(tmp_path):
    finetune = load_script("finetune")
    out = tmp_path / "out"
    argv = tiny_grid(out, "--models", "vgg16_bn", "--width", "0.0625", "--targets", "0.5", "--seeds", "0", "1",
                     "--recipes", "pgd", "--epochs", "1", "--phases", "report", "--no-allocation", "--round-to", "4",
                     data__validation=64, pretrain__steps=1, finetune__steps=1, eval__attacks="[clean, pgd20]",
                     pruning__options__n_samples=32)
    assert finetune.main(argv) == 0
    runs = load_script("grid").finished(out, "report")
    assert {r["variant"] for r in runs} == {"pgd-1", "pgd-1-r4"} and not (out / "select").exists()
    assert all(abs(1 - r["pruned"]["flops"] / r["dense_measure"]["flops"] - 0.5) <= 0.01 for r in runs)
    aligned = next(r for r in runs if r["variant"] == "pgd-1-r4")
    model = load_pruned(Path(aligned["folder"]) / "pruned.pt")
    assert all(m.out_channels % 4 == 0 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    verdicts = json.loads((out / "summary.json").read_text())["report"]["verdicts"]
    assert {(v["variant"], v["reference"]) for v in verdicts} == {("pgd-1-r4", "pgd-1")}
