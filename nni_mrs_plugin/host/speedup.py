"""Real structured removal on top of NNI: dependency grouping -> NNI pruner masks -> ``ModelSpeedup``.

Dependency grouping uses NNI's torch.fx helper (``nni.compression.speedup.auto_set_denpendency_group_ids``)
on the same ``concrete_trace`` graph that ``ModelSpeedup`` itself uses, so the groups are exactly the
channel couplings that removal must respect (residual adds, concats, depthwise convs). The TorchScript
helper in ``nni.compression.utils`` also works with this plugin installed, but it needs tensorboard and
``torch.jit.trace``, which PyTorch is phasing out.

``mask_like_removal`` gives the masked model the semantics of removal: a pruned output channel is zeroed
*after* its BatchNorm too. Masking conv weights alone leaves BatchNorm's beta alive in that channel, while
``ModelSpeedup`` deletes the channel outright.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Dict, List, Optional, Tuple, Type

import torch
from torch import nn

from .blocks import find_blocks, remove_blocks, removed_blocks
from .diagnose import explain
from .graph import new_users
from .hidden import ELEMENTWISE_CALLS, ELEMENTWISE_MODULES, linear_pairs, slice_linear_pairs
from .masks import mask_updaters, pruned_layers

__all__ = [
    "TraceError", "trace", "group_dependencies", "compute_masks", "mask_like_removal", "speedup_model",
    "remove_channels", "output_channel_keep", "recalibrate_batchnorm", "check_op_names",
]

Masks = Dict[str, Dict[str, torch.Tensor]]
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class TraceError(RuntimeError):
    """NNI's tracer cannot follow the model's forward pass."""


# ModelSpeedup forces its default logger to INFO and logs every node; it gets this one instead, quiet unless
# the user lowers its level (logging.getLogger("nni_mrs_plugin.host.speedup").setLevel(logging.INFO)).
_logger = logging.getLogger(__name__)
if _logger.level == logging.NOTSET:
    _logger.setLevel(logging.ERROR)
# ... and an error for each module it has no replacer for, nn.Identity among them: a removed block's branch is
# made of those, and they need no replacing
_logger.addFilter(lambda record: "replacing module with type: Identity," not in record.getMessage())


def _as_tuple(dummy_input: Any) -> Tuple[Any, ...]:
    return dummy_input if isinstance(dummy_input, tuple) else (dummy_input,)


def trace(model: nn.Module, dummy_input: Any) -> torch.fx.GraphModule:
    """``concrete_trace`` the model (as ModelSpeedup does) and attach tensor shapes with ShapeProp.

    In eval mode (the caller's mode is restored): a forward pass in train mode would fold the dummy input into
    BatchNorm's running statistics, and every later measurement would see a different model."""
    from nni.common.concrete_trace_utils import concrete_trace
    from torch.fx.passes.shape_prop import ShapeProp

    args = _as_tuple(dummy_input)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            graph_module = concrete_trace(model, args)
            ShapeProp(graph_module).propagate(*args)
    except Exception as err:  # the tracer raises anything from AssertionError to TypeError
        raise TraceError(explain(model, args, err)) from err
    finally:
        model.train(was_training)
    return graph_module


def check_op_names(model: nn.Module, config: Any, index: int) -> None:
    """One line for ``op_names`` that are not modules of ``model`` (NNI raises a bare KeyError deep inside)."""
    modules = dict(model.named_modules())
    names = config.get("op_names") or [] if isinstance(config, dict) else []
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ValueError(f"config_list[{index}]: op_names {unknown} are not layers of {type(model).__name__} "
                         f"(names come from model.named_modules(), e.g. {list(modules)[1:4]})")


def group_dependencies(model: nn.Module, config_list: List[Dict[str, Any]], dummy_input: Any,
                       graph_module: Optional[torch.fx.GraphModule] = None) -> List[Dict[str, Any]]:
    """One config per selected layer, with ``dependency_group_id`` on layers whose output channels are coupled."""
    from nni.compression.speedup import auto_set_denpendency_group_ids

    graph_module = graph_module if graph_module is not None else trace(model, dummy_input)
    return auto_set_denpendency_group_ids(graph_module, copy.deepcopy(config_list))


def compute_masks(model: nn.Module, config_list: List[Dict[str, Any]], pruner_cls: Optional[Type] = None,
                  **pruner_kwargs) -> Masks:
    """Run an NNI pruner (L1NormPruner by default) and return its masks; the model is left unwrapped."""
    if pruner_cls is None:
        from nni.compression.pruning import L1NormPruner as pruner_cls
    pruner = pruner_cls(model, config_list, **pruner_kwargs)
    try:
        _, masks = pruner.compress()
    finally:
        pruner.unwrap_model()
    return masks


def output_channel_keep(mask: torch.Tensor) -> torch.Tensor:
    """Boolean vector of the output channels (dim 0) a weight mask keeps."""
    return mask.reshape(mask.shape[0], -1).bool().any(dim=1)


# per-channel ops that keep a zeroed channel at zero: mask_like_removal follows a pruned channel through them to
# the BatchNorms that normalise it; units.py follows the same ops (and more) to decide what removal can follow
ZERO_KEEPING_MODULES = ELEMENTWISE_MODULES + (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
                                             nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
ZERO_KEEPING_CALLS = ELEMENTWISE_CALLS | {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"}


def _following_batchnorms(graph_module: torch.fx.GraphModule) -> Dict[str, List[Tuple[str, int]]]:
    """Layer -> every BatchNorm that normalises its output channels, with the offset of those channels there:
    the BatchNorm right after a conv (offset 0), and those after a channel ``cat`` (DenseNet), found through
    activations, pooling, BatchNorms and further concatenations. Removal deletes those BatchNorm channels too,
    where masking leaves each one adding a constant (its shift) that a later BatchNorm would pass on."""
    modules = dict(graph_module.named_modules())
    found: Dict[str, List[Tuple[str, int]]] = {}
    for start in graph_module.graph.nodes:
        if start.op != "call_module" or not isinstance(modules.get(start.target), (nn.Conv1d, nn.Conv2d, nn.Linear)):
            continue
        stack, seen = [(start, 0)], {start}
        while stack:
            node, offset = stack.pop()
            for user, module, name in new_users(node, seen, modules):
                if isinstance(module, _BATCHNORMS):  # and on: the zeroed channel meets later BatchNorms after a cat
                    found.setdefault(start.target, []).append((user.target, offset))
                    stack.append((user, offset))
                elif isinstance(module, ZERO_KEEPING_MODULES) or (module is None and name in ZERO_KEEPING_CALLS):
                    stack.append((user, offset))
                elif module is None and name in ("cat", "concat") and user.kwargs.get(
                        "dim", user.args[1] if len(user.args) > 1 else 0) in (1, -3):
                    parts = user.args[0]
                    before = sum(int(p.meta["tensor_meta"].shape[1]) for p in parts[:list(parts).index(node)])
                    stack.append((user, offset + before))
    return found


@torch.no_grad()
def mask_like_removal(model: nn.Module, masks: Masks, dummy_input: Any,
                      graph_module: Optional[torch.fx.GraphModule] = None) -> nn.Module:
    """Zero, in place, every pruned output channel as removal would: weight, bias and every BatchNorm that
    normalises it (right after the layer, or after a channel concatenation, as in DenseNet).

    The result computes what ``ModelSpeedup`` produces (up to float rounding), without changing shapes.
    """
    graph_module = graph_module if graph_module is not None else trace(model, dummy_input)
    batchnorm_after = _following_batchnorms(graph_module)
    modules = dict(model.named_modules())
    for name, layer_masks in masks.items():
        weight_mask = layer_masks.get("weight")
        if weight_mask is None:
            continue
        layer = modules[name]
        keep = output_channel_keep(weight_mask).to(layer.weight.device)
        layer.weight.mul_(weight_mask.to(layer.weight))
        if getattr(layer, "bias", None) is not None:
            layer.bias.mul_(keep.to(layer.bias))
        for bn_name, offset in batchnorm_after.get(name, []):
            bn = modules[bn_name]
            channels = slice(offset, offset + len(keep))
            bn.weight[channels] *= keep.to(bn.weight)
            bn.bias[channels] *= keep.to(bn.bias)
    return model


def _remove_masked_blocks(model: nn.Module, masks: Masks, dummy_input: Any) -> None:
    """Replace the branch of every residual block whose layers are masked whole (layer pruning) and drop their
    masks; a layer masked whole outside such a block is a one-line error (it would be left without channels)."""
    whole = {name for name, entry in masks.items() if entry.get("weight") is not None and not entry["weight"].any()}
    if not whole:
        return
    blocks = removed_blocks(find_blocks(trace(model, dummy_input), model, projection=True)[0], masks)
    remove_blocks(model, blocks)
    for name in (name for block in blocks for name in block.modules):
        masks.pop(name, None)
    stranded = sorted(whole - {name for block in blocks for name in block.layers})
    if stranded:
        raise ValueError(f"layers {stranded} are masked whole but are not the branch of a removable residual block: "
                         f"removal would leave them without channels")


def speedup_model(model: nn.Module, masks: Masks, dummy_input: Any) -> nn.Module:
    """Remove the masked channels for real (in place); returns the model.

    A residual block whose branch is masked whole (``LayerPruner``) loses the branch first (``host.blocks``).
    Hidden units between two Linear layers (a transformer's MLP) are sliced out directly (``hidden``); the rest
    goes to NNI's ModelSpeedup, which runs the model on the dummy input in eval mode, so the removed model keeps
    the BatchNorm statistics it was trained with (the caller's mode is restored)."""
    from nni.compression.speedup import ModelSpeedup

    if not masks:
        raise ValueError("masks is empty: nothing to remove (did the config_list select any layer?)")
    masks = copy.deepcopy(masks)  # ModelSpeedup edits the masks it is given (mask-conflict fixing)
    _remove_masked_blocks(model, masks, dummy_input)
    modules = dict(model.named_modules())
    linears = any(isinstance(modules.get(name), nn.Linear) for name in masks)  # a pair starts at a masked Linear
    pairs = linear_pairs(trace(model, dummy_input)) if linears else {}
    hidden = {name: output_channel_keep(masks.pop(name)["weight"]) for name in list(masks)
              if name in pairs and masks[name].get("weight") is not None}
    for producer, kept in hidden.items():
        for consumer in pairs[producer]:
            if masks.get(consumer, {}).get("weight") is not None:
                masks[consumer]["weight"] = masks[consumer]["weight"][:, kept.to(masks[consumer]["weight"].device)]
    slice_linear_pairs(model, {name: kept for name, kept in hidden.items() if not kept.all()}, pairs)
    if not pruned_layers(masks):
        return model  # nothing left for NNI: it would only re-infer masks, which fails on attention
    nni_log = logging.getLogger("nni.compression.speedup")  # its replacer logs each module at INFO
    saved_level = nni_log.level
    nni_log.setLevel(_logger.getEffectiveLevel())
    was_training = model.training
    model.eval()
    try:
        ModelSpeedup(model, _as_tuple(dummy_input), masks, logger=_logger,
                     customized_mask_updaters=mask_updaters()).speedup_model()
    except Exception as err:
        raise RuntimeError(f"ModelSpeedup failed on {type(model).__name__}: {type(err).__name__}: {err}") from err
    finally:
        nni_log.setLevel(saved_level)
        model.train(was_training)
    return model


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``x`` (in place), as "adaptive BN" (EagleEye, ECCV 2020).

    After channels are removed, the layers before a BatchNorm compute something else and its running statistics
    are stale: a heavily pruned model evaluated as is collapses towards chance. A cumulative average over
    ``x`` in train mode, without gradients, repairs that; weights are untouched and the caller's mode is kept."""
    norms = [m for m in model.modules() if isinstance(m, _BATCHNORMS) and m.track_running_stats]
    if not norms or len(x) == 0:
        return model
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    model.train()
    try:
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size])
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return model


def remove_channels(model: nn.Module, config_list: List[Dict[str, Any]], dummy_input: Any,
                    pruner_cls: Optional[Type] = None, **pruner_kwargs) -> Tuple[nn.Module, Masks]:
    """Group dependent layers, prune with an NNI pruner, and physically remove the channels.

    Returns the (smaller) model and the masks that were applied.
    """
    for index, config in enumerate(config_list):
        check_op_names(model, config, index)
    grouped = group_dependencies(model, config_list, dummy_input)
    if not grouped:
        raise ValueError(f"config_list {config_list} selects no layer of {type(model).__name__}")
    masks = compute_masks(model, grouped, pruner_cls, **pruner_kwargs)
    return speedup_model(model, masks, dummy_input), masks
