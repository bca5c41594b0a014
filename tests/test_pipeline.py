"""The MRPF job: config validation, the stages end to end on a Fashion-MNIST subset, resume, baselines."""
import json

import pytest
import torch
from conftest import run_python

from nni_mrs_plugin.checkpoint import load_pruned
from nni_mrs_plugin.job.config import ConfigError, default_config_path, load_config
from nni_mrs_plugin.evaluate import count_flops
from nni_mrs_plugin.job.pipeline import STAGES, Pipeline

TINY = {
    "data": {"train_subset": 256, "test_subset": 64, "batch_size": 64},
    "pretrain": {"epochs": 1, "steps": 2},
    "pruning": {"options": {"n_samples": 64}},
    "finetune": {"epochs": 1, "steps": 2},
    "eval": {"attacks": ["clean", "pgd20"], "samples": 64},
    "progress": False,
}


def tiny(tmp_path, **sections):
    data = json.loads(json.dumps(TINY))
    if "pruner" in sections.get("pruning", {}) and "options" not in sections["pruning"]:
        data["pruning"]["options"] = {}  # TINY's options are MRSPruner's
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    data["output"] = {"dir": str(tmp_path / "run")}
    return load_config(data)


def test_shipped_configs_load():
    assert load_config().model.name == "small_cnn"
    assert load_config(default_config_path().with_name("cifar10_resnet18.yaml")).data.dataset == "cifar10"


