"""The budget core: a new budget pruner is one class implementing ``allocate``; the base meets the target from
whatever rough ratios it returns, and the channels really go with NNI's ModelSpeedup."""
import json

import pytest
import torch
from conftest import dummy_input, make_model
from test_pipeline import tiny

from nni_mrs_plugin import BudgetProblem, BudgetPruner, get_pruner, register_pruner, unregister_pruner
from nni_mrs_plugin.evaluate import count_flops
from nni_mrs_plugin.job.config import ConfigError
from nni_mrs_plugin.job.pipeline import Pipeline
from nni_mrs_plugin.host.speedup import speedup_model

SELECT = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.6}]


class DeepFirstPruner(BudgetPruner):
    """Later units lose more: ratio grows with depth (rough on purpose; the base scales it to the target)."""

    def allocate(self, problem):
        return {unit.name: (index + 1) / len(problem.units) for index, unit in enumerate(problem.units)}


class SteepPruner(BudgetPruner):
    """Later units lose more, the more so the larger ``power``: an option of its own, set from a job's config."""

    def __init__(self, model, config_list, evaluator=None, *, power: float = 1.0, **kwargs):
        if not power > 0:
            raise ValueError(f"power must be > 0, got {power!r}")
        super().__init__(model, config_list, evaluator, **kwargs)
        self.power = power

    def allocate(self, problem):
        return {unit.name: ((index + 1) / len(problem.units)) ** self.power for index, unit in enumerate(problem.units)}


@pytest.fixture
def deep_first():
    register_pruner("deep-first", DeepFirstPruner)
    yield
    unregister_pruner("deep-first")


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_a_new_budget_pruner_is_one_class_and_meets_the_budget_after_speedup(name, deep_first):
    model, x = make_model(name), dummy_input(name, 1)
    dense = count_flops(model, x)
    pruner = get_pruner("deep-first")(model, SELECT, dummy_input=x)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    speedup_model(model, masks, x)
    assert abs(1 - count_flops(model, x) / dense - 0.6) <= 0.01, pruner.allocation.table()
    ratios = [row.ratio for row in pruner.allocation.report]
    assert ratios[-1] > ratios[0] + 0.2, "the allocation the subclass asked for was not kept"
    assert pruner.allocation.rule == "DeepFirstPruner"


def test_the_job_builds_a_registered_budget_pruner_by_name(tmp_path, deep_first):
    config = tiny(tmp_path, pretrain={"epochs": 0}, pruning={"pruner": "deep-first", "target": 0.6, "round_to": 8})
    state = Pipeline(config).run(until="speedup")["stages"]
    assert abs(state["prune"]["predicted_removed"] - 0.6) <= 0.01
    dense, pruned = state["pretrain"]["dense"]["flops"], state["speedup"]["pruned"]["flops"]
    assert abs(1 - pruned / dense - 0.6) <= 0.01
    allocation = json.loads((tmp_path / "run" / "allocation.json").read_text())
    assert all(row["score"] == row["mrs"] for row in allocation["units"])  # the neutral name, the one old readers know
    assert allocation["round_to"] == 8  # pruning.round_to reached the pruner
    assert all(row["channels_after"] % 8 == 0 for row in allocation["units"])


def test_a_budget_pruner_s_own_option_comes_from_the_config(tmp_path):
    register_pruner("steep", SteepPruner)
    try:
        for options, message in (({"power": 0}, "pruning.options.power: power must be > 0, got 0"),
                                 ({"powr": 2}, "pruning.options.powr: ")):
            with pytest.raises(ConfigError) as info:
                tiny(tmp_path, pruning={"pruner": "steep", "options": options})
            assert str(info.value).startswith(message) and "\n" not in str(info.value)
        ratios = {}
        for power in (1, 4):
            config = tiny(tmp_path / str(power), pretrain={"epochs": 0},
                          pruning={"pruner": "steep", "target": 0.6, "options": {"power": power}})
            state = Pipeline(config).run(until="speedup")["stages"]
            assert abs(1 - state["speedup"]["pruned"]["flops"] / state["pretrain"]["dense"]["flops"] - 0.6) <= 0.01
            units = json.loads((tmp_path / str(power) / "run" / "allocation.json").read_text())["units"]
            ratios[power] = [row["ratio"] for row in units]
        assert ratios[4] != ratios[1]  # the option reached the pruner
    finally:
        unregister_pruner("steep")


def _problem(target=0.5):
    model, x = make_model("small_cnn"), dummy_input("small_cnn", 1)
    return BudgetProblem.build(model, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": target}], x)


def test_meet_keeps_ratios_that_already_meet_the_target_and_scales_the_rest():
    problem = _problem()
    uniform = problem.scale({unit.name: 1.0 for unit in problem.units})
    exact = {unit.name: count / unit.per_block for unit, count in zip(problem.units, uniform.values())}
    assert problem.meet(exact) == uniform  # already within tolerance: taken as they are
    for rough in ({u.name: 0.01 for u in problem.units}, {u.name: 0.0 for u in problem.units}):
        counts = problem.meet(rough)
        assert abs(problem.removed_counts(counts) - 0.5) <= 0.01
        assert counts == uniform  # proportional to equal ratios, or none given: uniform


def test_bad_ratios_and_bounds_are_one_line():
    problem = _problem()
    with pytest.raises(ValueError, match=r"ratios name units \['nope'\] that this problem does not have"):
        problem.meet({"nope": 0.5})
    with pytest.raises(ValueError, match="ratio of unit .* must be a finite number, got nan"):
        problem.meet({problem.units[0].name: float("nan")})
    model, x = make_model("small_cnn"), dummy_input("small_cnn", 1)
    with pytest.raises(ValueError, match=r"need 0 <= r_min <= r_max < 1, got r_min=0.0, r_max=1.0"):
        DeepFirstPruner(model, SELECT, dummy_input=x, r_max=1.0)
    assert not any(hasattr(m, "_nni_wrapper") for m in model.modules())  # refused before NNI wrapped it


def test_a_pruner_without_allocate_or_dummy_input_says_what_is_missing():
    model = make_model("small_cnn")
    with pytest.raises(ValueError, match="DeepFirstPruner needs dummy_input"):
        DeepFirstPruner(model, SELECT).compress()
    with pytest.raises(NotImplementedError, match="must implement allocate"):
        BudgetPruner(model, SELECT, dummy_input=torch.zeros(1, 1, 28, 28)).compress()


@pytest.mark.parametrize("criterion, nni_pruner", [("l1", "l1"), ("fpgm", "fpgm")])
def test_uniform_pruner_is_nni_pruner_at_the_budget_solver_s_uniform_ratios(criterion, nni_pruner):
    """``UniformPruner`` (a budget pruner) and an NNI pruner given the solver's uniform ratios prune the same."""
    from nni_mrs_plugin import UniformPruner, baseline_masks

    model, x = make_model("resnet18"), dummy_input("resnet18", 1)
    pruner = UniformPruner(model, SELECT, dummy_input=x, criterion=criterion)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    reference, nni_masks = baseline_masks(model, SELECT, x, get_pruner(nni_pruner))
    assert [row.ratio for row in pruner.allocation.report] == [row.ratio for row in reference.report]
    assert len({round(row.ratio, 2) for row in reference.report}) <= 3  # uniform up to channel rounding
    for layer, mask in nni_masks.items():
        assert torch.equal(masks[layer]["weight"], mask["weight"]), layer
    with pytest.raises(ValueError, match="unknown criterion 'taylor'; choose one of l1, l2, fpgm"):
        UniformPruner(model, SELECT, dummy_input=x, criterion="taylor")
