"""Hidden units between two Linear layers (a transformer's MLP), removed by slicing the two weights directly.

NNI's ``ModelSpeedup`` infers every tensor's mask by running the whole model on random batches. On a ViT that
goes wrong far from the pruned layers: the class token, a parameter expanded over the batch, is constant across
the batch and so taken for a pruned tensor, ``nn.MultiheadAttention`` has no replacer, and the residual
stream's LayerNorms are rebuilt with ``normalized_shape=[0]``. A hidden unit that goes from one Linear to the
next through per-element ops only needs none of that inference: its removed channels are rows of the first
weight and columns of the second, exactly.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from .graph import new_users

__all__ = ["ELEMENTWISE_MODULES", "ELEMENTWISE_CALLS", "linear_pairs", "slice_linear_pairs"]

# per-element maps that keep a zeroed channel at zero, whatever the tensor's layout
ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Tanh, nn.ELU,
                       nn.Hardtanh, nn.Dropout, nn.Identity)
ELEMENTWISE_CALLS = {"relu", "relu_", "relu6", "gelu", "silu", "hardswish", "tanh", "elu", "leaky_relu", "hardtanh",
                     "hardtanh_", "dropout", "contiguous", "clone"}


def _calls(graph_module: torch.fx.GraphModule) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def linear_pairs(graph_module: torch.fx.GraphModule) -> Dict[str, List[str]]:
    """Linear layer -> the Linear layers that read its whole output through per-element ops, for each Linear
    whose output goes nowhere else (no add, no reshape, not the model's output). Every layer involved is called
    once, so slicing its weight changes no other call."""
    modules = dict(graph_module.named_modules())
    calls = _calls(graph_module)
    pairs: Dict[str, List[str]] = {}
    for start in graph_module.graph.nodes:
        if start.op != "call_module" or type(modules.get(start.target)) is not nn.Linear or calls[start.target] != 1:
            continue
        consumers, stack, seen, followable = [], [start], {start}, True
        while stack and followable:
            node = stack.pop()
            for user, module, name in new_users(node, seen, modules):
                if (type(module) is nn.Linear and calls[user.target] == 1 and user.args[:1] == (node,)
                        and not user.kwargs):
                    consumers.append(user.target)
                elif (isinstance(module, ELEMENTWISE_MODULES) or module is None and user.op != "output"
                      and name in ELEMENTWISE_CALLS and user.args[:1] == (node,)):
                    stack.append(user)
                else:
                    followable = False
                    break
        if followable and consumers:
            pairs[start.target] = consumers
    return pairs


def _replace(model: nn.Module, name: str, layer: nn.Linear) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)


def _sliced(layer: nn.Linear, rows: torch.Tensor, cols: torch.Tensor) -> nn.Linear:
    new = nn.Linear(int(cols.sum()), int(rows.sum()), bias=layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)
    new.weight.data.copy_(layer.weight.data[rows][:, cols])
    new.weight.requires_grad_(layer.weight.requires_grad)
    if layer.bias is not None:
        new.bias.data.copy_(layer.bias.data[rows])
        new.bias.requires_grad_(layer.bias.requires_grad)
    new.train(layer.training)
    return new


@torch.no_grad()
def slice_linear_pairs(model: nn.Module, keep: Dict[str, torch.Tensor], pairs: Dict[str, List[str]]) -> None:
    """Remove, in place, the hidden units ``keep[producer]`` marks False: rows of the producer, columns of each
    of its consumers (``pairs`` from ``linear_pairs``)."""
    for producer, kept in keep.items():
        layer = model.get_submodule(producer)  # read afresh: a producer may be another pair's consumer
        kept = kept.to(layer.weight.device).bool()
        _replace(model, producer, _sliced(layer, kept, torch.ones(layer.in_features, dtype=torch.bool,
                                                                  device=kept.device)))
        for consumer in pairs[producer]:
            layer = model.get_submodule(consumer)
            _replace(model, consumer, _sliced(layer, torch.ones(layer.out_features, dtype=torch.bool,
                                                                device=kept.device), kept))