@pytest.mark.parametrize("data, message", [
    ({"pruning": {"tua": 0.5}}, "unknown key 'pruning.tua'; did you mean 'pruning.options.tau'?"),
    ({"pruning": {"options": {"tua": 0.5}}}, "pruning.options.tua: unknown option 'tua'"),
    ({"pruning": {"options": {"rule": "joint", "rounds": 0}}},
     "pruning.options.rounds: rounds must be a positive integer, got 0"),
    ({"pruning": {"options": ["tau"]}}, "pruning.options: must be a mapping of option names to values"),
    ({"pruning": {"pruner": "l1", "options": {"tau": 1}}}, "pruning.options.tau: L1NormPruner takes no option 'tau'"),
    ({"pruning": {"pruner": "l1", "options": {"model": 1}}},
     "pruning.options.model: L1NormPruner: multiple values for argument 'model'"),
    ({"pruning": {"pruner": "harp", "options": {"epochs": 0}}}, "pruning.options.epochs: epochs must be a positive"),
    ({"pruning": {"tau": 1.0, "options": {"tau": 2.0}}}, "pruning.tau: also given as pruning.options.tau"),
    ({"modle": {}}, "unknown key 'modle'; did you mean 'model'?"),
    ({"pruning": {"target": 1.5}}, "pruning.target: must be in (0, 1), got 1.5"),
    ({"data": {"batch_size": "big"}}, "data.batch_size: must be an integer, got 'big'"),
    ({"finetune": {"method": "madry"}}, "finetune.method: unknown method 'madry'; choose one of pgd, trades, mart, fast"),
    ({"pretrain": {"eps": 2}}, "pretrain.eps: eps must be an L-inf radius in (0, 1]"),
    ({"pruning": {"estimator": "weight", "rho": 0}}, "pruning.rho: rho must be > 0, got 0"),
    ({"pruning": {"budget": "speed"}}, "pruning.budget: unknown budget 'speed'; choose one of flops, params, channels"),
    ({"pruning": {"pruner": "nope"}}, "pruning.pruner: must be one of"),
    ({"eval": {"attacks": ["pgd0"]}}, "eval.attacks: unknown attack 'pgd0'"),
    ({"model": {"name": "resnet50"}}, "model.name: must be one of"),
    ({"model": {"name": "vgg16_bn", "kwargs": {"widht": 0.5}}}, "model.kwargs: build_model('vgg16_bn'): unexpected "
     "argument 'widht'; it takes num_classes, in_channels, mean, std, width"),
    ({"model": {"name": "vgg16_bn", "kwargs": {"width": -1}}}, "model.kwargs: width must be a number > 0"),
    ({"eval": {"split": "validation"}}, "eval.split: 'validation' needs data.validation"),
    ({"eval": {"split": "val"}}, "eval.split: must be 'test' or 'validation', got 'val'"),
    ({"data": {"validation": 0}}, "data.validation: must be >= 1 or null (none held out), got 0"),
    ({"pruning": {"adapt_bn": -5}}, "pruning.adapt_bn: must be >= 0 (images; 0: off), got -5"),
    ({"pruning": {"layers": 0.5}}, "pruning.layers: must be in [0, target=0.5): the part of the target whole"),
    ({"pruning": {"layers": 0.2, "budget": "channels"}}, "pruning.layers: needs budget flops or params"),
    ({"export": {"formats": ["tflite"]}}, "export.formats: must name formats among onnx, openvino, pt2, got 'tflite'"),
    ({"pruning": {"round_to": 0}}, "pruning.round_to: round_to must be an integer >= 1 (pruned units keep a multiple "
                                   "of it) or 'auto', got 0"),
    ({"pruning": {"round_to": "eight"}}, "pruning.round_to: round_to must be an integer >= 1 (pruned units keep a "
                                         "multiple of it) or 'auto', got 'eight'"),
    ({"eval": {"after_pruning": ["pgd0"]}}, "eval.after_pruning: unknown attack 'pgd0'"),
    ({"pretrain": {"method": "rslad"}}, "pretrain.teacher: pre-training with rslad needs a teacher model"),
    ({"finetune": {"teacher": "dense.pt"}}, "finetune.teacher: only rslad and ard distil from a teacher, not method "
                                            "'pgd'"),
    ({"finetune": {"method": "ard", "teacher": "/no/such/model.pt"}}, "finetune.teacher: file not found"),
    ({"finetune": {"ema": 1.0}}, "finetune.ema: must be a decay in (0, 1), e.g. 0.999, or null, got 1.0"),
    ({"finetune": {"collapse_retries": -1}}, "finetune.collapse_retries: must be >= 0 (0: no collapse guard), got -1"),
    ({"finetune": {"schedule": "step"}}, "finetune.schedule: must be one of cosine, onecycle, got 'step'"),
    ({"pruning": {"rule": "budget", "estimator": "feature"}},
     "pruning.rule: rule='budget' trades per-unit loss curves against cost: it needs estimator='curve'"),
    ({"pruning": {"rule": "knapsack", "estimator": "curve"}}, "unknown allocation rule 'knapsack'"),
    ({"pruning": {"rule": "joint", "rounds": 0}}, "pruning.rounds: rounds must be a positive integer, got 0"),
    ({"pruning": {"rule": "joint", "estimator": "curve"}}, "pruning.rule: rule='joint' measures the jointly pruned"),
])
def test_config_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        load_config(data)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_options_hash_as_the_flat_keys_they_replace():
    """``options`` is the same run as the old flat keys it replaces, an estimator named as the rule's own is the
    same run as none, and a different option is a different run."""
    shipped = load_config()
    named = load_config(None, {"pruning.options.estimator": "feature"})
    assert named.fingerprint_dict() == shipped.fingerprint_dict()
    assert load_config(None, {"pruning.options.rule": "budget"}).fingerprint_dict() != shipped.fingerprint_dict()
    with pytest.warns(FutureWarning, match=r"moved pruning.tau -> pruning.options.tau"):
        flat = load_config({"pruning": {"tau": 1}})
    assert flat.pruning.options == {"tau": 1} and flat.pruning.origins == {"tau": "pruning.tau"}
    assert flat.fingerprint_dict() == load_config({"pruning": {"options": {"tau": 1.0}}}).fingerprint_dict() != \
        load_config({"pruning": {"options": {"tau": 2.0}}}).fingerprint_dict()


def test_flat_keys_say_in_one_warning_what_moved_and_what_had_no_effect():
    with pytest.warns(FutureWarning) as caught:
        config = load_config({"pruning": {"pruner": "harp", "epochs": 2, "tau": 1.0}})
    assert len(caught) == 1
    assert str(caught[0].message) == ("flat pruning keys are deprecated, use pruning.options: moved pruning.epochs -> "
                                      "pruning.options.epochs; pruning.tau had no effect with pruner 'harp'")
    assert config.pruning.options == {"epochs": 2}


