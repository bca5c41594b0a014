"""Predict the FLOPs, parameters and channels of the model ``ModelSpeedup`` will produce, for any per-unit
channel counts, without running it.

Every tensor's channel count (dim 1) is written as a linear form over the units' kept channels, propagated
through the traced graph: a unit's layers output its kept channels, BatchNorm/activations/pooling pass them
on, ``flatten`` multiplies by the spatial size, ``cat`` adds, and an add of differently-pruned inputs keeps
every channel (removal needs all inputs zero). A layer's cost is then its dense cost scaled by
(kept inputs / inputs) x (kept outputs / outputs), so pruning one layer's outputs also shrinks the next
layer's inputs. Dense per-layer FLOPs come from ``torch.utils.flop_counter``; whatever the layers do not
explain (functional convs, other parametrised modules) is a constant.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..evaluate import count_flops, count_params
from .units import PRUNABLE_TYPES, Unit

__all__ = ["BUDGETS", "CostModel"]

BUDGETS = ("flops", "params", "channels")
Form = Dict[Optional[str], float]  # unit name -> coefficient of its kept channels; None -> constant
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _const(value: float) -> Form:
    return {None: float(value)}


def _scale(form: Form, factor: float) -> Form:
    return {key: coef * factor for key, coef in form.items()}


def _add(forms: Sequence[Form]) -> Form:
    total: Form = {}
    for form in forms:
        for key, coef in form.items():
            total[key] = total.get(key, 0.0) + coef
    return total


def _value(form: Form, kept: Mapping[str, float]) -> float:
    return sum(coef * (1.0 if key is None else kept[key]) for key, coef in form.items())


def _shape(node: torch.fx.Node) -> Optional[torch.Size]:
    meta = node.meta.get("tensor_meta")
    return getattr(meta, "shape", None)


@dataclass
class _Term:
    """One layer's cost: dense value x (inputs / dense inputs)^a x (outputs / dense outputs)^b."""

    flops: float
    params: float
    in_form: Form
    out_form: Form
    in_dense: float
    out_dense: float
    uses_inputs: bool  # False for depthwise convs and BatchNorm: cost follows the outputs only
    counts_channels: bool


