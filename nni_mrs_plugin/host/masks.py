"""A bound on NNI's mask inference: only tensors that a pruned channel can reach may lose positions.

NNI's ``ModelSpeedup`` infers every tensor's pruned positions by running the graph on random batches: a position
constant across the batch is taken as pruned, then a position whose gradient is zero. Some positions are
constant or gradient-free by construction, not by pruning: a softmax over a single key (a MobileViT block on a
2x2 feature map attends over one patch), or the class token a ViT expands over the batch. NNI prunes those and
everything after them, down to ``EmptyLayerError`` or LayerNorms of width 0.

A pruned channel leaves its layer and travels through per-channel ops until a Conv/Linear reads it (a depthwise
conv passes it on). Nodes on those paths, and the layers reading them, keep NNI's inference; every other node
keeps all its positions here, which is what removal does to it. A layer reading them loses exactly the inputs its
producers lose: NNI also drops an input position whose gradient happens to sum to zero, which a Linear after a
flatten then no longer reads while the convolution before still computes it, and removal breaks the shapes.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Set

import torch
from torch import nn

from .graph import new_users

__all__ = ["channel_paths", "pruned_layers", "mask_updaters"]


def _absorbs(module: Any) -> bool:
    """A Conv/Linear whose every output mixes all input channels: a pruned input channel ends there."""
    return isinstance(module, nn.Linear) or isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups == 1


def channel_paths(graph_module: torch.fx.GraphModule, pruned: Set[str]) -> Set[torch.fx.Node]:
    """The nodes a pruned output channel of a layer in ``pruned`` reaches, up to and including the layers that
    read it."""
    modules = dict(graph_module.named_modules())
    stack = [n for n in graph_module.graph.nodes if n.op == "call_module" and n.target in pruned]
    reached = set(stack)
    while stack:
        for user, module, _ in new_users(stack.pop(), reached, modules):
            if not _absorbs(module):
                stack.append(user)
    return reached


def pruned_layers(masks: Dict[str, Dict[str, torch.Tensor]]) -> Set[str]:
    """The layers whose masks remove something."""
    return {name for name, layer in masks.items()
            if any(mask is not None and not mask.bool().all() for mask in layer.values())}


def mask_updaters() -> list:
    """NNI ``MaskUpdater``s for ``ModelSpeedup(customized_mask_updaters=...)``: one claims every node no pruned
    channel reaches and leaves its masks whole; one makes each layer reading pruned channels keep every input
    position its producers keep (NNI is imported here, not when this module is)."""
    from nni.compression.speedup.mask_updater import DefaultMaskUpdater, LeafModuleMaskUpdater
    from nni.compression.speedup.utils import tree_map_zip

    def whole(model_speedup, node) -> None:
        info = model_speedup.node_infos[node]
        info.output_masks = tree_map_zip(lambda t: torch.ones_like(t) if isinstance(t, torch.Tensor) else None,
                                         info.output_origin)

    class KeepWhole(LeafModuleMaskUpdater):
        def __init__(self):
            self.reached: Optional[Set[torch.fx.Node]] = None  # one updater per ModelSpeedup

        def detect(self, model_speedup, node) -> bool:
            if self.reached is None:  # the masks after NNI's conflict fixing, which runs first
                self.reached = channel_paths(model_speedup.graph_module, pruned_layers(model_speedup.masks))
            if node in self.reached:
                return False
            if node.op == "call_module":
                super().detect(model_speedup, node)  # the replacer reads the module and its parameter masks
            return True

        def direct_update_preprocess(self, model_speedup, node) -> None:  # the random output the next nodes read
            DefaultMaskUpdater.direct_update_preprocess(self, model_speedup, node)

        def direct_update_process(self, model_speedup, node) -> None:
            whole(model_speedup, node)

        def indirect_update_preprocess(self, model_speedup, node) -> None:
            DefaultMaskUpdater.indirect_update_preprocess(self, model_speedup, node)

        def indirect_update_process(self, model_speedup, node) -> None:  # and no gradient goes back from here
            whole(model_speedup, node)

    class FollowInputs(LeafModuleMaskUpdater):
        def detect(self, model_speedup, node) -> bool:  # after KeepWhole: the layers on a channel path
            return node.op == "call_module" and _absorbs(model_speedup.fetch_attr(node.target)) and \
                super().detect(model_speedup, node)

        def indirect_update_process(self, model_speedup, node) -> None:
            super().indirect_update_process(model_speedup, node)
            source = node.args[0] if node.args else None
            info = model_speedup.node_infos[source] if isinstance(source, torch.fx.Node) else None
            grad, mask = (info.output_grad, info.output_masks) if info is not None else (None, None)
            if isinstance(grad, torch.Tensor) and isinstance(mask, torch.Tensor) and grad.shape[1:] == mask.shape[1:]:
                # NNI drops an input position whose gradient sums to exactly zero (this layer's weight column
                # summing to 0.0 in fp32 over the kept rows); a position the producers keep stays kept
                info.output_grad = grad.abs() + mask

    return [KeepWhole(), FollowInputs()]
