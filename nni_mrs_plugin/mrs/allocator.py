"""``MRSSparsityAllocator``: an NNI config_list in, a per-unit NNI config_list out.

selection (NNI config_list) -> units (dependency groups) -> calibration X' (torchattacks) -> MRS per unit
-> ratios meeting the global budget on the predicted sped-up model -> config_list any NNI pruner accepts.

Three rules turn sensitivity into ratios: ``power`` (r_u proportional to (mean m / m_u) ** tau, ``allocation``),
``budget`` (per-unit loss curves traded against what each unit's channels cost, ``costaware``) and ``joint``
(the same trade, each step measured on the model pruned everywhere so far, ``joint``).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..attacks import PixelSpace, build_attack, check_eps, check_pixel_range, default_eps
from ..budget.problem import BudgetProblem, check_bounds, check_budget, check_tolerance
from ..budget.report import Allocation
from ..budget.units import Unit
from . import allocation, costaware, joint
from .calibration import adversarial_examples, collect_samples
from ..budget.importance import weight_gradients
from .sensitivity import CRITERIA, ESTIMATORS, Estimator, build_estimator, curve_scores

__all__ = ["MRSSparsityAllocator", "default_estimator"]


def default_estimator(rule: str) -> str:
    """The estimator a rule reads when none is named: ``budget`` needs loss curves, ``joint`` the probe's removal
    (its criterion and adaptive BN); for ``power``, ``feature`` was chosen on the allocation benchmark's validation
    split (BENCHMARKS.md)."""
    return {"budget": "curve", "joint": "probe"}.get(rule, "feature")


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class MRSSparsityAllocator:
    """Per-unit pruning ratios from module robustness sensitivity, meeting a global budget after speedup.

    ``allocate(model, config_list, calibration)`` returns an :class:`~nni_mrs_plugin.budget.report.Allocation`
    whose ``config_list`` has one entry per unit (``op_names``, ``sparse_ratio``, ``dependency_group_id``).
    ``config_list`` here is an NNI selection whose ``sparse_ratio`` is the *global* fraction of the budget to
    remove; ``min_sparse_ratio``/``max_sparse_ratio`` bound each selected layer. The power rule's default
    ``tau=0`` is uniform ratios without measuring MRS, the validated default (BENCHMARKS.md); ``tau > 0`` or
    ``rule='budget'`` allocate by sensitivity.
    """

    def __init__(self, estimator: Any = None, budget: str = "flops", tau: float = 0.0, *, rule: str = "power",
                 criterion: str = "taylor", attack: Any = None, attack_kwargs: Optional[Dict[str, Any]] = None,
                 eps: Optional[float] = None, n_samples: int = 512, batch_size: int = 256, seed: int = 0,
                 r_min: float = 0.0, r_max: float = 0.9, tolerance: float = 0.01, progress: bool = True,
                 normalization: Optional[tuple] = None, rounds: int = 10, **estimator_options: Any):
        check_budget(budget)
        if rule not in allocation.RULES:
            raise ValueError(f"unknown allocation rule {rule!r}; choose one of {', '.join(allocation.RULES)}")
        if estimator is None:
            estimator = default_estimator(rule)
        if criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
        if not isinstance(estimator, Estimator) and estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        check_bounds(r_min, r_max)
        if eps is not None:
            check_eps(eps, positive=True)
        check_tolerance(tolerance)
        allocation.weights_from_scores({}, tau)  # validates tau
        if estimator in ("probe", "curve"):
            estimator_options.setdefault("criterion", criterion)
        if rule == "joint":
            if estimator != "probe" and getattr(estimator, "name", None) != "probe":
                raise ValueError(f"rule='joint' measures the jointly pruned model with the probe's removal: it needs "
                                 f"estimator='probe' (or None), got {getattr(estimator, 'name', estimator)!r}")
            if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
                raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
        self.estimator = build_estimator(estimator, batch_size=batch_size, progress=progress, **estimator_options)
        if rule == "budget" and not hasattr(self.estimator, "curves"):
            raise ValueError(f"rule='budget' trades per-unit loss curves against cost: it needs estimator='curve' "
                             f"(or 'probe'), got {self.estimator.name!r}")
        self.budget, self.tau, self.criterion, self.rule, self.rounds = budget, tau, criterion, rule, rounds
        self.attack, self.attack_kwargs, self.eps = attack, dict(attack_kwargs or {}), eps
        self.n_samples, self.batch_size, self.seed = n_samples, batch_size, seed
        self.r_min, self.r_max, self.tolerance, self.progress = r_min, r_max, tolerance, progress
        self.space = PixelSpace(normalization)  # the calibration loader normalises: attack on pixels
        if normalization is not None and attack is not None and not isinstance(attack, (str, type)):
            raise ValueError("with normalization, give the calibration attack as a torchattacks class or name: an "
                             "attack instance or factory is bound to a model that expects normalised inputs")
        self.adversarial_data: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # (X', Y) of the last allocate
        self.dummy_input: Any = None  # the dummy input of the last allocate

    # -- the steps, usable one by one ---------------------------------------------------------------------
    def problem(self, model: nn.Module, config_list: Sequence[Dict[str, Any]], dummy_input: Any) -> BudgetProblem:
        """The budget problem this selection poses, with this allocator's budget, bounds and tolerance."""
        return BudgetProblem.build(model, config_list, dummy_input, self.budget, self.r_min, self.r_max,
                                   self.tolerance)

    def units(self, model: nn.Module, config_list: Sequence[Dict[str, Any]], dummy_input: Any):
        """(global target, units, skipped layers, traced graph) for this selection."""
        problem = self.problem(model, config_list, dummy_input)
        return problem.target, problem.units, problem.skipped, problem.graph_module

    def calibrate(self, model: nn.Module, calibration: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        """(X', Y): the calibration samples' adversarial versions and labels, on the model's device."""
        x_adv, y = self.calibration_set(model, calibration)[1:]
        return x_adv, y

    def calibration_set(self, model: nn.Module, calibration: Any) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(X, X', Y): the calibration samples, their adversarial versions and labels, on the model's device."""
        x, y = collect_samples(calibration, self.n_samples, self.seed)
        check_pixel_range(x, "MRS calibration", self.space)
        device = _device_of(model)
        x, y = x.to(device), y.to(device)
        eps = self.eps if self.eps is not None else default_eps(x)
        attack = build_attack(self.space.model(model), self.attack, eps, **self.attack_kwargs)
        x_adv = adversarial_examples(model, x, y, attack, self.batch_size, self.seed, self.progress, self.space)
        if getattr(self.estimator, "reattack", False):  # the attack is bound to ``model``, masked in place later
            self.estimator.regenerate = lambda masked: adversarial_examples(
                masked, x, y, attack, self.batch_size, self.seed, False, self.space)
        return x, x_adv, y

    def sensitivities(self, model: nn.Module, units: Sequence[Unit], x_adv: torch.Tensor, y: torch.Tensor,
                      graph_module: Optional[torch.fx.GraphModule] = None,
                      x: Optional[torch.Tensor] = None) -> Dict[str, float]:
        with torch.random.fork_rng(devices=[x_adv.device] if x_adv.device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            return self.estimator(model, units, x_adv, y, graph_module, x=x)

    # -- all of it ----------------------------------------------------------------------------------------
    def allocate(self, model: nn.Module, config_list: Sequence[Dict[str, Any]], calibration: Any = None,
                 dummy_input: Any = None, scores: Optional[Mapping[str, float]] = None,
                 curves: Optional[Mapping[str, Sequence[float]]] = None) -> Allocation:
        """Select, group, measure MRS (unless ``scores`` are given, or ``curves`` for the budget rule, or ``tau`` is
        0 under the power rule, where every unit gets the same ratio whatever its MRS) and allocate; the model is
        left unchanged. Given ``curves`` are at the estimator's ``ratios``."""
        if dummy_input is None:
            if calibration is None:
                raise ValueError("need dummy_input (or calibration data to take one sample from)")
            dummy_input = collect_samples(calibration, 1, self.seed)[0]
        if isinstance(dummy_input, torch.Tensor):
            dummy_input = dummy_input.to(_device_of(model))
        return self.solve(self.problem(model, config_list, dummy_input), calibration, scores, curves)

    def solve(self, problem: BudgetProblem, calibration: Any = None, scores: Optional[Mapping[str, float]] = None,
              curves: Optional[Mapping[str, Sequence[float]]] = None) -> Allocation:
        """``allocate`` on a problem already built (``problem.model`` is the model measured)."""
        model, units = problem.model, problem.units
        self.dummy_input = problem.dummy_input  # what the units and costs were measured on
        self.adversarial_data = None
        if self.rule == "joint":
            return self._allocate_jointly(problem, calibration)
        if self.rule == "budget" and curves is not None:
            scores = curve_scores(curves)
        uniform = scores is None and self.rule == "power" and self.tau == 0
        if uniform:  # uniform ratios: sensitivity cannot change them, so none is measured
            scores = {unit.name: 1.0 for unit in units}
        if scores is None or (self.rule == "budget" and curves is None):
            x, x_adv, y = self.calibration_set(model, calibration)
            self.adversarial_data = (x_adv, y)
            scores = self.sensitivities(model, units, x_adv, y, problem.graph_module, x=x)
            curves = getattr(self.estimator, "curves", None)
        if self.rule == "budget":
            pruned = costaware.allocate_by_curves(problem, curves, self.estimator.ratios)
        else:
            pruned = allocation.allocate(problem, scores, self.tau)
        result = problem.allocation(pruned, scores, rule=self.rule)
        result.measured = not uniform
        if curves:
            result.curves = {name: [float(v) for v in curve] for name, curve in curves.items()}
            result.ratios = list(getattr(self.estimator, "ratios", ()))
        return result

    def _allocate_jointly(self, problem: BudgetProblem, calibration: Any) -> Allocation:
        """The ``joint`` rule: the probe's removal (criterion, adaptive BN) measured on the model pruned everywhere
        so far, step by step; the scores reported are each unit's last measured loss rise per budget saved."""
        model, units = problem.model, problem.units
        x, x_adv, y = self.calibration_set(model, calibration)
        self.adversarial_data = (x_adv, y)
        probe = self.estimator
        probe.gradients = {}
        if probe.criterion == "taylor":  # ranked on adversarial gradients of the unpruned model, as the pruner does
            probe.gradients = weight_gradients(model, [layer for unit in units for layer in unit.layers], x_adv, y,
                                               self.batch_size)
        loss = joint.JointLoss(model, units, x, x_adv, y, probe.criterion, problem.graph_module, probe.gradients,
                               probe.recalibrate, self.batch_size)
        with torch.random.fork_rng(devices=[x_adv.device] if x_adv.device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            pruned, rates = joint.allocate_jointly(problem, loss, self.rounds, self.progress)
        return problem.allocation(pruned, rates, rule=self.rule)
