"""``compare``: pruners x targets from one dense model, identical fine-tuning, one table and one plot."""
import json

import pytest
import torch
from conftest import run_python
from test_pipeline import tiny

from nni_mrs_plugin.checkpoint import load_pruned
from nni_mrs_plugin.job.compare import compare
from nni_mrs_plugin.job.config import ConfigError


@pytest.mark.slow
def test_compare_runs_every_pruner_from_one_dense_model(tmp_path):
    config = tiny(tmp_path, pruning={"options": {"tau": 1.0, "n_samples": 64}})  # MRS allocation, not uniform
    seen = []
    out = tmp_path / "cmp"
    result = compare(config, ["mrs", "l1"], [0.5], str(out), on_run=lambda i, n, label: seen.append((i, n, label)))
    assert seen == [(0, 2, "dense, seed 0"), (1, 2, "mrs-0.5, seed 0"), (2, 2, "l1-0.5, seed 0")]
    dense_dir = out / "seed0" / "dense"
    dense_state = load_pruned(dense_dir / "dense.pt").state_dict()
    dense_eval = json.loads((dense_dir / "evaluation.json").read_text())
    for pruner in ("mrs", "l1"):
        run = out / "seed0" / f"{pruner}-0.5"
        start = load_pruned(run / "dense.pt").state_dict()
        assert all(torch.equal(start[k], dense_state[k]) for k in dense_state), "runs must share the dense model"
        assert json.loads((run / "evaluation.json").read_text())["dense"] == dense_eval
        assert (run / "report.md").exists()
    rows = {row["variant"]: row for row in result["rows"]}
    assert set(rows) == {"dense", "mrs", "l1"}
    for pruner in ("mrs", "l1"):
        assert abs(rows[pruner]["flops_removed"]["mean"] - 0.5) <= 0.01
        assert rows[pruner]["flops"]["mean"] < rows["dense"]["flops"]["mean"]
        assert set(rows[pruner]["accuracy"]) == {"clean", "pgd20"}
    # the two allocations differ: MRS is not uniform
    allocations = [json.loads((out / "seed0" / f"{p}-0.5" / "allocation.json").read_text()) for p in ("mrs", "l1")]
    assert [u["ratio"] for u in allocations[0]["units"]] != [u["ratio"] for u in allocations[1]["units"]]
    table = (out / "compare.md").read_text()
    assert "| mrs | 0.5 |" in table and "| l1 | 0.5 |" in table and "| dense | – |" in table
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "compare.json").read_text())["rows"] == json.loads(json.dumps(result["rows"]))

    # a rerun resumes: nothing is trained again
    stamp = (out / "seed0" / "mrs-0.5" / "pruned.pt").stat().st_mtime_ns
    again = compare(config, ["mrs", "l1"], [0.5], str(out))
    assert (out / "seed0" / "mrs-0.5" / "pruned.pt").stat().st_mtime_ns == stamp
    assert again["rows"] == result["rows"]


@pytest.mark.slow
def test_variants_share_a_dense_model_only_when_pretraining_agrees(tmp_path):
    config = tiny(tmp_path)
    out = tmp_path / "cmp"
    variants = {"l1-natural": {"pruning.pruner": "l1", "finetune.method": "natural"},
                "mrs": {"pruning.pruner": "mrs"},
                "l1-natural-pretrain": {"pruning.pruner": "l1", "pretrain.method": "natural",
                                        "finetune.method": "natural"}}
    result = compare(config, variants, [0.5], str(out))
    folders = sorted(p.name for p in (out / "seed0").iterdir())
    other = [name for name in folders if name.startswith("dense-")]
    assert "dense" in folders and len(other) == 1
    assert {row["variant"] for row in result["rows"]} == {"dense", "dense (l1-natural-pretrain)", "l1-natural", "mrs",
                                                          "l1-natural-pretrain"}
    runs = {run["variant"]: run for run in result["runs"]}
    assert runs["l1-natural"]["dense"] == runs["mrs"]["dense"] != runs["l1-natural-pretrain"]["dense"]
    assert load_config_of(out / "seed0" / "l1-natural-0.5").finetune.method == "natural"
    assert load_config_of(out / "seed0" / "mrs-0.5").finetune.method == "pgd"
    # another order of the same variants resumes every folder instead of refusing them
    again = compare(config, dict(reversed(list(variants.items()))), [0.5], str(out))
    assert sorted(map(str, again["rows"])) == sorted(map(str, result["rows"]))
    with pytest.raises(ConfigError, match="variant 'bad': pruning.pruner: must be one of"):
        compare(config, {"mrs": {}, "bad": {"pruning.pruner": "nope"}}, [0.5], str(tmp_path / "none"))
    assert not (tmp_path / "none").exists(), "configs are checked before anything runs"


def load_config_of(folder):
    import yaml

    from nni_mrs_plugin.job.config import load_config

    return load_config(yaml.safe_load((folder / "config.yaml").read_text()))


@pytest.mark.parametrize("pruners, targets, message", [
    (["mrs", "l3"], [0.5], "pruners: unknown pruner 'l3'; available:"),
    (["mrs"], [0.5, 1.0], "targets: each target must be in (0, 1), got 1.0"),
    ([], [0.5], "compare needs at least one pruner"),
])
def test_compare_rejects_a_bad_grid_before_training(tmp_path, pruners, targets, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compare(tiny(tmp_path), pruners, targets, str(tmp_path / "cmp"))
    assert not (tmp_path / "cmp").exists()


def test_cli_compare_bad_pruner_is_one_line(tmp_path):
    result = run_python(["-m", "nni_mrs_plugin", "compare", "--pruners", "mrs", "nope", "--output", str(tmp_path)])
    assert result.returncode == 2
    assert result.stderr.strip().startswith("nni-mrs: config error: pruners: unknown pruner 'nope'; available: ")


@pytest.mark.slow
def test_compare_runs_harp_by_name(tmp_path):
    """``nni-mrs compare --pruners harp``: the learned allocation is one more registry name for compare."""
    config = tiny(tmp_path, pretrain={"epochs": 0})
    out = tmp_path / "cmp"
    result = compare(config, ["harp"], [0.6], str(out))
    rows = {row["variant"]: row for row in result["rows"]}
    assert set(rows) == {"dense", "harp"} and abs(rows["harp"]["flops_removed"]["mean"] - 0.6) <= 0.01
    assert json.loads((out / "seed0" / "harp-0.6" / "allocation.json").read_text())["rule"] == "harp"
