"""``MRSPruner``: an NNI 3.0 ``Pruner`` whose per-layer ratios come from module robustness sensitivity.

It follows NNI's collect -> metrics -> sparsity pipeline: ``_collect_data`` measures MRS on adversarial
calibration data and allocates per-unit ratios (``MRSSparsityAllocator``), ``_calculate_metrics`` scores
channels by the criterion (NNI's own L1/L2/FPGM metrics, or Taylor on adversarial gradients), and
``_generate_sparsity`` is NNI's ``generate_sparsity`` on the allocated ratios and dependency groups. So
``compress()`` returns ``(model, masks)``, and ``unwrap_model()`` then ``ModelSpeedup`` removes the channels.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch import nn

from nni.compression.base.compressor import Pruner
from nni.compression.pruning.tools import active_sparse_targets_filter, fpgm_metrics, generate_sparsity, norm_metrics

from ..nni.speedup import mask_like_removal, speedup_model
from .allocation import Allocation
from .allocator import MRSSparsityAllocator
from .importance import weight_gradients
from .units import normalize_config, parse_config_list

__all__ = ["MRSPruner", "apply_allocation", "unwrapped", "compress_or_unwrap", "verify_removal"]


@contextmanager
def unwrapped(pruner: Pruner) -> Iterator[nn.Module]:
    """The pruner's model with NNI's wrappers taken off for a measurement, put back afterwards. A scheduler
    (AGP/Linear) wraps the model with these same wrappers, so ask them rather than ``pruner._is_wrapped``."""
    wrapped = [w for w in pruner._module_wrappers.values() if getattr(w.module, "_nni_wrapper", None) is w]
    for wrapper in wrapped:
        wrapper.unwrap()
    try:
        yield pruner.bound_model
    finally:
        for wrapper in wrapped:
            wrapper.wrap()


def compress_or_unwrap(pruner: Pruner, compress, *args):
    """``compress(*args)``, then a dry run of the removal (``verify_removal``) on the input the allocation was
    measured with; if either raises, NNI's wrappers come off the model before the error goes on."""
    try:
        model, masks = compress(*args)
        if getattr(pruner, "verify", False) and getattr(pruner, "measured_input", None) is not None:
            with unwrapped(pruner) as plain:
                verify_removal(plain, masks, pruner.measured_input)
        return model, masks
    except BaseException:
        if pruner._is_wrapped:
            pruner.unwrap_model()
        raise


def verify_removal(model: nn.Module, masks: Dict[str, Dict[str, torch.Tensor]], dummy_input: Any,
                   tolerance: float = 1e-3) -> None:
    """Remove the masked channels from a copy of ``model`` with ModelSpeedup and check that it computes what the
    masked model computes: a one-line ValueError if NNI cannot remove them or the result differs, so nothing
    wrong leaves ``compress()``."""
    removed = copy.deepcopy(model).eval()
    masked = mask_like_removal(copy.deepcopy(model).eval(), masks, dummy_input)
    try:
        speedup_model(removed, masks, dummy_input)
        with torch.no_grad():
            expected, got = masked(dummy_input), removed(dummy_input)
    except (RuntimeError, ValueError) as err:  # NNI refuses, or the model it built crashes
        raise ValueError(f"the masks cannot be removed for real ({str(err).splitlines()[0]}); exclude the layers "
                         f"involved with exclude_op_names in the config_list") from None
    if isinstance(expected, torch.Tensor) and isinstance(got, torch.Tensor):
        difference = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
        if got.shape != expected.shape or difference > tolerance:
            raise ValueError(f"removing the masked channels would change what the model computes (relative "
                             f"difference {difference:.3g} to masking them, allowed {tolerance}); exclude the layers "
                             f"whose channels removal cannot follow with exclude_op_names in the config_list")


def apply_allocation(target_spaces: Dict[str, Dict[str, Any]], allocation: Optional[Allocation],
                     scale: float = 1.0) -> None:
    """Set each selected layer's NNI target space to its unit's ratio (times ``scale``, the share of a pruning
    schedule reached so far) and dependency group (0 elsewhere), so NNI's ``generate_sparsity`` prunes exactly
    the allocated channel counts."""
    if allocation is None:
        raise RuntimeError("no allocation yet: compress() allocates before it generates sparsity")
    allocated = {layer: entry for entry in allocation.config_list for layer in entry["op_names"]}
    for layer, spaces in target_spaces.items():
        space = spaces.get("weight")
        if space is None:
            continue
        entry = allocated.get(layer)
        space.sparse_ratio = float(entry["sparse_ratio"]) * scale if entry else 0.0
        if entry:
            space.dependency_group_id = entry["dependency_group_id"]
            if "internal_metric_block" in entry:
                space._setting["internal_metric_block"] = entry["internal_metric_block"]


