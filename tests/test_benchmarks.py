"""Smoke tests for the benchmark scripts (benchmarks/ is not a package: loaded by path)."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

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
    assert result["settings"]["tau"] == 1.0  # allocated by MRS, as the recorded tables
    assert "| small_cnn | 0.5 |" in capsys.readouterr().out

    with pytest.raises(SystemExit):
        speedup.main(["--targets", "1.5", "--out", str(tmp_path / "bad.json")])
    assert "1.5" in capsys.readouterr().err and not (tmp_path / "bad.json").exists()


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


def test_allocation_benchmark_pairs_each_seed_with_uniform_l1():
    """A row wins only when its paired per-seed differences to uniform-l1 have a 95% interval above zero."""
    allocation = load_script("allocation")
    mean, low, high = allocation.interval([1.0, 2.0, 3.0])
    half = 4.303 / 3 ** 0.5  # t(0.975, 2 degrees of freedom) = 4.303
    assert mean == 2.0 and low == pytest.approx(2.0 - half, abs=1e-3) and high == pytest.approx(2.0 + half, abs=1e-3)

    def run(row, seed, pgd):
        return {"model": "vgg16_bn", "target": 0.9, "row": row, "seed": seed, "flops_removed": 0.9, "params": 10,
                "pruned": {"clean": 0.5, "pgd20": pgd}, "finetuned": {"clean": 0.6, "pgd20": pgd}}
    results = [run("uniform-l1", s, p) for s, p in enumerate((0.50, 0.40, 0.60))]
    results += [run("steady", s, p + 0.02) for s, p in enumerate((0.50, 0.40, 0.60))]  # +2 points every seed
    results += [run("noisy", s, p) for s, p in enumerate((0.60, 0.30, 0.70))]  # +10, -10, +10
    rows = {e["row"]: e["metrics"]["tuned_pgd20"] for e in allocation.summarise(results)["rows"]}
    assert rows["uniform-l1"]["verdict"] == "reference"
    assert rows["steady"]["verdict"] == "win" and rows["steady"]["diff"] == pytest.approx(0.02)
    assert rows["noisy"]["verdict"] == "tie"
    assert allocation.row_options("uniform-taylor") == ("mrs", {"tau": 0.0, "criterion": "taylor"})
    assert allocation.row_options("budget-curve-bn-l1") == ("mrs", {"rule": "budget", "estimator": "curve",
                                                                    "recalibrate": True, "criterion": "l1"})


def test_allocation_benchmark_separates_allocation_from_criterion(tmp_path):
    """Same-criterion pairing credits the allocation only; the select phase picks the criterion on validation."""
    allocation = load_script("allocation")
    assert allocation.same_criterion("power-feature-taylor") == "uniform-taylor"
    assert allocation.same_criterion("budget-curve-bn-l1") == "uniform-l1"
    assert allocation.same_criterion("l1-global") is None and allocation.same_criterion("random") is None

    def run(row, seed, pgd, model="vgg16_bn"):
        return {"model": model, "target": 0.9, "row": row, "seed": seed, "flops_removed": 0.9, "params": 10,
                "pruned": {"pgd20": pgd}, "finetuned": {"pgd20": pgd}}
    # Taylor channels give +10 points everywhere; the allocation adds nothing on top of them
    results = [run("uniform-l1", s, 0.5) for s in range(3)] + [run("uniform-taylor", s, 0.6) for s in range(3)]
    results += [run("power-feature-taylor", s, 0.6 + d) for s, d in enumerate((0.01, -0.01, 0.0))]
    against_l1 = {e["row"]: e["metrics"]["tuned_pgd20"] for e in allocation.summarise(results)["rows"]}
    alone = {e["row"]: e["metrics"]["tuned_pgd20"]
             for e in allocation.summarise(results, allocation.same_criterion)["rows"]}
    assert against_l1["power-feature-taylor"]["verdict"] == "win"
    assert alone["power-feature-taylor"]["verdict"] == "tie"
    assert alone["power-feature-taylor"]["diff"] == pytest.approx(0.0, abs=1e-12)
    assert alone["uniform-taylor"]["verdict"] == "reference"

    select = [run("power-feature-l1", 0, 0.70), run("power-weight-l1", 0, 0.60), run("uniform-l1", 0, 0.65),
              run("power-feature-taylor", 0, 0.66), run("uniform-taylor", 0, 0.64)]
    path = tmp_path / "selected.json"
    assert allocation.select_summary(select, path, 1) == ["power-feature"]  # ranked on l1 rows only
    record = json.loads(path.read_text())
    assert record["criterion"] == "l1"  # (0.70 + 0.65) / 2 > (0.66 + 0.64) / 2 on the same two allocations
    assert record["criterion_pairs"] == ["vgg16_bn/power-feature", "vgg16_bn/uniform"]
    assert "criterion" not in json.loads((allocation.select_summary(select[:3], path, 1) and path).read_text())


def test_allocation_benchmark_time_table_means_each_stage_per_model():
    allocation = load_script("allocation")
    rows = [{"model": "vgg16_bn", "seconds": s, "stage_seconds": {
        "prune": 2.0, "pruned": {"clean": 1.0, "pgd20": 9.0}, "finetune": f,
        "finetuned": {"clean": 1.0, "pgd20": 9.0, "autoattack": a}}} for s, f, a in ((100.0, 40.0, 48.0),
                                                                                      (140.0, 60.0, 68.0))]
    table = allocation.time_table(rows + [{"model": "resnet18", "seconds": 5.0}])  # an old row without stages
    assert "| vgg16_bn | 2 | 2.0 | 10.0 | 50.0 | 10.0 | 58.0 | 120.0 |" in table and "resnet18" not in table
    assert allocation.time_table([{"model": "resnet18", "seconds": 5.0}]) == ""


def test_allocation_benchmark_wall_time_sums_running_intervals_only(tmp_path):
    allocation = load_script("allocation")
    log = tmp_path / "wall.log"
    assert allocation.wall_time(log) is None
    log.write_text("start 2026-11-23T10:00:00Z code abc\n"
                   "pause 2026-11-23T10:10:00Z (tests)\nresume 2026-11-23T10:40:00Z\n"
                   "start 2026-11-23T11:00:00Z code abc\n"  # the machine was lost: the 10:40 interval has no end
                   "stop 2026-11-23T11:30:00Z (end of session)\n"
                   "start 2026-11-24T09:00:00Z code def\nend 2026-11-24T10:00:01Z rc 0\n")
    wall = allocation.wall_time(log)
    assert wall["seconds"] == 600 + 1800 + 3601 and wall["intervals"] == 3 and wall["finished"]
    assert wall["unclosed"] == ["2026-11-23T10:40:00Z"] and wall["running_since"] is None
    line = allocation.wall_line(wall)
    assert "1 h 40 min 1 s in 3 interval" in line and "no recorded end" in line and "10:40:00" in line
    log.write_text("start 2026-11-23T10:00:00Z code abc\n")
    assert allocation.wall_time(log)["running_since"] == "2026-11-23T10:00:00Z"
    log.write_text("pause yesterday\n")
    with pytest.raises(ValueError, match="pause yesterday"):
        allocation.wall_time(log)


def test_allocation_benchmark_says_whether_fine_tuning_keeps_the_order_after_pruning(tmp_path):
    allocation = load_script("allocation")
    assert allocation.rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert allocation.rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert allocation.rank_correlation([1, 1, 2], [5, 6, 7]) == pytest.approx(0.866, abs=1e-3)  # ties: mean ranks

    def row(name, seed, pruned, tuned, curves=None):
        return {"model": "vgg16_bn", "target": 0.9, "seed": seed, "row": name, "pruned": {"pgd20": pruned},
                "finetuned": {"pgd20": tuned}, "ratios": {"a": 0.3, "b": 0.8}, "curves": curves or {},
                "flops_removed": 0.9}

    results = ([row(f"r{i}", 0, p, t) for i, (p, t) in enumerate(((0.1, 0.5), (0.2, 0.6), (0.3, 0.7)))]
               + [row(f"r{i}", 1, p, t) for i, (p, t) in enumerate(((0.1, 0.7), (0.2, 0.6), (0.3, 0.5)))])
    table = allocation.carry_over(results)
    assert "| vgg16_bn | 0.9 | 2 | 3 | +0.00 (-1.00 to +1.00) |" in table
    assert allocation.carry_over(results[:2]) == ""  # two rows a seed: no order to speak of
    partial = allocation.carry_over(results[:3] + results[3:5])  # seed 1 has two rows: left out, not counted
    assert "| vgg16_bn | 0.9 | 1 | 3 | +1.00 (+1.00 to +1.00) |" in partial

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert allocation.curve_plot(results, tmp_path, plt) is None  # no row measured curves
    curves = {"a": [0.0] * 8 + [0.5], "b": [0.01 * i for i in range(9)]}
    results += [row("budget-curve-bn-l1", 0, 0.2, 0.6, curves), row("uniform-l1", 0, 0.1, 0.5)]
    path = allocation.curve_plot(results, tmp_path, plt)
    assert path == tmp_path / "vgg16_bn-curves.png" and path.stat().st_size > 10_000


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


def test_allocation_benchmark_select_shards_partition_the_rows():
    allocation = load_script("allocation")
    every = allocation.select_rows(list(allocation.CANDIDATES))
    assert every[-1] == "uniform-l1" and len(every) == len(allocation.CANDIDATES) + 1
    shards = [allocation.select_rows(list(allocation.CANDIDATES), i, 2) for i in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(every) and not set(shards[0]) & set(shards[1])


def test_allocation_benchmark_fast_fine_tuning_and_a_folder_keeps_one_recipe(tmp_path, capsys):
    """--finetune-method fast fine-tunes (and trains HARP) with FGSM + random start while dense fits stay PGD; a
    folder remembers the recipe its rows were measured with and refuses another in one line, before any work."""
    import argparse

    allocation = load_script("allocation")
    args = argparse.Namespace(train_steps=5, finetune_method="fast")
    assert allocation.trainer(args).method == "fast"
    assert allocation.trainer(args, dense=True).method == "pgd" and allocation.trainer(args, dense=True).steps == 5
    assert allocation.trainer(argparse.Namespace(train_steps=3)).steps == 3  # rows of older callers: PGD
    out = tmp_path / "run"
    common = ["--output", str(out), "--phases", "dense", "--seeds", "0", "--models", "vgg16_bn", "--widths", "0.0625"]
    parse = allocation.build_parser().parse_args
    legacy = {k: v for k, v in vars(parse(common)).items() if k in allocation.RECIPE}
    del legacy["finetune_method"]  # a folder from before the option: its rows were fine-tuned with PGD
    out.mkdir()
    (out / "settings.json").write_text(json.dumps(legacy))
    assert allocation.check_settings(out, parse(common)) is None
    with pytest.raises(SystemExit) as stop:
        allocation.main(common + ["--finetune-method", "fast", "--aa", "100"])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert "--finetune-method fast (the folder's: pgd)" in error and "--aa 100 (the folder's: 500)" in error
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert allocation.check_settings(fresh, parse(["--finetune-method", "fast"])) is None
    assert json.loads((fresh / "settings.json").read_text())["finetune_method"] == "fast"


def test_allocation_benchmark_decides_the_default_on_validation_with_uniform_as_a_candidate(tmp_path):
    """The default phase runs uniform ratios, the shipped allocation and the selected ones with the chosen
    criterion; the best mean over the (model, seed) pairs all candidates share wins, uniform ratios included."""
    allocation = load_script("allocation")
    assert allocation.default_rows({"selected": ["budget-curve-bn", "power-feature"]}) == [
        "uniform-taylor", "power-feature-taylor", "budget-curve-bn-taylor"]  # no criterion chosen: the shipped one
    assert allocation.default_rows({"selected": ["budget-curve"], "criterion": "l1"}) == [
        "uniform-l1", "power-feature-l1", "budget-curve-l1"]

    def run(row, model, seed, pgd):
        return {"model": model, "target": 0.9, "row": row, "seed": seed, "finetuned": {"pgd20": pgd}}
    results = []
    for seed, (u, p, b) in enumerate([(0.60, 0.58, 0.61), (0.62, 0.59, 0.60), (0.64, 0.62, 0.63)]):
        for model, shift in (("vgg16_bn", 0.0), ("resnet18", 0.05)):
            results += [run("uniform-taylor", model, seed, u + shift),
                        run("power-feature-taylor", model, seed, p + shift),
                        run("budget-curve-bn-taylor", model, seed, b + shift)]
    results.append(run("power-feature-taylor", "vgg16_bn", 3, 0.99))  # a seed the others lack does not count
    path = tmp_path / "default.json"
    assert allocation.default_summary(results, path) == "uniform-taylor"
    record = json.loads(path.read_text())
    assert len(record["pairs"]) == 6 and ["vgg16_bn", 3] not in record["pairs"]
    assert record["validation_pgd20"]["power-feature-taylor"] == pytest.approx(0.5967 + 0.025, abs=1e-4)
    assert record["versus_uniform"]["power-feature-taylor"]["verdict"] == "loss"  # -2 points on every pair
    assert record["versus_uniform"]["budget-curve-bn-taylor"]["verdict"] == "tie"
    assert "uniform-taylor" not in record["versus_uniform"]
    assert allocation.default_summary([], path) is None


def test_allocation_benchmark_harp_row_learns_and_meets_the_target(tmp_path, fashion):
    """The harp row: HARPPruner on the training images with the fine-tuning objective, paired with uniform-l1
    (its starting point), no same-criterion partner; the sped-up model meets the FLOPs target."""
    import argparse

    from nni_mrs_plugin.evaluate import count_flops
    from nni_mrs_plugin.models import build_model

    allocation = load_script("allocation")
    assert allocation.row_options("harp") == ("harp", {}) and allocation.same_criterion("harp") is None
    assert "harp" in allocation.BASELINES
    torch.manual_seed(0)
    dense = build_model("vgg16_bn", in_channels=1, width=0.125).eval()
    train = torch.utils.data.Subset(fashion.dataset, range(256))
    args = argparse.Namespace(train_steps=1, harp_epochs=1)
    model, report = allocation.prune(dense, "harp", 0.9, None, 0, "cpu", train, args, tmp_path / "harp.pt")
    removed = 1 - count_flops(model, torch.zeros(1, 1, 28, 28)) / count_flops(dense, torch.zeros(1, 1, 28, 28))
    assert report["rule"] == "harp" and abs(removed - 0.9) <= 0.01
    assert (tmp_path / "harp.pt").is_file()  # the resume point, which run_row deletes once the row is written


def test_allocation_benchmark_row_runs_end_to_end_and_says_where_its_time_went(tmp_path, fashion, capsys):
    """One real row (prune, remove, adaptive BN, evaluate, adversarial fine-tuning, AutoAttack) on a few images:
    the row meets its FLOPs target, records each stage's wall time, and a rerun reads the file instead of redoing it."""
    import argparse

    from nni_mrs_plugin.checkpoint import save_pruned
    from nni_mrs_plugin.models import build_model

    allocation = load_script("allocation")
    torch.manual_seed(0)
    dense = tmp_path / "dense.pt"
    save_pruned(dense, build_model("vgg16_bn", in_channels=1, width=0.125).eval(), "vgg16_bn", in_channels=1,
                width=0.125)
    images = fashion.dataset
    data = (torch.utils.data.Subset(images, range(1024)), None, torch.utils.data.Subset(images, range(1024, 1056)))
    args = argparse.Namespace(device="cpu", test_size=32, finetune_epochs=1, finetune_lr=0.01, aa=8, train_steps=1,
                              harp_epochs=1)
    path = tmp_path / "row.json"
    result = allocation.run_row(path, dense, "uniform-taylor", 0.75, 0, data, args, "report")
    assert abs(result["flops_removed"] - 0.75) <= 0.01 and result["params"] < result["dense_params"]
    assert set(result["finetuned"]) == {"clean", "pgd20", "autoattack"}
    stages = result["stage_seconds"]
    assert set(stages) == {"prune", "pruned", "finetune", "finetuned"}
    assert set(stages["finetuned"]) == {"clean", "pgd20", "autoattack"} and stages["finetune"] > 0
    timed = sum(stages["pruned"].values()) + stages["prune"] + stages["finetune"]
    assert timed <= result["seconds"] + 0.5  # each stage once; 0.5 s for rounding
    assert "fine-tuning uniform-taylor: epoch 1/1 in " in capsys.readouterr().out  # a line per epoch
    assert json.loads(path.read_text()) == result and not path.with_suffix("").exists()  # resume point removed
    path.write_text(json.dumps(dict(result, marker=True)))
    assert allocation.run_row(path, dense, "uniform-taylor", 0.75, 0, data, args, "report")["marker"] is True


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