def test_cli_config_error_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("pruning:\n  estimater: weight\n")
    result = run_python(["-m", "nni_mrs_plugin", "run", str(path)])
    assert result.returncode == 2
    assert result.stderr.strip() == ("nni-mrs: config error: unknown key 'pruning.estimater'; "
                                     "did you mean 'pruning.options.estimator'?")
    result = run_python(["-m", "nni_mrs_plugin", "run", "--set", "pruning.target=2"])
    assert result.returncode == 2 and "pruning.target: must be in (0, 1), got 2" in result.stderr


@pytest.mark.slow
def test_pipeline_end_to_end_and_resume(tmp_path):
    config = tiny(tmp_path)
    seen = []
    state = Pipeline(config, on_epoch=lambda stage, row: seen.append((stage, row["epoch"]))).run()
    run = tmp_path / "run"
    assert list(state["stages"]) == list(STAGES)
    assert seen == [("pretrain", 1), ("finetune", 1)]
    for name in ("dense.pt", "pruned.pt", "masks.pt", "allocation.json", "evaluation.json", "report.json",
                 "report.md", "mrs_units.png", "stages.json", "config.yaml"):
        assert (run / name).exists(), name
    assert not list(run.rglob(".*.tmp")), "temporary files left behind"
    dense, pruned = load_pruned(run / "dense.pt"), load_pruned(run / "pruned.pt")
    x = torch.rand(1, 1, 28, 28)
    assert abs(1 - count_flops(pruned, x) / count_flops(dense, x) - 0.5) <= 0.01
    report = (run / "report.md").read_text()
    assert "| flops |" in report and "pgd20 accuracy" in report and "features.3" in report
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert 0.0 <= evaluation["pruned"]["pgd20"]["accuracy"] <= evaluation["pruned"]["clean"]["accuracy"]

    # a rerun of the same config resumes: nothing is recomputed
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("*.pt")}
    again = Pipeline(config).run()
    assert again["stages"] == state["stages"]
    assert {p: p.stat().st_mtime_ns for p in run.glob("*.pt")} == stamps
    # progress bars are not part of what a run computes: switching them on still resumes
    assert Pipeline(tiny(tmp_path, progress=True)).run()["stages"] == state["stages"]
    # a different config in the same folder is refused, not mixed in
    with pytest.raises(ConfigError, match=r"holds a run of a different config \(pruning.target: 0.5 -> 0.6\)"):
        Pipeline(tiny(tmp_path, pruning={"target": 0.6}))
    # export.formats added to the finished run: the export stage and the report run again, nothing else
    exported = Pipeline(tiny(tmp_path, export={"formats": ["onnx"], "samples": 16})).run()["stages"]
    assert {k: v for k, v in exported.items() if k not in ("export", "report")} == \
        {k: v for k, v in state["stages"].items() if k not in ("export", "report")}
    assert {p: p.stat().st_mtime_ns for p in run.glob("*.pt")} == stamps
    for name in ("dense", "pruned"):
        record = json.loads((run / f"{name}.onnx.export.json").read_text())
        assert record["verify"]["labels"] == "given" and record["verify"]["relative_difference_batch_16"] <= 1e-3
    assert "| cpu_latency_ms (onnx) |" in (run / "report.md").read_text()


def test_the_report_of_the_uniform_default_shows_no_mrs_it_did_not_measure(tmp_path):
    """tau 0 (the default) gives uniform ratios without measuring MRS (the allocation says so): the report must
    not print the placeholder scores as if they were sensitivities, while a measured allocation prints them."""
    from nni_mrs_plugin.job.report import write_report

    assert "tau" not in load_config().pruning.options  # MRSPruner's default tau=0, decided on validation
    stages = {"pretrain": {"dense": {"params": 10, "flops": 100, "cpu_latency_ms": 1.0}},
              "speedup": {"pruned": {"params": 5, "flops": 50, "cpu_latency_ms": 0.5}}}
    for measured in (False, True):
        allocation = {"units": [{"unit": "features.0", "layers": ["features.0"], "mrs": 0.123, "ratio": 0.5,
                                 "channels_before": 32, "channels_after": 16}], "measured": measured,
                      "skipped": {}, "achieved": 0.5, "budget": "flops", "target": 0.5}
        run = tmp_path / f"measured-{measured}"
        run.mkdir()
        (run / "allocation.json").write_text(json.dumps(allocation))
        write_report(run, tiny(tmp_path, pruning={"options": {"tau": 1.0 if measured else 0.0}}), stages)
        report = (run / "report.md").read_text()
        assert ("0.123" in report) is measured
        assert ("uniform ratios (MRS not measured)" in report) is not measured
        assert (run / "mrs_units.png").stat().st_size > 1000


