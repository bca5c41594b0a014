"""Pruning units: the selected layers, grouped so that layers whose output channels must go together share one
pruning ratio.

A *unit* is one Conv/Linear layer, or an NNI dependency group (residual adds, depthwise chains) found by
NNI's torch.fx helper on the whole model. A group is prunable only when every member is selected: pruning one
branch of a residual add alone removes nothing (the other branch keeps the channel alive). Layers that produce
the model's output (the classifier) are never pruned: removing their channels would remove classes.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..host.graph import new_users
from ..host.speedup import ZERO_KEEPING_CALLS, ZERO_KEEPING_MODULES, group_dependencies, trace
from .selection import PRUNABLE_TYPES, Selection

__all__ = ["Unit", "PRUNABLE_TYPES", "find_units", "output_layers", "unfollowable", "check_round_to", "AUTO_ROUND_TO",
           "DEFAULT_ROUND_TO", "auto_round_to"]

# what a unit's output channels may pass through on their way to the next Conv/Linear, so that removing a channel
# removes exactly it downstream: per-channel maps, pooling, adds, channel concatenation, flatten into a Linear
_FOLLOWED_MODULES = ZERO_KEEPING_MODULES + (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Sigmoid,
                                            nn.Hardsigmoid, nn.Flatten, nn.Upsample)
_FOLLOWED_NAMES = {"StochasticDepth"}  # torchvision's: the identity at inference
_FOLLOWED_CALLS = ZERO_KEEPING_CALLS | {"sigmoid", "hardsigmoid", "add", "iadd", "add_", "mul", "imul", "mul_", "sub",
                                        "truediv", "cat", "concat", "interpolate", "mean", "batch_norm",
                                        "stochastic_depth"}
_SCALARS = {"size", "dim", "getattr", "numel"}  # read a shape, carry no channels
_RESHAPES = {"view", "reshape", "flatten", "unflatten"}


@dataclass(frozen=True)
class Unit:
    """Layers pruned together: same output channels removed from each, chosen by one fused importance. A pruned
    unit keeps a multiple of ``round_to`` channels (hardware runs aligned channel counts faster)."""

    name: str
    layers: Tuple[str, ...]
    channels: int
    block: int = 1
    min_ratio: float = 0.0
    max_ratio: float = 0.9
    round_to: int = 1

    @property
    def per_block(self) -> int:
        return self.channels // self.block

    @cached_property
    def allowed(self) -> Tuple[int, ...]:
        """The per-block prune counts this unit may take, ascending: within its bounds, always keeping one
        channel per block, and (but for 0) keeping a multiple of ``round_to`` channels. Empty when the bounds
        force pruning that no aligned count satisfies."""
        high = min(self.per_block - 1, math.floor(self.per_block * self.max_ratio + 1e-9))
        low = min(high, math.ceil(self.per_block * self.min_ratio - 1e-9))
        return tuple(p for p in range(low, high + 1) if p == 0 or self.kept(p) % self.round_to == 0)

    def max_pruned_per_block(self) -> int:
        """Largest per-block prune count allowed."""
        return self.allowed[-1]

    def min_pruned_per_block(self) -> int:
        return self.allowed[0]

    def snap(self, count: int) -> int:
        """The largest allowed count not above ``count`` (the smallest allowed one if none is)."""
        index = bisect.bisect_right(self.allowed, count) - 1
        return self.allowed[max(index, 0)]

    def shift(self, count: int, steps: int) -> int:
        """The allowed count ``steps`` positions away from ``count`` (snapped first), clipped to the allowed."""
        index = bisect.bisect_right(self.allowed, count) - 1
        return self.allowed[min(max(index + steps, 0), len(self.allowed) - 1)]

    def kept(self, pruned_per_block: int) -> int:
        return (self.per_block - pruned_per_block) * self.block

    def sparse_ratio(self, pruned_per_block: int) -> float:
        """The ``sparse_ratio`` that makes NNI prune exactly ``pruned_per_block`` channels per block.

        NNI prunes ``int(per_block * sparse_ratio)`` channels; j / n can land just below j in floating point.
        """
        if pruned_per_block == 0:
            return 0.0
        ratio = pruned_per_block / self.per_block
        while int(self.per_block * ratio) < pruned_per_block:
            ratio = math.nextafter(ratio, 1.0)
        return ratio


def output_layers(graph_module: torch.fx.GraphModule) -> List[str]:
    """Conv/Linear layers whose output reaches the model output without passing another Conv/Linear."""
    modules = dict(graph_module.named_modules())
    found, seen = [], set()
    stack = [node for node in graph_module.graph.nodes if node.op == "output"]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module" and isinstance(modules.get(node.target), PRUNABLE_TYPES):
            found.append(node.target)
            continue
        stack.extend(node.all_input_nodes)
    return found


def _depthwise(module: Any) -> bool:
    groups = getattr(module, "groups", 1)
    return groups > 1 and groups == getattr(module, "in_channels", 0) == getattr(module, "out_channels", -1)


def _shape_of(node: Any) -> Optional[Tuple[int, ...]]:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def unfollowable(graph_module: torch.fx.GraphModule, layers: Sequence[str]) -> str:
    """Why removing output channels of ``layers`` would not remove exactly those channels downstream ('' if it
    would): their channels reach an op the removal cannot follow (a reshape or transpose that mixes them, as in a
    channel shuffle; chunk/split; attention; a norm across channels) before the next Conv/Linear consumes them."""
    modules = dict(graph_module.named_modules())
    stack = [node for node in graph_module.graph.nodes if node.op == "call_module" and node.target in layers]
    for node in stack:  # a depthwise conv's channels are its input's: their producer must go with it
        if _depthwise(modules.get(node.target)):
            source = node.all_input_nodes[0] if node.all_input_nodes else None
            while source is not None and not (source.op == "call_module" and
                                              isinstance(modules.get(source.target), PRUNABLE_TYPES)):
                source = source.all_input_nodes[0] if source.all_input_nodes and source.op != "placeholder" else None
            if source is None or source.target not in layers:
                return (f"depthwise {node.target} keeps its input's channels, and they come from "
                        f"{'the model input' if source is None else source.target}, outside this group")
    channels = {node: (_shape_of(node) or (0, 0))[1] for node in stack}  # the unit's channels along dim 1
    seen = set(stack)
    while stack:
        node = stack.pop()
        before, count = _shape_of(node), channels[node]
        for user, module, name in new_users(node, seen, modules):
            after = _shape_of(user)
            if isinstance(module, PRUNABLE_TYPES):
                if _depthwise(module):
                    channels[user] = count
                    stack.append(user)  # each channel goes through on its own
                continue
            if user.op == "output":
                return "its channels reach the model output"
            if name in _SCALARS:
                continue
            kind = (isinstance(module, _FOLLOWED_MODULES) or type(module).__name__ in _FOLLOWED_NAMES) if module \
                else user.op in ("call_function", "call_method") and name in _FOLLOWED_CALLS | _RESHAPES
            label = type(module).__name__ if module is not None else str(name)
            if not kind or before is None or after is None or len(after) < 2:
                return f"its channels pass through {label} ('{user.name}'), which channel removal cannot follow"
            passed = count
            if name in ("cat", "concat"):
                passed = after[1]
            elif not (after == before or after[:2] == before[:2] or
                      (isinstance(module, nn.Flatten) or name in _RESHAPES) and count and after[1] % count == 0):
                # a reshape keeps each channel whole only if dim 1 stays a multiple of the channels (flatten into
                # a Linear, or back); a split of the channel dim (a channel shuffle's view) does not
                return (f"its channels pass through {label} ('{user.name}') with shape {list(before)} -> "
                        f"{list(after)}, which channel removal cannot follow")
            channels[user] = passed
            stack.append(user)
    return ""


AUTO_ROUND_TO = (16, 8, 4, 2, 1)  # round_to="auto": per unit, the largest that leaves it AUTO_COUNTS counts
AUTO_COUNTS = 8
DEFAULT_ROUND_TO: Union[int, str] = "auto"  # every pruner's and the job's default (job/config.py spells it out)


def check_round_to(round_to: Any) -> None:
    if round_to == "auto":
        return
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be an integer >= 1 (pruned units keep a multiple of it) or 'auto', got "
                         f"{round_to!r}")


def auto_round_to(channels: int) -> int:
    """``round_to="auto"`` for a unit of ``channels``: the largest of 16, 8, 4, 2, 1 that still leaves it
    ``AUTO_COUNTS`` (8) aligned counts, so wide units keep the multiples runtimes' blocked kernels run fast and
    narrow ones the resolution a robustness-aware allocation needs (64 channels: 8; 128 and more: 16; 16: 2)."""
    return next(step for step in AUTO_ROUND_TO if step * AUTO_COUNTS <= channels or step == 1)


def _aligned_unit(unit: Unit, round_to: Union[int, str]) -> Unit:
    """``unit`` with its step: ``round_to``, or under 'auto' the unit's own (smaller while the bounds leave the
    unit only its whole count)."""
    if round_to != "auto":
        return replace(unit, round_to=round_to)
    steps = AUTO_ROUND_TO[AUTO_ROUND_TO.index(auto_round_to(unit.channels)):]
    return next(aligned for aligned in (replace(unit, round_to=step) for step in steps)
                if aligned.round_to == 1 or len(aligned.allowed) > 1)


def find_units(model: nn.Module, selection: Selection, dummy_input: Any, r_min: float = 0.0, r_max: float = 0.9,
               graph_module: Optional[torch.fx.GraphModule] = None, round_to: Union[int, str] = 1
               ) -> Tuple[List[Unit], Dict[str, str], torch.fx.GraphModule]:
    """Group the selected layers into units; returns (units, {skipped layer: reason}, traced graph). With
    ``round_to`` > 1 a unit that cannot keep a smaller multiple of it within its bounds is left whole (skipped);
    'auto' gives each unit its own step (``auto_round_to``) and leaves none whole."""
    if not 0.0 <= r_min <= r_max < 1.0:
        raise ValueError(f"need 0 <= r_min <= r_max < 1, got r_min={r_min}, r_max={r_max}")
    check_round_to(round_to)
    graph_module = graph_module if graph_module is not None else trace(model, dummy_input)
    modules = dict(model.named_modules())
    reached = {name for name, _ in graph_module.named_modules()}  # a traced graph keeps the layers it calls
    unreached = [name for name in selection.layers if name not in reached]
    if unreached:
        raise ValueError(f"selected layers {unreached[:5]} never run on the dummy input (the forward takes another "
                         f"branch for it, and a trace follows one), so their channels' dependencies are unknown: "
                         f"give a dummy_input that reaches them, or leave them out with exclude_op_names")
    every_layer = [name for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES) and name in reached]
    grouped = group_dependencies(model, [{"op_names": every_layer, "sparse_ratio": 0.5}], dummy_input, graph_module)
    order = {name: i for i, name in enumerate(every_layer)}
    groups: Dict[str, List[str]] = {}
    blocks: Dict[str, int] = {}
    for config in grouped:
        (layer,) = config["op_names"]
        key = config.get("dependency_group_id", layer)
        groups.setdefault(key, []).append(layer)
        block = config.get("internal_metric_block") or 1
        blocks[key] = math.lcm(blocks.get(key, 1), int(block))

    selected = set(selection.layers)
    outputs = set(output_layers(graph_module))
    units, skipped = [], {}
    for key, layers in groups.items():
        layers = sorted(layers, key=order.__getitem__)
        chosen = [name for name in layers if name in selected]
        if not chosen:
            continue
        missing = [name for name in layers if name not in selected]
        produces_output = [name for name in layers if name in outputs]
        if produces_output:
            reason = f"produces the model output ({', '.join(produces_output)}): pruning it would remove classes"
        elif missing:
            reason = f"shares output channels with unselected {', '.join(missing)} (select the whole group)"
        else:
            reason = unfollowable(graph_module, layers)
        if reason:
            skipped.update({name: reason for name in chosen})
            continue
        lows = [selection.bounds[name][0] for name in layers if selection.bounds[name][0] is not None]
        highs = [selection.bounds[name][1] for name in layers if selection.bounds[name][1] is not None]
        low, high = max(lows, default=r_min), min(highs, default=r_max)
        if low > high:
            raise ValueError(f"layers {layers} must be pruned together, but their bounds conflict: "
                             f"min_sparse_ratio {low} > max_sparse_ratio {high}")
        first = modules[layers[0]]
        channels = first.out_features if isinstance(first, nn.Linear) else first.out_channels
        unit = _aligned_unit(Unit(name=layers[0], layers=tuple(layers), channels=channels, block=blocks[key],
                                  min_ratio=low, max_ratio=min(high, 1.0)), round_to)
        if not unit.allowed:
            raise ValueError(f"layers {layers} ({channels} channels) cannot be pruned by min_sparse_ratio {low} to a "
                             f"multiple of round_to={unit.round_to} within max_sparse_ratio {high}")
        if unit.round_to > 1 and unit.allowed == (0,):
            skipped.update({name: f"left whole: round_to={round_to} allows no smaller multiple of {round_to} than its "
                                  f"{channels} channels within its bounds" for name in chosen})
            continue
        units.append(unit)
    units.sort(key=lambda unit: order[unit.layers[0]])
    if not units:
        raise ValueError(f"nothing left to prune in {type(model).__name__}: {skipped}")
    return units, skipped, graph_module