class CostModel:
    """``cost(kept, budget)``: the budget of the sped-up model when unit ``u`` keeps ``kept[u]`` channels."""

    def __init__(self, model: nn.Module, graph_module: torch.fx.GraphModule, units: Sequence[Unit],
                 dummy_input: Any):
        self.units = {unit.name: unit for unit in units}
        self._unit_of = {layer: unit.name for unit in units for layer in unit.layers}
        self._terms: List[_Term] = []
        self._forms: Dict[torch.fx.Node, Form] = {}
        self._build(graph_module)
        self.dense = {"flops": float(count_flops(model, dummy_input)), "params": float(count_params(model))}
        full = {name: unit.channels for name, unit in self.units.items()}
        self._constant = {budget: self.dense[budget] - self._modelled(full, budget) for budget in ("flops", "params")}
        self._constant["channels"] = 0.0
        self.dense["channels"] = self._modelled(full, "channels")

    # -- graph walk ---------------------------------------------------------------------------------------
    def _form(self, node: Any) -> Optional[Form]:
        return self._forms.get(node) if isinstance(node, torch.fx.Node) else None

    def _build(self, graph_module: torch.fx.GraphModule) -> None:
        modules = dict(graph_module.named_modules())
        for node in graph_module.graph.nodes:
            shape = _shape(node)
            if shape is None or len(shape) < 2:
                continue
            channels = shape[1]
            module = modules.get(node.target) if node.op == "call_module" else None
            inputs = [n for n in node.all_input_nodes if n in self._forms]
            if isinstance(module, PRUNABLE_TYPES):
                self._forms[node] = self._layer(node, module, inputs[0] if inputs else None)
            elif isinstance(module, _BATCHNORMS):
                form = self._forms[inputs[0]] if inputs else _const(channels)
                self._forms[node] = form
                params = sum(p.numel() for p in module.parameters(recurse=False))
                self._terms.append(_Term(0.0, float(params), form, form, channels, channels, False, False))
            elif node.op == "placeholder" or not inputs:
                self._forms[node] = _const(channels)
            else:
                self._forms[node] = self._propagate(node, inputs, channels)

    def _layer(self, node: torch.fx.Node, module: nn.Module, source: Optional[torch.fx.Node]) -> Form:
        in_dense = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        out_dense = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        in_form = self._forms.get(source) if source is not None else None
        if in_form is None or set(in_form) == {None}:  # no unit reaches it: the inputs stay (and a (B, N, C)
            in_form = _const(in_dense)                   # tensor's dim 1, N, is no channel count)
        groups = getattr(module, "groups", 1)
        depthwise = groups > 1 and groups == in_dense == out_dense
        if node.target in self._unit_of:
            out_form: Form = {self._unit_of[node.target]: 1.0}
        elif depthwise:
            out_form = in_form
        else:
            out_form = _const(out_dense)
        self._terms.append(_Term(self._dense_flops(module, source), float(module.weight.numel()), in_form, out_form,
                                 in_dense, out_dense, not depthwise, True))
        if getattr(module, "bias", None) is not None:  # one bias per output channel
            self._terms.append(_Term(0.0, float(module.bias.numel()), out_form, out_form, out_dense, out_dense,
                                     False, False))
        return out_form

    @staticmethod
    @torch.no_grad()
    def _dense_flops(module: nn.Module, source: Optional[torch.fx.Node]) -> float:
        shape = _shape(source) if source is not None else None
        if shape is None:
            return 0.0
        param = next(module.parameters())
        was_training = module.training
        module.eval()
        try:
            with FlopCounterMode(display=False) as counter:
                module(torch.zeros(shape, dtype=param.dtype, device=param.device))
        finally:
            module.train(was_training)
        return float(counter.get_total_flops())

    def _propagate(self, node: torch.fx.Node, inputs: List[torch.fx.Node], channels: int) -> Form:
        target = getattr(node.target, "__name__", node.target)
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if target in ("cat", "concat") and dim in (1, -3):
            return _add([self._forms[n] for n in inputs])
        sizes = {n: _shape(n) for n in inputs}
        if len(inputs) == 1:
            (source,) = inputs
            in_shape = sizes[source]
            if in_shape[1] == channels:
                return self._forms[source]
            if len(in_shape) > 2 and channels == math.prod(in_shape[1:]):  # flatten / view / reshape
                return _scale(self._forms[source], math.prod(in_shape[2:]))
            return _const(channels)
        same = [self._forms[n] for n in inputs if sizes[n][1] == channels]
        if same and all(form == same[0] for form in same):
            return same[0]
        return _const(channels)  # e.g. an add of a pruned and an unpruned branch keeps every channel

    # -- evaluation ---------------------------------------------------------------------------------------
    def _modelled(self, kept: Mapping[str, float], budget: str) -> float:
        total = 0.0
        for term in self._terms:
            if budget == "channels":
                total += _value(term.out_form, kept) if term.counts_channels else 0.0
                continue
            dense = term.flops if budget == "flops" else term.params
            if dense == 0.0:
                continue
            factor = _value(term.out_form, kept) / term.out_dense
            if term.uses_inputs:
                factor *= _value(term.in_form, kept) / term.in_dense
            total += dense * factor
        return total

    def cost(self, kept: Mapping[str, float], budget: str = "flops") -> float:
        """The budget of the sped-up model; ``kept`` maps every unit name to its kept output channels."""
        if budget not in BUDGETS:
            raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
        return self._constant[budget] + self._modelled(kept, budget)

    def removed_fraction(self, kept: Mapping[str, float], budget: str = "flops") -> float:
        return 1.0 - self.cost(kept, budget) / self.dense[budget]

    def unit_share(self, budget: str = "flops") -> Dict[str, float]:
        """Fraction of the dense budget that each unit's layers (and the layers they feed) account for."""
        full = {name: unit.channels for name, unit in self.units.items()}
        shares = {}
        for name, unit in self.units.items():
            less = dict(full, **{name: 0.0})
            shares[name] = (self.cost(full, budget) - self.cost(less, budget)) / self.dense[budget]
        return shares