def test_old_run_folders_resume(tmp_path):
    """A run folder made by the first release hashed the flat pruning keys (estimator spelled out, no rule,
    recalibrate, rounds, epochs or options) and no ``data.normalization``: the same config now has that
    fingerprint, whether written with ``options`` or with the flat keys; choosing another rule is another run.
    Those folders pruned exact channel counts: ``round_to: 1`` (the default since is ``auto``, another run)."""
    import hashlib

    config = tiny(tmp_path, pretrain={"epochs": 0}, pruning={"round_to": 1})
    old = config.to_dict()
    for section, key in (("data", "normalization"), ("data", "validation"), ("model", "kwargs"), ("eval", "split"),
                         ("eval", "after_pruning"), ("pretrain", "teacher"), ("finetune", "teacher"),
                         ("pretrain", "ema"), ("finetune", "ema"), ("pretrain", "schedule"),
                         ("finetune", "schedule"), ("pretrain", "ibp"), ("finetune", "ibp"),
                         ("pretrain", "collapse_retries"), ("finetune", "collapse_retries")):
        old[section].pop(key)  # keys added since, at their defaults
    old.pop("export")  # a section added since (never part of a fingerprint)
    old["pruning"] = {"pruner": "mrs", "target": 0.5, "budget": "flops", "estimator": "feature", "criterion": "taylor",
                      "tau": 0.0, "rho": 0.1, "steps": 5, "samples": 64, "eps": None, "r_max": 0.9,
                      "op_types": ["Conv2d", "Linear"], "exclude": []}
    what = {k: v for k, v in old.items() if k not in ("progress", "output")}
    expected = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    assert Pipeline(config).fingerprint == expected
    with pytest.warns(FutureWarning):
        flat = tiny(tmp_path, pretrain={"epochs": 0}, pruning={"options": {}, "samples": 64, "steps": 2, "round_to": 1})
    assert Pipeline(flat).fingerprint != expected  # steps 2 was hashed too, though it had no effect
    with pytest.warns(FutureWarning):
        flat = tiny(tmp_path, pretrain={"epochs": 0}, pruning={"options": {}, "samples": 64, "round_to": 1})
    assert Pipeline(flat).fingerprint == expected
    changed = tiny(tmp_path / "other", pretrain={"epochs": 0}, pruning={"options": {"rule": "budget"}, "round_to": 1})
    assert Pipeline(changed).fingerprint != Pipeline(config).fingerprint
    assert Pipeline(tiny(tmp_path / "auto", pretrain={"epochs": 0})).fingerprint != expected


def test_budget_rule_runs_from_the_config(tmp_path):
    config = tiny(tmp_path, pretrain={"epochs": 0}, pruning={"target": 0.6, "options": {
        "rule": "budget", "estimator": "curve", "recalibrate": True, "n_samples": 64}})
    state = Pipeline(config).run(until="speedup")["stages"]
    removed = 1 - state["speedup"]["pruned"]["flops"] / state["pretrain"]["dense"]["flops"]
    assert abs(removed - 0.6) <= 0.01
    allocation = json.loads((tmp_path / "run" / "allocation.json").read_text())
    assert allocation["rule"] == "budget" and len(allocation["ratios"]) == 9 and allocation["curves"]


def test_joint_rule_runs_from_the_config(tmp_path):
    config = tiny(tmp_path, pretrain={"epochs": 0}, pruning={"target": 0.6, "options": {
        "rule": "joint", "rounds": 3, "recalibrate": True, "n_samples": 64}})
    state = Pipeline(config).run(until="speedup")["stages"]
    removed = 1 - state["speedup"]["pruned"]["flops"] / state["pretrain"]["dense"]["flops"]
    assert abs(removed - 0.6) <= 0.01
    assert json.loads((tmp_path / "run" / "allocation.json").read_text())["rule"] == "joint"


