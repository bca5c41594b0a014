"""What an NNI config_list asks of a budget pruner: the global target (``sparse_ratio``), per-layer bounds
(``min_sparse_ratio``/``max_sparse_ratio``) and the layers it selects, checked with one line naming a bad value."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import nn

from ..host.speedup import check_op_names

__all__ = ["Selection", "PRUNABLE_TYPES", "parse_config_list", "normalize_config"]

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_RATIO_KEYS = ("sparse_ratio", "min_sparse_ratio", "max_sparse_ratio")


@dataclass
class Selection:
    """What a config_list asks for: the global target, per-layer bounds, and the layers it selects."""

    target: float
    layers: List[str]
    bounds: Dict[str, Tuple[Optional[float], Optional[float]]] = field(default_factory=dict)


def _check_ratio(value: Any, key: str, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    value = float(value)
    if low_open and not 0.0 < value < 1.0:
        raise ValueError(f"{key} must be in (0, 1) (the fraction of the budget to remove), got {value}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{key} must be in [0, 1], got {value}")
    return value


def normalize_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """NNI's schema wants float ratios; ``0`` and ``1`` as ints are what users write."""
    return {key: float(value) if key in _RATIO_KEYS and isinstance(value, int) and not isinstance(value, bool)
            else value for key, value in config.items()}


def parse_config_list(model: nn.Module, config_list: Sequence[Dict[str, Any]]) -> Selection:
    """Validate an NNI config_list and read the global target (``sparse_ratio``) and per-layer bounds.

    NNI's semantics: each entry selects layers by ``op_*`` keys minus ``exclude_op_*``; a layer's setting comes
    from the last entry that selects it. All entries carrying ``sparse_ratio`` must agree: it is the global
    fraction of the budget to remove, not a per-layer ratio.
    """
    from nni.compression.base.config import default_config_schema, select_modules_by_config

    if isinstance(config_list, dict) or not isinstance(config_list, Sequence) or not config_list:
        raise ValueError(f"config_list must be a non-empty list of dicts, got {config_list!r}")
    schema = default_config_schema("pruning")
    modules = dict(model.named_modules())
    targets, settings = set(), {}
    for index, config in enumerate(config_list):
        if not isinstance(config, dict):
            raise ValueError(f"config_list[{index}] must be a dict, got {config!r}")
        if "sparse_ratio" in config:
            targets.add(_check_ratio(config["sparse_ratio"], "sparse_ratio", low_open=True))
        config = normalize_config(config)
        try:
            schema.validate(copy.deepcopy(config))
        except Exception as err:
            raise ValueError(f"config_list[{index}] = {config} is not a valid NNI pruning config: {err}") from None
        if "sparse_threshold" in config or "global_group_id" in config:
            raise ValueError(f"config_list[{index}]: sparse_threshold/global_group_id are set by the MRS allocator; "
                             f"give the global target as sparse_ratio")
        low = config.get("min_sparse_ratio")
        high = config.get("max_sparse_ratio")
        low = None if low is None else _check_ratio(low, "min_sparse_ratio")
        high = None if high is None else _check_ratio(high, "max_sparse_ratio")
        if low is not None and high is not None and low > high:
            raise ValueError(f"config_list[{index}]: min_sparse_ratio {low} > max_sparse_ratio {high}")
        check_op_names(model, config, index)
        selected, _, _ = select_modules_by_config(model, config)
        for name in selected:
            settings[name] = (low, high)
    if not targets:
        raise ValueError("config_list gives no sparse_ratio: set it to the fraction of the budget to remove, e.g. 0.5")
    if len(targets) > 1:
        raise ValueError(f"config_list entries give different sparse_ratio values {sorted(targets)}: MRS allocates "
                         f"one global target; give it once and bound layers with min/max_sparse_ratio")
    wrong = {name: type(modules[name]).__name__ for name in settings if not isinstance(modules[name], PRUNABLE_TYPES)}
    if wrong:
        raise ValueError(f"config_list selects layers that channel pruning cannot handle: {wrong}; allowed types are "
                         f"{', '.join(t.__name__ for t in PRUNABLE_TYPES)} (use op_types=['Conv2d', 'Linear'])")
    if not settings:
        raise ValueError(f"config_list {list(config_list)} selects no layer of {type(model).__name__}")
    order = [name for name, _ in model.named_modules() if name in settings]
    return Selection(target=targets.pop(), layers=order, bounds=settings)
