"""``MRSPruner``: a ``BudgetPruner`` whose per-unit ratios come from module robustness sensitivity.

NNI's collect -> metrics -> sparsity pipeline: ``_collect_data`` measures MRS on adversarial calibration data and
allocates per-unit ratios (``MRSSparsityAllocator``), ``_calculate_metrics`` scores channels by the criterion (NNI's
own L1/L2/FPGM metrics, or Taylor on adversarial gradients), and ``_generate_sparsity`` is NNI's
``generate_sparsity`` on the allocated ratios and dependency groups. So ``compress()`` returns ``(model, masks)``,
and ``unwrap_model()`` then ``ModelSpeedup`` removes the channels.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import torch
from nni.compression.pruning.tools import active_sparse_targets_filter, generate_sparsity
from torch import nn

from ..budget.problem import BudgetProblem
from ..budget.pruner import (BudgetPruner, PruningContext, apply_allocation, compress_or_unwrap, unwrapped,
                             verify_removal)
from ..budget.report import Allocation
from ..budget.units import DEFAULT_ROUND_TO
from .allocator import MRSSparsityAllocator
from .calibration import collect_samples
from ..budget.importance import weight_gradients

__all__ = ["MRSPruner", "apply_allocation", "unwrapped", "compress_or_unwrap", "verify_removal"]


class MRSPruner(BudgetPruner):
    """Prune channels with per-unit ratios set by module robustness sensitivity (MRS).

    ``config_list`` is NNI's: op selection and exclusions, ``min_sparse_ratio``/``max_sparse_ratio`` bounds,
    and ``sparse_ratio`` as the *global* fraction of the ``budget`` ('flops', 'params' or 'channels') that
    the sped-up model loses. ``calibration`` is a DataLoader or an (x, y) pair; without it, ``evaluator``
    training runs for ``training_steps`` steps and its batches are the calibration data. Further keyword
    options go to :class:`MRSSparsityAllocator` (``eps``, ``n_samples``, ``rho``, ``steps``, ``seed``, ...).
    ``rule`` is a name or a :class:`~nni_mrs_plugin.mrs.rules.Rule` object (a new rule is one class).
    ``rule='power'`` sets ratios from one MRS value per unit (``estimator``, default 'feature') with exponent
    ``tau``; ``rule='budget'`` trades per-unit loss curves (default estimator 'curve') against what each unit's
    channels cost; ``rule='joint'`` makes that trade in ``rounds`` steps, each measured on the model pruned
    everywhere so far (default estimator 'probe', whose removal and ``recalibrate`` it uses). The default
    ``tau=0`` gives every unit the same ratio (MRS is not measured) and ranks channels by adversarial Taylor
    importance; ``tau=1`` or ``rule='budget'`` allocate by robustness sensitivity. Why these defaults: the
    benchmark pages (docs/benchmarks.md).
    After ``compress()``, ``allocation`` holds the per-unit report; with ``verify`` (default) ``compress()`` has
    also removed the channels from a copy with ModelSpeedup and checked it computes what the masked model does.
    """

    def __init__(self, model: nn.Module, config_list: List[Dict[str, Any]], evaluator: Any = None, *,
                 calibration: Any = None, attack: Any = None, estimator: Any = None, criterion: str = "taylor",
                 budget: str = "flops", tau: Optional[float] = None, rule: Any = "power", dummy_input: Any = None,
                 training_steps: int = 10, r_min: float = 0.0, r_max: float = 0.9, tolerance: float = 0.01,
                 round_to: Union[int, str] = DEFAULT_ROUND_TO, verify: bool = True,
                 existed_wrappers: Optional[Dict[str, Any]] = None,
                 **allocator_options: Any):
        self.allocator = MRSSparsityAllocator(estimator, budget, tau, rule=rule, criterion=criterion, attack=attack,
                                              r_min=r_min, r_max=r_max, tolerance=tolerance, **allocator_options)
        if calibration is None and evaluator is None:
            raise ValueError("MRSPruner needs calibration data (a DataLoader or an (x, y) pair) or an evaluator "
                             "whose training batches it can use")
        if training_steps < 1:
            raise ValueError(f"training_steps must be >= 1, got {training_steps}")
        super().__init__(model, config_list, evaluator, dummy_input=dummy_input, budget=budget, r_min=r_min,
                         r_max=r_max, tolerance=tolerance, round_to=round_to, verify=verify,
                         existed_wrappers=existed_wrappers)
        self.calibration, self.training_steps = calibration, training_steps
        # NNI's scheduled pruning (LinearPruner/AGPPruner wrapping this pruner) sets these: masks every
        # ``interval_steps`` optimizer steps, ``total_times`` times, the ratios growing to the allocation
        self.interval_steps, self.total_times = -1, 1
        self.criterion = criterion
        self._captured: List[tuple] = []
        self._gradients: Dict[str, torch.Tensor] = {}

    # -- the budget pruner's parts -------------------------------------------------------------------------
    def allocate(self, problem: BudgetProblem) -> Allocation:
        calibration = self.calibration if self.calibration is not None else self._captured_pair()
        result = self.allocator.solve(problem, calibration)
        if self.criterion == "taylor":
            model = problem.model
            layers = [layer for entry in result.config_list for layer in entry["op_names"]]
            # the estimator's own gradients, when it just took them on this call's X' (taylor, probe + taylor)
            measured = self.allocator.adversarial_data is not None
            known = getattr(self.allocator.estimator, "gradients", {}) if measured else {}
            if all(layer in known for layer in layers):
                self._gradients = {layer: known[layer] for layer in layers}
            else:
                x_adv, y = self.allocator.adversarial_data or self.allocator.calibrate(model, calibration)
                self._gradients = weight_gradients(model, layers, x_adv, y, self.allocator.batch_size)
        return result

    @classmethod
    def context_options(cls, context: PruningContext) -> Dict[str, Any]:
        """Calibration on the training data at the job's radius, normalisation, seed and progress bars."""
        return {"calibration": context.data, "eps": context.eps, "normalization": context.normalization,
                "seed": context.seed, "progress": context.progress}

    def default_dummy_input(self) -> Any:
        """One calibration sample (the captured batches when the evaluator's training supplies them)."""
        calibration = self.calibration if self.calibration is not None else self._captured_pair()
        return collect_samples(calibration, 1, self.allocator.seed)[0]

    def channel_data(self, data: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, Dict[str, torch.Tensor]]:
        if self.criterion == "taylor":  # NNI's Taylor importance, on adversarial instead of training gradients
            for layer, grad in self._gradients.items():
                data[layer]["weight"] = (data[layer]["weight"] * grad.to(data[layer]["weight"])).pow(2)
        return data

    # -- NNI's pipeline -----------------------------------------------------------------------------------
    def _collect_data(self) -> Dict[str, Dict[str, torch.Tensor]]:
        if self.allocation is not None and self.scheduled:  # a schedule measures MRS once and reuses it
            return self.channel_data(active_sparse_targets_filter(self._target_spaces))
        self.allocation = None
        return super()._collect_data()

    def _generate_sparsity(self, metrics: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, Dict[str, torch.Tensor]]:
        share = self._schedule_share() if self.scheduled else 1.0
        apply_allocation(self._target_spaces, self.allocation, share)
        masks = generate_sparsity(metrics, self._target_spaces)
        if self.scheduled:  # hand the scheduler back its own goal, so the next step reads the same share
            for spaces in self._target_spaces.values():
                if spaces.get("weight") is not None:
                    spaces["weight"].sparse_ratio = self.goal * share
        return masks

    @property
    def scheduled(self) -> bool:
        return self.interval_steps > 0

    def _schedule_share(self) -> float:
        """How far NNI's scheduler has moved the goal: it scales every target space's ``sparse_ratio``, which
        this pruner's config_list sets to the global target."""
        ratios = [s["weight"].sparse_ratio for s in self._target_spaces.values() if s.get("weight") is not None]
        return min(1.0, max(0.0, max(r or 0.0 for r in ratios) / self.goal))

    # -- one-shot, or inside evaluator training ---------------------------------------------------------
    def _single_compress(self, max_steps: Optional[int], max_epochs: Optional[int]) -> None:
        if self.calibration is None:
            self._fusion_compress(self.training_steps, None)
            return
        if max_steps is not None or max_epochs is not None:
            raise ValueError("with calibration data MRSPruner prunes in one shot: call compress() without "
                             "max_steps/max_epochs, then fine-tune")
        self.update_masks(self.generate_masks())

    def _fuse_preprocess(self, evaluator: Any) -> None:
        self._captured, self._step = [], 0

        def capture(loss: torch.Tensor, batch: Any) -> torch.Tensor:
            if self.calibration is None and self.allocation is None and len(self._captured) < self.training_steps:
                if isinstance(batch, (tuple, list)) and len(batch) >= 2:
                    self._captured.append((batch[0].detach(), batch[1].detach()))
            return loss

        def after_step() -> None:
            self._step += 1
            if self.scheduled:  # masks at every interval, up to total_times
                if self._step % self.interval_steps == 0 and self._step // self.interval_steps <= self.total_times:
                    self.update_masks(self.generate_masks())
            elif self._step == self.training_steps:
                self.update_masks(self.generate_masks())

        evaluator.patch_loss(capture)
        evaluator.patch_optimizer_step(before_step_tasks=[], after_step_tasks=[after_step])

    def _fuse_postprocess(self, evaluator: Any) -> None:
        if self.allocation is None:  # training stopped before training_steps: prune with what was seen
            self.update_masks(self.generate_masks())

    def _captured_pair(self):
        if not self._captured:
            raise ValueError("no calibration data: the evaluator's training_step received no (x, y) batch; pass "
                             "calibration=DataLoader or (x, y)")
        return torch.cat([x for x, _ in self._captured]), torch.cat([y for _, y in self._captured])