def test_pipeline_stops_and_resumes_between_stages(tmp_path):
    config = tiny(tmp_path, pretrain={"epochs": 0})
    first = Pipeline(config).run(until="prune")
    assert list(first["stages"]) == ["pretrain", "prune"]
    second = Pipeline(config).run(until="speedup")
    assert list(second["stages"]) == ["pretrain", "prune", "speedup"]
    assert second["stages"]["prune"] == first["stages"]["prune"]
    removed = 1 - second["stages"]["speedup"]["pruned"]["flops"] / second["stages"]["pretrain"]["dense"]["flops"]
    assert abs(removed - 0.5) <= 0.01


@pytest.mark.parametrize("pruner", ["l1", "fpgm"])
def test_baseline_pruners_meet_the_same_budget(tmp_path, pruner):
    config = tiny(tmp_path, pretrain={"epochs": 0}, pruning={"pruner": pruner, "target": 0.75})
    state = Pipeline(config).run(until="speedup")["stages"]
    removed = 1 - state["speedup"]["pruned"]["flops"] / state["pretrain"]["dense"]["flops"]
    assert abs(removed - 0.75) <= 0.01
    allocation = json.loads((tmp_path / "run" / "allocation.json").read_text())
    ratios = {row["ratio"] for row in allocation["units"]}
    assert max(ratios) - min(ratios) < 0.1, "baselines use uniform ratios"


def test_normalising_loaders_give_the_run_of_pixel_loaders(tmp_path):
    """``data.normalization``: the loaders normalise, the model does not, attacks run on pixels (issue 13 §1).
    Against the default run (pixel loaders, normalisation as the model's first layer): training is the same
    computation (weights agree up to rounding, which PGD's sign steps amplify a little over an epoch), MRS
    allocates the same, and the job's evaluation of one model gives identical numbers either way."""
    from nni_mrs_plugin.job.pipeline import robust_evaluation
    from nni_mrs_plugin.models.cnn import _DEFAULT_STATS

    mean, std = _DEFAULT_STATS[1]
    configs, runs = {}, {}
    for name, data in (("pixels", {}), ("normalised", {"normalization": [list(mean), list(std)]})):
        configs[name] = tiny(tmp_path / name, data=data, eval={"attacks": ["clean", "fgsm", "pgd20"]})
        runs[name] = Pipeline(configs[name]).run()["stages"]
    x, _ = next(iter(Pipeline(configs["normalised"]).loaders[0]))
    assert float(x.min()) < -0.5  # really normalised inputs reach the model
    dense = {name: load_pruned(tmp_path / name / "run" / "dense.pt") for name in runs}
    assert dense["normalised"].normalize.std.flatten().tolist() == [1.0]  # not normalised twice
    weights = [torch.cat([p.detach().flatten() for p in dense[name].parameters()]) for name in runs]
    assert (weights[0] - weights[1]).norm() <= 0.02 * weights[0].norm()
    ratios = [json.loads((tmp_path / name / "run" / "allocation.json").read_text())["units"] for name in runs]
    assert [u["ratio"] for u in ratios[0]] == pytest.approx([u["ratio"] for u in ratios[1]], abs=0.13)
    pruned = load_pruned(tmp_path / "pixels" / "run" / "pruned.pt")
    pruned.normalize.mean.zero_()
    pruned.normalize.std.fill_(1.0)  # the same weights, for the normalising loader
    again = robust_evaluation(configs["normalised"], pruned)
    for attack in ("clean", "fgsm", "pgd20"):
        assert again[attack]["accuracy"] == runs["pixels"]["evaluate"]["pruned"][attack]["accuracy"], attack
    assert again["pgd20"]["accuracy"] < again["clean"]["accuracy"]


@pytest.mark.parametrize("value", [[[0.5]], [[0.5, 0.5], [0.2, 0.2]], [[0.5], [0.0]], "x"])
def test_bad_normalization_is_a_config_error(tmp_path, value):
    with pytest.raises(ConfigError, match="data.normalization"):
        tiny(tmp_path, data={"normalization": value})


