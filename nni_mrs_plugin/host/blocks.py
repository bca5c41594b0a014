"""Residual blocks a model can lose whole, found in the traced graph and removed by swapping modules.

A block is an add ``s + f(X)`` whose branch f is computed from one tensor X by nodes used nowhere else, and
whose shortcut s is X itself or X through parameter-free ops (identity), or X through layers of its own
(projection: a strided 1x1 conv). Removing it leaves ``s + 0``: the branch's first layer (the cut) becomes
``Zeros`` and every later module of the branch ``nn.Identity``, so the model keeps its class (checkpoints rebuild
it) and ``ModelSpeedup`` can still remove channels from the rest. Masking semantics: a block goes when every
Conv/Linear of its branch is masked whole (``block_masks``), which zeroes f(X) as removal does.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

import torch
from torch import nn

from ..models import Zeros
from .hidden import ELEMENTWISE_CALLS, ELEMENTWISE_MODULES

__all__ = ["Block", "find_blocks", "remove_blocks", "removed_blocks", "block_masks", "LAYER_TYPES"]

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ADDS = {operator.add, operator.iadd, torch.add, "add", "add_"}
_MULS = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}


@dataclass(frozen=True)
class Block:
    """A residual block: ``layers`` (its branch's Conv/Linear) are masked whole when it goes; removal makes
    ``cut`` a ``Zeros`` and ``identities`` ``nn.Identity``."""

    name: str
    kind: str  # "identity" or "projection"
    layers: Tuple[str, ...]
    cut: str
    identities: Tuple[str, ...]
    channels: Optional[int] = None  # a projection block's Zeros: its output channels and stride
    stride: int = 1
    branch: str = ""  # the traced graph's nodes of f(X) and of the shortcut, by name
    shortcut: str = ""

    @property
    def modules(self) -> Tuple[str, ...]:
        return (self.cut, *self.identities)


def _tensor_inputs(node: torch.fx.Node) -> List[torch.fx.Node]:
    return [n for n in node.all_input_nodes if n.op != "get_attr" and "tensor_meta" in n.meta]


def _shape(node: Any) -> Optional[torch.Size]:
    meta = getattr(node, "meta", {}).get("tensor_meta")
    return getattr(meta, "shape", None)


def _private(root: torch.fx.Node, add: torch.fx.Node, order: Dict[torch.fx.Node, int]):
    """The nodes that compute ``root`` and feed nothing but it (walked back in reverse graph order, so a node is
    judged after all its users), and the tensors they read from outside."""
    private: Set[torch.fx.Node] = set()
    outside: Set[torch.fx.Node] = set()
    pending = {root}
    while pending:
        node = max(pending, key=order.__getitem__)
        pending.discard(node)
        if node.op in ("placeholder", "get_attr") or any(u not in private and (u is not add or node is not root)
                                                         for u in node.users):
            outside.add(node)
            continue
        private.add(node)
        pending.update(n for n in node.all_input_nodes if n not in private and n not in outside)
    return private, {n for n in outside if n.op != "get_attr" and "tensor_meta" in n.meta}


def _reachable(start: torch.fx.Node, within: Set[torch.fx.Node],
               avoid: Optional[torch.fx.Node] = None) -> Set[torch.fx.Node]:
    """The nodes of ``within`` that ``start`` reaches forward, not passing through ``avoid``."""
    found, stack = set(), [start]
    while stack:
        for user in stack.pop().users:
            if user in within and user is not avoid and user not in found:
                found.add(user)
                stack.append(user)
    return found


def _call_name(node: torch.fx.Node) -> Any:
    return node.target if node.op == "call_method" else getattr(node.target, "__name__", node.target)


def _label(node: torch.fx.Node) -> str:
    return str(node.target if node.op == "call_module" else _call_name(node))


def _keeps_zero(node: torch.fx.Node, modules: Dict[str, nn.Module], zeros: Set[torch.fx.Node],
                masked: bool = False) -> bool:
    """Whether ``node`` maps a zero input (``zeros``) to zero of the same shape: an elementwise activation, a
    product with something else, or (``masked``: masking zeroes its shift) a BatchNorm."""
    if node.op == "call_module":
        return isinstance(modules[node.target], ELEMENTWISE_MODULES + (_NORMS if masked else ()))
    if node.op in ("call_function", "call_method"):
        if node.target in _MULS:
            return _shape(node) == _shape(next(n for n in node.all_input_nodes if n in zeros))
        return _call_name(node) in ELEMENTWISE_CALLS and bool(node.args) and node.args[0] in zeros
    return node.op == "get_attr"


def _block(add: torch.fx.Node, branch: torch.fx.Node, shortcut: torch.fx.Node, modules: Dict[str, nn.Module],
           calls: Dict[str, List[torch.fx.Node]], order: Dict[torch.fx.Node, int]):
    """The block ``shortcut + branch``, or how far it got (a stage) and why it is not one."""
    private, inputs = _private(branch, add, order)
    if len(inputs) != 1:
        return 0, f"its branch reads {len(inputs)} tensors from outside, not one"
    source = next(iter(inputs))
    if shortcut is source:
        kind = "identity"
    else:
        path, path_inputs = _private(shortcut, add, order)
        if path_inputs != {source} or path & private:
            return 1, "its shortcut is not computed from the branch's input alone"
        kind = "projection" if any(n.op == "call_module" and any(True for _ in modules[n.target].parameters())
                                   for n in path) else "identity"
    nodes = sorted(private, key=order.__getitem__)
    owned = [n for n in nodes if n.op == "call_module" and all(c in private for c in calls[n.target])]
    layers = [n for n in owned if isinstance(modules[n.target], LAYER_TYPES)]
    shared = [n.target for n in nodes if n.op == "call_module" and n not in owned
              and isinstance(modules[n.target], LAYER_TYPES)]
    if shared or not layers:
        return 2, f"its branch shares layers {shared} with other code" if shared else "its branch has no Conv/Linear"
    cut = next(n for n in owned if any(True for _ in modules[n.target].parameters()))
    after = _reachable(cut, private)
    if branch is not cut and branch not in after or branch in _reachable(source, private, avoid=cut):
        return 3, f"its branch does not pass through {cut.target} alone"
    zero = _zeros_for(next(iter(_tensor_inputs(cut)), None), branch)
    if len(cut.args) != 1 or zero is None or _shape(branch) != _shape(add):
        return 4, f"{cut.target} does not see a tensor that zeros of the block's output shape can follow"
    zeros = {cut} | after
    for node in sorted(after, key=order.__getitem__):
        exclusive = node in owned and len(_tensor_inputs(node)) == 1
        if not exclusive and not _keeps_zero(node, modules, zeros):
            return 5, f"{_label(node)} inside its branch does not keep zeros at zero"
    last = [n for n in after | {cut} if n in layers and not any(m in layers for m in _reachable(n, private))]
    tail = set().union(*(_reachable(n, private) for n in last))
    for node in tail:
        if not _keeps_zero(node, modules, zeros, masked=True):
            return 6, f"{_label(node)} after its last layer does not keep zeros at zero (masking would not zero it)"
    names = [n.target for n in owned]
    prefix = _common_prefix(names) or add.name
    return Block(prefix, kind, tuple(n.target for n in layers), cut.target,
                 tuple(n.target for n in owned if n in after), *zero, branch.name, shortcut.name)


def _zeros_for(cut_input: Optional[torch.fx.Node], branch: torch.fx.Node) -> Optional[Tuple[Optional[int], int]]:
    """``Zeros``' (channels, stride) that turn the cut's input shape into the branch's output shape, if any."""
    have, want = _shape(cut_input), _shape(branch)
    if have is None or want is None:
        return None
    if have == want:
        return None, 1
    if len(have) < 3 or len(have) != len(want) or have[0] != want[0] or want[2] == 0:
        return None
    stride = -(-have[2] // want[2])
    zeros = Zeros(want[1], stride)
    return (want[1], stride) if zeros.shape(have) == tuple(want) else None


def _common_prefix(names: Iterable[str]) -> str:
    parts = [name.split(".") for name in names]
    common = []
    for pieces in zip(*parts):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    return ".".join(common)


def find_blocks(graph_module: torch.fx.GraphModule, model: nn.Module,
                projection: bool = False) -> Tuple[List[Block], Dict[str, str]]:
    """The removable blocks of a traced model (``host.speedup.trace``), in graph order, and for every other add
    of two tensors the reason it is not one (keyed by the add's node name). Projection blocks count only when
    ``projection`` is set."""
    modules = dict(model.named_modules())
    order = {node: index for index, node in enumerate(graph_module.graph.nodes)}
    calls: Dict[str, List[torch.fx.Node]] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    blocks: List[Block] = []
    refused: Dict[str, str] = {}
    for add in graph_module.graph.nodes:
        if add.op not in ("call_function", "call_method") or add.target not in _ADDS:
            continue
        operands = [a for a in add.args[:2] if isinstance(a, torch.fx.Node) and "tensor_meta" in a.meta]
        if len(operands) != 2:
            continue
        found = [_block(add, branch, shortcut, modules, calls, order)
                 for branch, shortcut in (operands, operands[::-1])]
        block = next((b for b in found if isinstance(b, Block)), None)
        if block is not None and block.kind == "projection" and not projection:
            refused[add.name] = "it has a projection shortcut (pass projection=True to replace it by its shortcut)"
        elif block is not None:
            blocks.append(block)
        else:
            refused[add.name] = max(found)[1]  # the reason of the reading that got furthest
    return blocks, refused


def remove_blocks(model: nn.Module, blocks: Iterable[Block]) -> nn.Module:
    """Replace each block's branch in place: its cut by ``Zeros``, the modules after it by ``nn.Identity``."""
    for block in blocks:
        for name in block.modules:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, Zeros(block.channels, block.stride) if name == block.cut else nn.Identity())
    return model


def removed_blocks(blocks: Iterable[Block], masks: Mapping[str, Mapping[str, Any]]) -> List[Block]:
    """The blocks whose every layer has a weight mask of zeros: masked whole, so removal drops them."""
    def zero(name: str) -> bool:
        weight = masks.get(name, {}).get("weight")
        return weight is not None and not bool(weight.any())
    return [block for block in blocks if all(zero(name) for name in block.layers)]


def block_masks(model: nn.Module, blocks: Iterable[Block]) -> Dict[str, Dict[str, torch.Tensor]]:
    """NNI masks that remove ``blocks``: every parameter of their layers masked whole."""
    modules = dict(model.named_modules())
    return {name: {key: torch.zeros_like(value) for key, value in modules[name].named_parameters(recurse=False)}
            for block in blocks for name in block.layers}
