"""``BudgetPruner``: the NNI 3.0 ``Pruner`` every budget pruner is. It takes NNI's config_list with
``sparse_ratio`` as the *global* fraction of the ``budget`` to remove, builds the ``BudgetProblem`` (units, exact
cost model, bounds), asks its subclass's ``allocate(problem)`` for per-unit ratios, meets the target from them, and
runs NNI's collect -> metrics -> sparsity on the result: ``compress()`` returns ``(model, masks)``, and
``unwrap_model()`` then ``ModelSpeedup`` removes the channels. With ``verify`` (default) ``compress()`` has also
removed the channels from a copy and checked it computes what the masked model does.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

import torch
from torch import nn

from nni.compression.base.compressor import Pruner
from nni.compression.pruning.tools import active_sparse_targets_filter, fpgm_metrics, generate_sparsity, norm_metrics

from ..host.speedup import mask_like_removal, speedup_model
from .problem import BudgetProblem, check_bounds, check_budget, check_tolerance
from .report import Allocation
from .selection import Selection, normalize_config, parse_config_list
from .units import DEFAULT_ROUND_TO, check_round_to

__all__ = ["BudgetPruner", "PruningContext", "check_arguments", "apply_allocation", "unwrapped", "compress_or_unwrap",
           "verify_removal"]

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


def check_arguments(model: nn.Module, config_list: List[Dict[str, Any]], budget: str = "flops", r_min: float = 0.0,
                    r_max: float = 0.9, tolerance: float = 0.01,
                    round_to: Union[int, str] = DEFAULT_ROUND_TO) -> Selection:
    """A budget pruner's arguments checked, one line naming the bad value, before NNI wraps the model (a subclass
    that checks its own options first calls this before them)."""
    check_budget(budget)
    check_bounds(r_min, r_max)
    check_tolerance(tolerance)
    check_round_to(round_to)
    return parse_config_list(model, config_list)  # a clear error now, not NNI's schema traceback later


@dataclass(frozen=True)
class PruningContext:
    """What a caller (the job) has at hand besides a pruner's own options: its training data, the fine-tuning
    objective, a file to resume in, the attack radius, the loaders' normalisation, the seed and progress bars.
    Each pruner class says which of these it takes (``BudgetPruner.context_options``)."""

    data: Any = None  # a DataLoader of (inputs, labels), or one (x, y) pair
    trainer: Any = None  # an AdversarialTrainer: the objective of fine-tuning
    checkpoint: Optional[Path] = None  # a file in which a pruner that trains can resume
    eps: Optional[float] = None
    normalization: Optional[tuple] = None  # (mean, std) when the loaders normalise
    seed: int = 0
    progress: bool = True


class BudgetPruner(Pruner):
    """A pruner that meets a global budget on the sped-up model; a subclass implements ``allocate``.

    ``config_list`` is NNI's: op selection and exclusions, ``min_sparse_ratio``/``max_sparse_ratio`` bounds, and
    ``sparse_ratio`` as the global fraction of ``budget`` ('flops', 'params' or 'channels') to remove.
    ``dummy_input`` (else the evaluator's, else ``default_dummy_input()``) traces the model and measures the budget.
    Each unit keeps at least 1 - ``r_max`` of its channels; the target is met to ``tolerance``. With ``round_to``
    N > 1 every pruned unit keeps a multiple of N channels (a unit that cannot is left whole; the allocation's
    ``skipped`` says so), the channel counts hardware blocks run fastest; 'auto' gives each unit the largest of
    16, 8, 4, 2, 1 that leaves it 8 counts to choose from (64 channels: 8; 128 and more: 16). Inside each unit
    the channels go by ``criterion`` ('l1', 'l2', 'fpgm'; a subclass may rank them itself in ``channel_data``).
    After ``compress()``, ``allocation`` holds the per-unit report and ``problem`` the problem it solved.
    """

    criterion = "l1"

    def __init__(self, model: nn.Module, config_list: List[Dict[str, Any]], evaluator: Any = None, *,
                 dummy_input: Any = None, budget: str = "flops", r_min: float = 0.0, r_max: float = 0.9,
                 tolerance: float = 0.01, round_to: Union[int, str] = DEFAULT_ROUND_TO, verify: bool = True,
                 existed_wrappers: Optional[Dict[str, Any]] = None):
        selection = check_arguments(model, config_list, budget, r_min, r_max, tolerance, round_to)
        super().__init__(model, [normalize_config(config) for config in config_list], evaluator, existed_wrappers)
        self.goal = selection.target
        self.dummy_input, self.budget, self.r_min, self.r_max = dummy_input, budget, r_min, r_max
        self.tolerance, self.round_to, self.verify, self.measured_input = tolerance, round_to, verify, None
        self.problem: Optional[BudgetProblem] = None
        self.allocation: Optional[Allocation] = None

    # -- what a subclass implements -------------------------------------------------------------------------
    def allocate(self, problem: BudgetProblem) -> Union[Mapping[str, float], Allocation]:
        """Per-unit ratios ({unit name: fraction of its channels to prune}; rough is fine, the base meets the
        target from them), or a finished ``Allocation``. ``problem.model`` is the unwrapped model."""
        raise NotImplementedError(f"{type(self).__name__} must implement allocate(problem)")

    @classmethod
    def context_options(cls, context: PruningContext) -> Dict[str, Any]:
        """The constructor keywords this pruner takes from a caller's ``context`` (its options override them)."""
        return {}

    def default_dummy_input(self) -> Any:
        """The input to trace with when neither ``dummy_input`` nor an evaluator gives one."""
        return None

    def channel_data(self, data: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, Dict[str, torch.Tensor]]:
        """NNI's collected weights, which ``criterion`` then scores; a subclass may reweigh them."""
        return data

    # -- the budget -----------------------------------------------------------------------------------------
    def resolve_dummy_input(self, model: nn.Module) -> Any:
        dummy = self.dummy_input
        if dummy is None and self.evaluator is not None:
            dummy = self.evaluator.get_dummy_input()
        if dummy is None:
            dummy = self.default_dummy_input()
        if dummy is None:
            raise ValueError(f"{type(self).__name__} needs dummy_input (or an evaluator's) to trace the model and "
                             f"measure the budget")
        return dummy.to(next(model.parameters()).device) if isinstance(dummy, torch.Tensor) else dummy

    def plan(self) -> Allocation:
        """Build the problem on the unwrapped model, allocate, and meet the target: ``self.allocation``."""
        with unwrapped(self) as model:
            self.measured_input = dummy = self.resolve_dummy_input(model)
            self.problem = BudgetProblem.build(model, self.config_list, dummy, self.budget, self.r_min, self.r_max,
                                               self.tolerance, self.round_to)
            result = self.allocate(self.problem)
        if not isinstance(result, Allocation):
            ratios = dict(result)
            result = self.problem.allocation(self.problem.meet(ratios), rule=type(self).__name__)
        self.allocation = result
        return result

    # -- NNI's pipeline -------------------------------------------------------------------------------------
    def _collect_data(self) -> Dict[str, Dict[str, torch.Tensor]]:
        if self.allocation is None:
            self.plan()
        return self.channel_data(active_sparse_targets_filter(self._target_spaces))

    def _calculate_metrics(self, data: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, Dict[str, torch.Tensor]]:
        if self.criterion == "fpgm":
            return fpgm_metrics(p=2, data=data, target_spaces=self._target_spaces)
        return norm_metrics(p=2 if self.criterion == "l2" else 1, data=data, target_spaces=self._target_spaces)

    def _generate_sparsity(self, metrics: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, Dict[str, torch.Tensor]]:
        apply_allocation(self._target_spaces, self.allocation)
        return generate_sparsity(metrics, self._target_spaces)

    def _single_compress(self, max_steps: Optional[int], max_epochs: Optional[int]) -> None:
        if max_steps is not None or max_epochs is not None:
            raise ValueError(f"{type(self).__name__} prunes in one shot: call compress() without "
                             f"max_steps/max_epochs, then fine-tune")
        self.update_masks(self.generate_masks())

    def compress(self, max_steps: Optional[int] = None, max_epochs: Optional[int] = None):
        """Returns ``(model, masks)``; the report is in ``self.allocation``. On an error (an unreachable target,
        say) the model is unwrapped first, so it is the user's model again, not one NNI refuses to wrap twice."""
        return compress_or_unwrap(self, super().compress, max_steps, max_epochs)