def test_harp_runs_from_the_config_and_a_killed_prune_stage_resumes(tmp_path, monkeypatch):
    from nni_mrs_plugin.train.trainer import AdversarialTrainer

    config = tiny(tmp_path, pretrain={"epochs": 0}, pruning={"pruner": "harp", "target": 0.6, "options": {"epochs": 2}})
    original, calls = AdversarialTrainer.loss, {"n": 0}

    def dying(self, *args, **kwargs):  # 256 images in batches of 64: 8 steps, stages end at 2, 4, 6, 8
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AdversarialTrainer, "loss", dying)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(config).run(until="prune")
    saved = torch.load(tmp_path / "run" / "prune-harp.pt", weights_only=False)
    assert saved["state"]["step"] == 4
    monkeypatch.setattr(AdversarialTrainer, "loss", original)
    state = Pipeline(config).run(until="speedup")["stages"]
    removed = 1 - state["speedup"]["pruned"]["flops"] / state["pretrain"]["dense"]["flops"]
    assert abs(removed - 0.6) <= 0.01
    allocation = json.loads((tmp_path / "run" / "allocation.json").read_text())
    assert allocation["rule"] == "harp" and state["prune"]["pruner"] == "harp"


def test_validation_split_adaptive_bn_and_the_evaluation_before_fine_tuning(tmp_path):
    """Choose on held-out training images, re-estimate BatchNorm after the removal, see what fine-tuning adds."""
    config = tiny(tmp_path, model={"name": "vgg16_bn", "kwargs": {"width": 0.0625}},
                  data={"validation": 96}, eval={"split": "validation", "samples": None, "after_pruning": ["clean", "pgd20"]},
                  pruning={"pruner": "l1", "adapt_bn": 64})
    pipeline = Pipeline(config)
    stages = pipeline.run()["stages"]
    evaluation = {k: v for k, v in stages["evaluate"].items() if k != "seconds"}
    assert set(evaluation) == {"dense", "pruned", "pruned_init"}
    assert all(entry["clean"]["samples"] == 96 for entry in evaluation.values())  # the held-out images, all of them
    assert set(evaluation["pruned_init"]) >= {"clean", "pgd20"}
    assert load_pruned(tmp_path / "run" / "dense.pt").features[0].out_channels == 4  # model.kwargs: width 1/16
    held_out = set(pipeline.loaders[1].dataset.indices)
    assert not held_out & {pipeline.loaders[0].dataset.dataset.indices[i] for i in pipeline.loaders[0].dataset.indices}
    # adaptive BN: the pruned model's statistics are those of its own activations, not the dense model's
    from nni_mrs_plugin.host.speedup import speedup_model

    plain = load_pruned(tmp_path / "run" / "dense.pt")
    speedup_model(plain, torch.load(tmp_path / "run" / "masks.pt", weights_only=True), pipeline.dummy)
    adapted = load_pruned(tmp_path / "run" / "pruned_init.pt")
    norm = next(name for name, m in adapted.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(adapted.get_submodule(norm).running_var, plain.get_submodule(norm).running_var)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "pgd20 accuracy, before fine-tuning" in report


def test_rslad_fine_tuning_distils_from_the_runs_dense_model_or_the_named_teacher(tmp_path):
    from nni_mrs_plugin.checkpoint import save_pruned
    from nni_mrs_plugin.models import build_model

    config = tiny(tmp_path, pretrain={"epochs": 0}, finetune={"method": "rslad"})
    pipeline = Pipeline(config)
    stages = pipeline.run()["stages"]
    assert stages["finetune"]["fit"]["history"][-1]["train_loss"] > 0
    teacher = pipeline.trainer(config.finetune).teacher
    dense = load_pruned(tmp_path / "run" / "dense.pt")
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), dense.state_dict().values()))
    assert pipeline.trainer(config.pretrain).teacher is None
    torch.manual_seed(5)
    other = tmp_path / "teacher.pt"
    save_pruned(other, build_model("small_cnn", in_channels=1), "small_cnn", in_channels=1)
    named = tiny(tmp_path / "named", pretrain={"epochs": 0}, finetune={"method": "ard", "teacher": str(other)})
    teacher = Pipeline(named).trainer(named.finetune).teacher
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(),
                                                 load_pruned(other).state_dict().values()))
