"""``MRSSparsityAllocator``: an NNI config_list in, a per-unit NNI config_list out.

selection (NNI config_list) -> units (dependency groups) -> calibration X' (torchattacks) -> MRS per unit
-> ratios meeting the global budget on the predicted sped-up model -> config_list any NNI pruner accepts.

The estimator (``sensitivity``) measures; the rule (``rules``: power, budget, joint) turns what it measured into
ratios. Both are objects with their own options, given by name (options by keyword) or as instances.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..attacks import PixelSpace, build_attack, check_eps, check_pixel_range, default_eps
from ..budget.problem import BudgetProblem, check_bounds, check_budget, check_tolerance
from ..budget.report import Allocation
from ..budget.units import Unit
from .calibration import adversarial_examples, check_n_samples, collect_samples
from .rules import RULES, Rule, build_rule, seeded
from .sensitivity import CRITERIA, ESTIMATORS, Estimator, build_estimator

__all__ = ["MRSSparsityAllocator", "default_estimator"]


def default_estimator(rule: Any) -> str:
    """The estimator a rule reads when none is named: ``budget`` needs loss curves, ``joint`` the probe's removal
    (its criterion and adaptive BN); ``power`` reads ``feature``."""
    return rule.estimator if isinstance(rule, Rule) else getattr(RULES.get(rule), "estimator", "feature")


def _parameters(cls: type) -> set:
    return {name for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _estimator_parameters(cls: type) -> set:
    """What an estimator's constructor takes, its bases' included (they pass ``**kwargs`` on)."""
    return set().union(*(_parameters(base) for base in cls.__mro__ if issubclass(base, Estimator)))


class MRSSparsityAllocator:
    """Per-unit pruning ratios from module robustness sensitivity, meeting a global budget after speedup.

    ``allocate(model, config_list, calibration)`` returns an :class:`~nni_mrs_plugin.budget.report.Allocation`
    whose ``config_list`` has one entry per unit (``op_names``, ``sparse_ratio``, ``dependency_group_id``).
    ``config_list`` here is an NNI selection whose ``sparse_ratio`` is the *global* fraction of the budget to
    remove; ``min_sparse_ratio``/``max_sparse_ratio`` bound each selected layer. ``rule`` (a name in
    ``rules.RULES`` or a :class:`~nni_mrs_plugin.mrs.rules.Rule`) and ``estimator`` (a name in
    ``sensitivity.ESTIMATORS`` or an :class:`~nni_mrs_plugin.mrs.sensitivity.Estimator`; None: the rule's own)
    are objects; further keywords (``tau``, ``rounds``, ``rho``, ``ratios``, ``recalibrate``, ...) go to whichever of
    the two named ones takes them. The power rule's default ``tau=0`` gives uniform ratios without measuring MRS.
    The attack (``attack``, ``eps``, ``attack_kwargs``) makes the calibration set X' from ``n_samples`` samples.
    """

    def __init__(self, estimator: Any = None, budget: str = "flops", tau: Optional[float] = None, *,
                 rule: Any = "power", criterion: str = "taylor", attack: Any = None,
                 attack_kwargs: Optional[Dict[str, Any]] = None, eps: Optional[float] = None, n_samples: int = 512,
                 batch_size: int = 256, seed: int = 0, r_min: float = 0.0, r_max: float = 0.9,
                 tolerance: float = 0.01, progress: bool = True, normalization: Optional[tuple] = None,
                 **options: Any):
        check_budget(budget)
        if criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
        check_bounds(r_min, r_max)
        if eps is not None:
            check_eps(eps, positive=True)
        check_tolerance(tolerance)
        check_n_samples(n_samples)
        if tau is not None:
            options["tau"] = tau
        self.rule = build_rule(rule, **self._take(options, type(rule) if isinstance(rule, Rule) else RULES.get(rule)))
        if estimator is None:
            estimator = self.rule.estimator
        if not isinstance(estimator, Estimator):
            if estimator not in ESTIMATORS:
                raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
            if "criterion" in _estimator_parameters(ESTIMATORS[estimator]):
                options.setdefault("criterion", criterion)
            known = _estimator_parameters(ESTIMATORS[estimator]) - {"batch_size", "progress"}
            unknown = sorted(set(options) - known)
            if unknown:
                takes = sorted(known | (set() if isinstance(rule, Rule) else _parameters(type(self.rule))))
                raise ValueError(f"unknown option {unknown[0]!r} for estimator {estimator!r} and rule "
                                 f"{self.rule.name!r}; they take: {', '.join(takes) or 'nothing'}")
        elif options:
            raise ValueError(f"options {sorted(options)} belong to the estimator: set them on {estimator!r} itself")
        self.estimator = build_estimator(estimator, batch_size=batch_size, progress=progress, **options)
        self.rule.check(self.estimator)
        self.budget, self.criterion = budget, criterion
        self.attack, self.attack_kwargs, self.eps = attack, dict(attack_kwargs or {}), eps
        self.n_samples, self.batch_size, self.seed = n_samples, batch_size, seed
        self.r_min, self.r_max, self.tolerance, self.progress = r_min, r_max, tolerance, progress
        self.space = PixelSpace(normalization)  # the calibration loader normalises: attack on pixels
        if normalization is not None and attack is not None and not isinstance(attack, (str, type)):
            raise ValueError("with normalization, give the calibration attack as a torchattacks class or name: an "
                             "attack instance or factory is bound to a model that expects normalised inputs")
        self.adversarial_data: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # (X', Y) of the last allocate
        self.dummy_input: Any = None  # the dummy input of the last allocate

    @staticmethod
    def _take(options: Dict[str, Any], rule_cls: Optional[type]) -> Dict[str, Any]:
        """Remove from ``options`` and return those the named rule's constructor takes."""
        names = _parameters(rule_cls) if rule_cls is not None else set()
        return {name: options.pop(name) for name in sorted(names & set(options))}

    @property
    def tau(self) -> float:
        """The power rule's exponent (0 for the other rules, which have none)."""
        return getattr(self.rule, "tau", 0.0)

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
        return self._calibration(model, calibration)[:3]

    def _calibration(self, model: nn.Module, calibration: Any):
        """(X, X', Y, attack): ``attack(m)`` re-runs the calibration attack on ``m``, the model the attack was
        built for once it has been masked in place (what ``reattack`` estimators ask for)."""
        x, y = collect_samples(calibration, self.n_samples, self.seed)
        check_pixel_range(x, "MRS calibration", self.space)
        device = next(model.parameters()).device
        x, y = x.to(device), y.to(device)
        eps = self.eps if self.eps is not None else default_eps(x)
        attack = build_attack(self.space.model(model), self.attack, eps, **self.attack_kwargs)
        x_adv = adversarial_examples(model, x, y, attack, self.batch_size, self.seed, self.progress, self.space)

        def again(masked: nn.Module) -> torch.Tensor:
            return adversarial_examples(masked, x, y, attack, self.batch_size, self.seed, False, self.space)

        return x, x_adv, y, again

    def sensitivities(self, model: nn.Module, units: Sequence[Unit], x_adv: torch.Tensor, y: torch.Tensor,
                      graph_module: Optional[torch.fx.GraphModule] = None, x: Optional[torch.Tensor] = None,
                      attack: Optional[Callable[[nn.Module], torch.Tensor]] = None) -> Dict[str, float]:
        with seeded(self.seed, x_adv.device):
            return self.estimator(model, units, x_adv, y, graph_module, x=x, attack=attack)

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
            dummy_input = dummy_input.to(next(model.parameters()).device)
        return self.solve(self.problem(model, config_list, dummy_input), calibration, scores, curves)

    def solve(self, problem: BudgetProblem, calibration: Any = None, scores: Optional[Mapping[str, float]] = None,
              curves: Optional[Mapping[str, Sequence[float]]] = None) -> Allocation:
        """``allocate`` on a problem already built (``problem.model`` is the model measured)."""
        self.dummy_input = problem.dummy_input  # what the units and costs were measured on
        evidence = _Evidence(self, problem, calibration, scores, curves)
        counts, measured = self.rule.allocate(problem, evidence)
        self.adversarial_data = evidence.adversarial_data
        result = problem.allocation(counts, measured or {unit.name: 1.0 for unit in problem.units},
                                    rule=self.rule.name)
        result.measured = measured is not None
        if evidence.read_curves:
            result.curves = {name: [float(v) for v in curve] for name, curve in evidence.read_curves.items()}
            result.ratios = list(getattr(self.estimator, "ratios", ()))
        return result


class _Evidence:
    """``rules.Evidence`` for one ``solve``: the calibration set, the estimator's scores and curves, each measured
    once, on first use."""

    def __init__(self, allocator: MRSSparsityAllocator, problem: BudgetProblem, calibration: Any,
                 scores: Optional[Mapping[str, float]], curves: Optional[Mapping[str, Sequence[float]]]):
        self.allocator, self.problem, self.calibration = allocator, problem, calibration
        self.estimator, self.batch_size, self.progress = allocator.estimator, allocator.batch_size, allocator.progress
        self.given = dict(scores) if scores is not None else None
        self.given_curves = dict(curves) if curves is not None else None
        self.read_curves = self.given_curves
        self.adversarial_data: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._samples: Optional[tuple] = None
        self._measured: Optional[Dict[str, float]] = None

    def samples(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._samples is None:
            self._samples = self.allocator._calibration(self.problem.model, self.calibration)
            self.adversarial_data = (self._samples[1], self._samples[2])
        return self._samples[:3]

    def measure(self) -> Dict[str, float]:
        if self._measured is None:
            x, x_adv, y = self.samples()
            self._measured = self.allocator.sensitivities(self.problem.model, self.problem.units, x_adv, y,
                                                          self.problem.graph_module, x=x, attack=self._samples[3])
            self.read_curves = getattr(self.estimator, "curves", None) or self.read_curves
        return self._measured

    def scores(self) -> Dict[str, float]:
        return self.given if self.given is not None else self.measure()

    def curves(self):
        if self.given_curves is not None:
            return self.given_curves, self.estimator.ratios
        self.measure()
        return self.estimator.curves, self.estimator.ratios

    def seeded(self):
        return seeded(self.allocator.seed, next(self.problem.model.parameters()).device)
