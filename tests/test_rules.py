"""Allocation rules as objects (mrs/rules.py): a rule by name with its options equals the same rule passed as an
object; a new rule is one class; options go to whichever of rule and estimator takes them, and nothing else."""
import pytest
import torch
from conftest import make_model

from nni_mrs_plugin import MRSPruner
from nni_mrs_plugin.mrs.allocator import MRSSparsityAllocator
from nni_mrs_plugin.mrs.rules import RULES, BudgetRule, JointRule, PowerRule, Rule, build_rule
from nni_mrs_plugin.mrs.sensitivity import CurveMRS

SELECT = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]


def ratios(allocation):
    return {row.unit: row.ratio for row in allocation.report}


@pytest.mark.parametrize("name, options", [("power", {"tau": 1.0}), ("joint", {"rounds": 3})])
def test_rule_by_name_equals_rule_object(calibration, name, options):
    model = make_model("small_cnn")
    by_name = MRSSparsityAllocator(rule=name, n_samples=32, progress=False, **options).allocate(
        model, SELECT, calibration)
    by_object = MRSSparsityAllocator(rule=RULES[name](**options), n_samples=32, progress=False).allocate(
        model, SELECT, calibration)
    assert by_name.rule == by_object.rule == name
    assert ratios(by_name) == ratios(by_object)
    assert [row.score for row in by_name.report] == [row.score for row in by_object.report]


def test_budget_rule_object_with_estimator_object(calibration):
    """Rule and estimator both as objects, each with its own options; the curves they measured are reported."""
    model = make_model("small_cnn")
    estimator = CurveMRS(ratios=(0.25, 0.5, 0.75), progress=False)
    result = MRSSparsityAllocator(estimator, rule=BudgetRule(), n_samples=32, progress=False).allocate(
        model, SELECT, calibration)
    assert result.rule == "budget" and result.measured and result.ratios == [0.25, 0.5, 0.75]
    assert set(result.curves) == {row.unit for row in result.report}
    assert abs(result.achieved - 0.5) <= 0.01


class LastFirstRule(Rule):
    """Prune the unit with the largest score hardest: the opposite of what sensitivity suggests."""

    name = "last-first"
    estimator = "taylor"

    def allocate(self, problem, evidence):
        scores = evidence.scores()
        return problem.scale(scores), scores


def test_a_new_rule_is_one_class_and_reads_measured_scores(calibration):
    model = make_model("small_cnn")
    pruner = MRSPruner(model, SELECT, calibration=calibration, rule=LastFirstRule(), n_samples=32, progress=False,
                       criterion="l1")
    pruner.compress()
    pruner.unwrap_model()
    result = pruner.allocation
    assert result.rule == "last-first" and result.measured
    assert pruner.allocator.estimator.name == "taylor"  # the rule's own estimator when none is named
    assert abs(result.achieved - 0.5) <= 0.01
    by_score = sorted(result.report, key=lambda row: row.score)
    assert by_score[0].ratio <= by_score[-1].ratio  # more score, more pruned


def test_uniform_power_rule_measures_nothing(calibration):
    allocator = MRSSparsityAllocator(rule=PowerRule(), n_samples=32, progress=False)
    result = allocator.allocate(make_model("small_cnn"), SELECT, calibration)
    assert not result.measured and allocator.adversarial_data is None
    values = ratios(result).values()  # one ratio, up to the aligned steps (round_to="auto": 1/8 of a unit here)
    assert max(values) - min(values) <= 2 / 8 + 1e-9, ratios(result)  # that refine moves to meet the target


@pytest.mark.parametrize("make, message", [
    (lambda: MRSSparsityAllocator(rule="power", rounds=3), "unknown option 'rounds' for estimator 'feature'"),
    (lambda: MRSSparsityAllocator(rule="budget", tau=1.0), "unknown option 'tau' for estimator 'curve' and rule 'budget'"),
    (lambda: MRSSparsityAllocator(rule=JointRule(), rounds=3), "options ['rounds'] belong to the rule"),
    (lambda: MRSSparsityAllocator(CurveMRS(), rule="budget", ratios=[0.5]), "belong to the estimator"),
    (lambda: MRSSparsityAllocator(rule=JointRule(rounds=0)), "rounds must be a positive integer, got 0"),
    (lambda: MRSSparsityAllocator(rule=BudgetRule(), estimator="taylor"), "needs estimator='curve'"),
    (lambda: build_rule("greedy"), "unknown allocation rule 'greedy'"),
    (lambda: MRSSparsityAllocator(rule="joint", bogus=1), "unknown option 'bogus'"),
])
def test_misplaced_options_get_one_line(make, message):
    with pytest.raises(ValueError, match=None) as err:
        make()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_reattack_is_an_estimator_option_given_the_attack_by_call(calibration):
    """A re-attacking estimator gets the attack as a call argument; called without one it says so."""
    model = make_model("small_cnn")
    allocator = MRSSparsityAllocator(rule="budget", n_samples=16, progress=False, ratios=(0.5,), reattack=True)
    problem = allocator.problem(model, SELECT, calibration[0][:1])
    x, x_adv, y = allocator.calibration_set(model, calibration)
    with pytest.raises(ValueError, match="reattack=True needs the calibration attack"):
        allocator.estimator(model, problem.units, x_adv, y, problem.graph_module, x=x)
    assert not hasattr(allocator.estimator, "regenerate")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = allocator.sensitivities(model, problem.units, x_adv, y, problem.graph_module, x=x,
                                     attack=lambda masked: x_adv)
    assert set(scores) == {unit.name for unit in problem.units} and allocator.estimator.attack is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
