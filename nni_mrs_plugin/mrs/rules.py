"""Allocation rules: what a unit's sensitivity says about how many of its channels to prune, behind one call.

``rule.allocate(problem, evidence) -> (channels to prune per block for each unit, the score of each unit or None)``.
``problem`` is the ``BudgetProblem`` (units, exact cost model, target); ``evidence`` is what the rule may read about
the model's sensitivity (``scores()``, ``curves()``, ``samples()``), measured on first use, so a rule that needs
nothing measures nothing. A rule is an object with its own options; ``RULES`` names the three that ship:

- ``PowerRule(tau)``: r_u proportional to (mean m / m_u) ** tau from one sensitivity per unit (``allocation``);
- ``BudgetRule()``: per-unit loss curves traded against what each unit's channels cost (``costaware``);
- ``JointRule(rounds)``: the same trade, each step measured on the model pruned everywhere so far (``joint``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Protocol, Sequence, Tuple, Type, Union

import torch

from ..budget.importance import weight_gradients
from ..budget.problem import BudgetProblem
from . import allocation, costaware, joint
from .sensitivity import Estimator, curve_scores

__all__ = ["Evidence", "Rule", "PowerRule", "BudgetRule", "JointRule", "RULES", "build_rule"]

Counts = Dict[str, int]
Scores = Dict[str, float]


class Evidence(Protocol):
    """What a rule reads; ``MRSSparsityAllocator`` measures each part on first use and keeps it."""

    estimator: Estimator
    given: Optional[Scores]  # sensitivities the caller passed in, if any
    batch_size: int
    progress: bool

    def scores(self) -> Scores: ...  # one sensitivity per unit (given, from given curves, or measured)

    def curves(self) -> Tuple[Dict[str, Sequence[float]], Sequence[float]]: ...  # (unit -> Delta L at ratios, ratios)

    def samples(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...  # (X, X', Y) of the calibration set

    def seeded(self) -> Any: ...  # a context in which the allocator's seed drives torch's generator


class Rule:
    """Sensitivity -> per-unit prune counts at the problem's target. A subclass sets ``name`` and ``estimator``
    (the estimator it reads when none is named), implements ``allocate``, and refuses in ``check`` an estimator
    it cannot read."""

    name = ""
    estimator = "feature"

    def check(self, estimator: Estimator) -> None:
        """A one-line ValueError if this rule cannot read ``estimator``'s measurements."""

    def allocate(self, problem: BudgetProblem, evidence: Evidence) -> Tuple[Counts, Optional[Scores]]:
        raise NotImplementedError(f"{type(self).__name__} must implement allocate(problem, evidence)")

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({options})"


class PowerRule(Rule):
    """r_u = c * (mean(m) / m_u) ** tau, clipped to the bounds, c set so the sped-up model meets the target; ``tau=0``
    gives every unit the same ratio and measures nothing. The ``feature`` estimator by default."""

    name = "power"

    def __init__(self, tau: float = 0.0):
        allocation.weights_from_scores({}, tau)  # validates tau
        self.tau = float(tau)

    def allocate(self, problem: BudgetProblem, evidence: Evidence) -> Tuple[Counts, Optional[Scores]]:
        if self.tau == 0 and evidence.given is None:  # uniform ratios: sensitivity cannot change them
            return allocation.allocate(problem, {unit.name: 1.0 for unit in problem.units}, 0.0), None
        scores = evidence.scores()
        return allocation.allocate(problem, scores, self.tau), scores


class BudgetRule(Rule):
    """The multiple-choice-knapsack greedy on per-unit loss curves and the exact cost model (``costaware``)."""

    name = "budget"
    estimator = "curve"

    def check(self, estimator: Estimator) -> None:
        if not hasattr(estimator, "curves"):
            raise ValueError(f"rule='budget' trades per-unit loss curves against cost: it needs estimator='curve' "
                             f"(or 'probe'), got {estimator.name!r}")

    def allocate(self, problem: BudgetProblem, evidence: Evidence) -> Tuple[Counts, Optional[Scores]]:
        curves, ratios = evidence.curves()
        return costaware.allocate_by_curves(problem, curves, ratios), curve_scores(curves)


class JointRule(Rule):
    """NetAdapt-style steps, each measured on the jointly pruned model with the probe's removal (``joint``); the
    scores are each unit's last measured loss rise per unit of budget saved."""

    name = "joint"
    estimator = "probe"

    def __init__(self, rounds: int = 10):
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
            raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
        self.rounds = rounds

    def check(self, estimator: Estimator) -> None:
        if estimator.name != "probe":
            raise ValueError(f"rule='joint' measures the jointly pruned model with the probe's removal: it needs "
                             f"estimator='probe' (or None), got {estimator.name!r}")

    def allocate(self, problem: BudgetProblem, evidence: Evidence) -> Tuple[Counts, Optional[Scores]]:
        probe, units = evidence.estimator, problem.units
        x, x_adv, y = evidence.samples()
        probe.gradients = {}
        if probe.criterion == "taylor":  # ranked on adversarial gradients of the unpruned model, as the pruner does
            probe.gradients = weight_gradients(problem.model, [layer for unit in units for layer in unit.layers],
                                               x_adv, y, evidence.batch_size)
        loss = joint.JointLoss(problem.model, units, x, x_adv, y, probe.criterion, problem.graph_module,
                               probe.gradients, probe.recalibrate, evidence.batch_size)
        with evidence.seeded():
            return joint.allocate_jointly(problem, loss, self.rounds, evidence.progress)


RULES: Dict[str, Type[Rule]] = {cls.name: cls for cls in (PowerRule, BudgetRule, JointRule)}


def build_rule(rule: Union[str, Rule], **options: Any) -> Rule:
    """A rule from its name in ``RULES`` (``options`` go to its constructor) or a ``Rule`` instance as it is."""
    if isinstance(rule, Rule):
        if options:
            raise ValueError(f"options {sorted(options)} belong to the rule: set them on {rule!r} itself")
        return rule
    if rule not in RULES:
        raise ValueError(f"unknown allocation rule {rule!r}; choose one of {', '.join(RULES)}")
    return RULES[rule](**options)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's generator seeded with ``seed`` inside, restored after (CUDA's too when ``device`` is a GPU)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