class MRSPruner(Pruner):
    """Prune channels with per-unit ratios set by module robustness sensitivity (MRS).

    ``config_list`` is NNI's: op selection and exclusions, ``min_sparse_ratio``/``max_sparse_ratio`` bounds,
    and ``sparse_ratio`` as the *global* fraction of the ``budget`` ('flops', 'params' or 'channels') that
    the sped-up model loses. ``calibration`` is a DataLoader or an (x, y) pair; without it, ``evaluator``
    training runs for ``training_steps`` steps and its batches are the calibration data. Further keyword
    options go to :class:`MRSSparsityAllocator` (``eps``, ``n_samples``, ``rho``, ``steps``, ``seed``, ...).
    ``rule='power'`` sets ratios from one MRS value per unit (``estimator``, default 'feature') with exponent
    ``tau``; ``rule='budget'`` trades per-unit loss curves (default estimator 'curve') against what each unit's
    channels cost; ``rule='joint'`` makes that trade in ``rounds`` steps, each measured on the model pruned
    everywhere so far (default estimator 'probe', whose removal and ``recalibrate`` it uses). The default ``tau=0`` gives every unit the same ratio (MRS is not measured) and adversarial
    Taylor channels: on the allocation benchmark's validation split no MRS allocation beat that (BENCHMARKS.md),
    so it is the default until one does; ``tau=1`` or ``rule='budget'`` allocate by robustness sensitivity.
    After ``compress()``, ``allocation`` holds the per-unit report; with ``verify`` (default) ``compress()`` has
    also removed the channels from a copy with ModelSpeedup and checked it computes what the masked model does.
    """

    allocates = True  # takes the global target and allocates per-unit ratios itself

    def __init__(self, model: nn.Module, config_list: List[Dict[str, Any]], evaluator: Any = None, *,
                 calibration: Any = None, attack: Any = None, estimator: Any = None, criterion: str = "taylor",
                 budget: str = "flops", tau: float = 0.0, rule: str = "power", dummy_input: Any = None,
                 training_steps: int = 10,
                 verify: bool = True, existed_wrappers: Optional[Dict[str, Any]] = None, **allocator_options: Any):
        self.allocator = MRSSparsityAllocator(estimator, budget, tau, rule=rule, criterion=criterion, attack=attack,
                                              **allocator_options)
        selection = parse_config_list(model, config_list)  # a clear error now, not NNI's schema traceback later
        if calibration is None and evaluator is None:
            raise ValueError("MRSPruner needs calibration data (a DataLoader or an (x, y) pair) or an evaluator "
                             "whose training batches it can use")
        if training_steps < 1:
            raise ValueError(f"training_steps must be >= 1, got {training_steps}")
        super().__init__(model, [normalize_config(config) for config in config_list], evaluator, existed_wrappers)
        self.calibration, self.dummy_input, self.training_steps = calibration, dummy_input, training_steps
        self.verify, self.measured_input = verify, None  # compress() dry-runs the removal on measured_input
        self.goal = selection.target
        # NNI's scheduled pruning (LinearPruner/AGPPruner wrapping this pruner) sets these: masks every
        # ``interval_steps`` optimizer steps, ``total_times`` times, the ratios growing to the allocation
        self.interval_steps, self.total_times = -1, 1
        self.criterion = criterion
        self.allocation: Optional[Allocation] = None
        self._captured: List[tuple] = []
        self._gradients: Dict[str, torch.Tensor] = {}

    # -- NNI's pipeline -----------------------------------------------------------------------------------
    def _collect_data(self) -> Dict[str, Dict[str, torch.Tensor]]:
        if self.allocation is None or not self.scheduled:  # a schedule measures MRS once and reuses it
            calibration = self.calibration if self.calibration is not None else self._captured_pair()
            with unwrapped(self) as model:
                self.allocation = self._allocate(model, calibration)
        data = active_sparse_targets_filter(self._target_spaces)
        if self.criterion == "taylor":  # NNI's Taylor importance, on adversarial instead of training gradients
            for layer, grad in self._gradients.items():
                data[layer]["weight"] = (data[layer]["weight"] * grad.to(data[layer]["weight"])).pow(2)
        return data

    def _calculate_metrics(self, data: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, Dict[str, torch.Tensor]]:
        if self.criterion == "fpgm":
            return fpgm_metrics(p=2, data=data, target_spaces=self._target_spaces)
        return norm_metrics(p=2 if self.criterion == "l2" else 1, data=data, target_spaces=self._target_spaces)

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

    def _allocate(self, model: nn.Module, calibration: Any) -> Allocation:
        dummy_input = self.dummy_input
        if dummy_input is None and self.evaluator is not None:
            dummy_input = self.evaluator.get_dummy_input()
        if isinstance(dummy_input, torch.Tensor):
            dummy_input = dummy_input.to(next(model.parameters()).device)
        result = self.allocator.allocate(model, self.config_list, calibration, dummy_input)
        self.measured_input = self.allocator.dummy_input
        if self.criterion == "taylor":
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

    def compress(self, max_steps: Optional[int] = None, max_epochs: Optional[int] = None):
        """Returns ``(model, masks)``; the report is in ``self.allocation``. On an error (an unreachable target,
        say) the model is unwrapped first, so it is the user's model again, not one NNI refuses to wrap twice."""
        return compress_or_unwrap(self, super().compress, max_steps, max_epochs)
