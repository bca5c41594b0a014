"""Interval bound propagation (IBP; Gowal et al. 2018): sound lower and upper bounds of a model's logits over the
L∞ ball of radius ε around an input (clipped to the pixel range [0, 1]), so verified robustness can be reported
beside the empirical kind (Sehwag et al. 2019 and HYDRA report it).

The model is traced with ``torch.fx`` and run on intervals node by node: an affine layer (Conv, Linear, BatchNorm
in eval mode, a constant shift or positive scale such as ``Normalize``) maps centre and radius exactly (the radius
through |W|); a monotone layer (ReLU and its kin, max and average pooling, flatten, reshaping, indexing) maps each
end; a sum of intervals adds the ends; a channel concatenation concatenates them. Anything else (a product of two
intervals as in squeeze-excitation, a non-monotone activation such as SiLU) is a one-line error naming the node.
Bounds are exact for an affine model and sound for the others, up to float rounding.
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IntervalBounds", "interval_bounds"]

_AFFINE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_MONOTONE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.ELU, nn.Softplus,
                     nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                     nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                     nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)
_MONOTONE_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.leaky_relu, torch.sigmoid, torch.tanh, F.hardtanh, F.elu,
                       F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
                       F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, torch.flatten,
                       torch.reshape, torch.squeeze, torch.unsqueeze, torch.mean, torch.sum, F.dropout,
                       operator.getitem}
_MONOTONE_METHODS = {"relu", "sigmoid", "tanh", "view", "reshape", "flatten", "permute", "transpose", "contiguous",
                     "squeeze", "unsqueeze", "mean", "sum", "clone", "expand", "__getitem__"}
_SHAPE_METHODS = {"size", "dim", "numel"}


class _Interval:
    """[lower, upper], elementwise."""

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor):
        self.lower, self.upper = lower, upper

    @classmethod
    def from_centre(cls, centre: torch.Tensor, radius: torch.Tensor) -> "_Interval":
        return cls(centre - radius, centre + radius)

    def centre_radius(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return (self.upper + self.lower) / 2, (self.upper - self.lower) / 2


class IntervalBounds:
    """``IntervalBounds(model)(x, eps) -> (lower, upper)`` logit bounds over the ε-ball around ``x`` (pixels in
    [0, 1]); the model is traced once. ``normalization=(mean, std)``: the loader normalises, as in
    ``evaluate_robustness``; ``x`` is then normalised and the ball is taken in pixel units. ``training=True``
    (certified training) keeps gradients, and a training-mode BatchNorm normalises with the batch statistics of
    the interval's centre, taken as constants (as auto_LiRPA does); otherwise BatchNorm must be in eval mode."""

    def __init__(self, model: nn.Module, normalization: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
                 training: bool = False):
        from .attacks import PixelSpace

        self.training = training
        self.space = PixelSpace(normalization)
        try:
            self.graph = torch.fx.symbolic_trace(self.space.model(model))
        except Exception as err:  # data-dependent control flow and the like
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"interval_bounds: torch.fx cannot trace {type(model).__name__} ({first})") from None
        self.modules = dict(self.graph.named_modules())
        for name, module in self.modules.items():
            if name:
                _scales(module, name)

    def __call__(self, x: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        pixels = self.space.pixels(x)
        box = _Interval((pixels - eps).clamp(0, 1), (pixels + eps).clamp(0, 1))
        values: Dict[str, Any] = {}
        with torch.set_grad_enabled(self.training and torch.is_grad_enabled()):
            for node in self.graph.graph.nodes:
                if node.op == "placeholder":
                    values[node.name] = box
                elif node.op == "output":
                    out = _load(node.args[0], values)
                    if not isinstance(out, _Interval):
                        raise ValueError("interval_bounds: the model's output does not depend on its input")
                    return out.lower, out.upper
                else:
                    values[node.name] = self._run(node, values)
        raise ValueError("interval_bounds: the traced model has no output")

    def verified(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """Per sample: True when the true class's lower bound exceeds every other class's upper bound."""
        lower, upper = self(x, eps)
        others = upper.scatter(1, y.view(-1, 1), float("-inf"))
        return lower.gather(1, y.view(-1, 1)).squeeze(1) > others.max(1).values

    def _run(self, node: torch.fx.Node, values: Dict[str, Any]) -> Any:
        args, kwargs = _load(node.args, values), _load(node.kwargs, values)
        intervals = [a for a in _flat(args) + _flat(kwargs) if isinstance(a, _Interval)]
        if node.op == "get_attr":
            return _attr(self.graph, node.target)
        if not intervals:  # constants (shapes, buffers): computed as they are
            return _call(self.graph, self.modules, node, args, kwargs)
        if node.op == "call_module":
            module = self.modules[node.target]
            scales = _scales(module, node.target)  # hooks are checked when called too: they may come later
            if isinstance(module, _AFFINE + _BATCHNORM):
                return _scaled(_affine_module(module, args[0], node.target, self.training), scales, node.target)
            if isinstance(module, _MONOTONE_MODULES):
                if module.training and isinstance(module, nn.Dropout):
                    raise ValueError(f"interval_bounds: Dropout {node.target!r} is in training mode: call model.eval()")
                return _scaled(_each_end(lambda *a: module.forward(*a), args, kwargs, clone=True), scales, node.target)
            where = f"module {node.target!r} ({type(module).__name__})"
        elif node.op == "call_function":
            rule = _FUNCTION_RULES.get(node.target)
            if rule is not None:
                return rule(args, kwargs)
            if node.target in _MONOTONE_FUNCTIONS:
                return _each_end(node.target, args, {k: v for k, v in kwargs.items() if k != "inplace"}, clone=True)
            where = f"function {getattr(node.target, '__name__', node.target)} (node {node.name!r})"
        else:  # call_method
            if node.target in _SHAPE_METHODS:
                return getattr(args[0].lower, node.target)(*args[1:], **kwargs)
            if node.target in _MONOTONE_METHODS:
                return _each_end(lambda t, *a, **k: getattr(t, node.target)(*a, **k), args, kwargs)
            where = f"method .{node.target}() (node {node.name!r})"
        raise ValueError(f"interval_bounds: no interval rule for {where}; supported: Conv, Linear, BatchNorm (eval), "
                         f"monotone activations and pooling, flatten/reshape, sums, channel concatenation, constant "
                         f"shifts and scales")


def interval_bounds(model: nn.Module, x: torch.Tensor, eps: float,
                    normalization: Optional[Tuple[Sequence[float], Sequence[float]]] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper) logit bounds of ``model`` over the L∞ ball of radius ``eps`` around ``x``, clipped to [0, 1]
    (see ``IntervalBounds``). The model should be in eval mode: BatchNorm is bounded with its running statistics."""
    return IntervalBounds(model, normalization)(x, eps)


# --- rules --------------------------------------------------------------------------------------------------

def _affine_module(module: nn.Module, box: _Interval, name: str, training: bool = False) -> _Interval:
    centre, radius = box.centre_radius()
    if isinstance(module, _BATCHNORM):
        shape = (1, -1) + (1,) * (centre.dim() - 2)
        if module.training or module.running_var is None:
            if not training:
                raise ValueError(f"interval_bounds: BatchNorm {name!r} needs running statistics in eval mode: "
                                 f"call model.eval()")
            dims = [0, *range(2, centre.dim())]  # the centre's batch statistics, constants of the affine map
            mean, var = centre.mean(dims).detach(), centre.var(dims, unbiased=False).detach()
        else:
            mean, var = module.running_mean, module.running_var
        scale = torch.rsqrt(var + module.eps) * (module.weight if module.affine else 1.0)
        shift = (module.bias if module.affine else 0.0) - mean * scale
        return _Interval.from_centre(centre * scale.view(shape) + shift.view(shape), radius * scale.abs().view(shape))
    if isinstance(module, nn.Linear):
        return _Interval.from_centre(module.forward(centre), F.linear(radius, module.weight.abs()))
    if module.padding_mode != "zeros":
        raise ValueError(f"interval_bounds: {name!r} pads with {module.padding_mode!r}; only zero padding is bounded")
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[module.weight.dim() - 2]
    spread = conv(radius, module.weight.abs(), None, module.stride, module.padding, module.dilation, module.groups)
    return _Interval.from_centre(module.forward(centre), spread)


def _scales(module: nn.Module, name: str) -> list:
    """The module's output hooks as scales: a hook that multiplies the output by a non-negative factor says so
    with an ``interval_scale(output) -> factor`` attribute (HARP's gates do), and both ends are multiplied by it.
    Any other hook rewrites outputs where the radius cannot follow (NNI's masks are wrappers, not hooks)."""
    hooks = list(module._forward_hooks.values())
    if module._forward_pre_hooks or any(not callable(getattr(hook, "interval_scale", None)) for hook in hooks):
        raise ValueError(f"interval_bounds: module {name!r} has forward hooks that are not interval scales, which "
                         f"interval bounds cannot follow; bound the model without them")
    return [hook.interval_scale for hook in hooks]


def _scaled(box: _Interval, scales: list, name: str) -> _Interval:
    for scale in scales:
        factor = scale(box.lower)
        if bool((factor < 0).any()):
            raise ValueError(f"interval_bounds: the forward hook on {name!r} scales by a negative factor")
        box = _Interval(box.lower * factor, box.upper * factor)
    return box


def _add(args: tuple, kwargs: dict, sign: float = 1.0) -> _Interval:
    a, b = args[0], args[1]
    if kwargs.get("alpha", 1) != 1:
        raise ValueError("interval_bounds: add/sub with alpha is not bounded")
    lo_b, hi_b = (b.lower, b.upper) if isinstance(b, _Interval) else (b, b)
    lo_a, hi_a = (a.lower, a.upper) if isinstance(a, _Interval) else (a, a)
    return _Interval(lo_a + lo_b, hi_a + hi_b) if sign > 0 else _Interval(lo_a - hi_b, hi_a - lo_b)


def _scale(args: tuple, kwargs: dict, divide: bool = False) -> _Interval:
    a, b = args[0], args[1]
    if isinstance(a, _Interval) and isinstance(b, _Interval):
        raise ValueError("interval_bounds: no interval rule for a product of two input-dependent values "
                         "(e.g. squeeze-excitation)")
    if divide and isinstance(b, _Interval):
        raise ValueError("interval_bounds: no interval rule for dividing by an input-dependent value")
    box, factor = (a, b) if isinstance(a, _Interval) else (b, a)
    ends = (box.lower / factor, box.upper / factor) if divide else (box.lower * factor, box.upper * factor)
    return _Interval(torch.minimum(*ends), torch.maximum(*ends))


def _cat(args: tuple, kwargs: dict) -> _Interval:
    parts, rest = args[0], args[1:]
    lower = [p.lower if isinstance(p, _Interval) else p for p in parts]
    upper = [p.upper if isinstance(p, _Interval) else p for p in parts]
    return _Interval(torch.cat(lower, *rest, **kwargs), torch.cat(upper, *rest, **kwargs))


_FUNCTION_RULES: Dict[Any, Callable[[tuple, dict], Any]] = {
    operator.add: _add, torch.add: _add, operator.iadd: _add,
    operator.sub: lambda a, k: _add(a, k, -1.0), torch.sub: lambda a, k: _add(a, k, -1.0),
    operator.mul: _scale, torch.mul: _scale, operator.truediv: lambda a, k: _scale(a, k, True),
    torch.div: lambda a, k: _scale(a, k, True), torch.cat: _cat,
    getattr: lambda a, k: getattr(a[0].lower, a[1])}  # x.shape and the like: the same for both ends


# --- plumbing -----------------------------------------------------------------------------------------------

def _each_end(fn: Callable, args: tuple, kwargs: dict, clone: bool = False) -> _Interval:
    """A monotone non-decreasing map applied to each end (clones guard against in-place layers)."""
    def end(which: str) -> Any:
        pick = (lambda v: getattr(v, which).clone() if clone else getattr(v, which))
        return fn(*[pick(a) if isinstance(a, _Interval) else a for a in args],
                  **{k: pick(v) if isinstance(v, _Interval) else v for k, v in kwargs.items()})
    return _Interval(end("lower"), end("upper"))


def _load(value: Any, values: Dict[str, Any]) -> Any:
    return torch.fx.node.map_arg(value, lambda n: values[n.name])


def _flat(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return [item for v in value for item in _flat(v)]
    if isinstance(value, dict):
        return _flat(list(value.values()))
    return [value]


def _attr(graph: torch.fx.GraphModule, target: str) -> Any:
    value: Any = graph
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _call(graph: torch.fx.GraphModule, modules: Dict[str, nn.Module], node: torch.fx.Node, args: tuple,
          kwargs: dict) -> Any:
    if node.op == "call_module":
        return modules[node.target](*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    return getattr(args[0], node.target)(*args[1:], **kwargs)
