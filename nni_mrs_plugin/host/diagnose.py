"""Why NNI's tracer failed, in one line a user can act on: the model's own line and the Python construct the
tracer choked on, read off the traceback; or, when the model fails on the dummy input even without the tracer, that
the dummy input does not fit the model (the tracer's error would point at the wrong culprit)."""
from __future__ import annotations

import linecache
from pathlib import Path
from typing import Any, Optional, Tuple

import torch
from torch import nn


def explain(model: nn.Module, args: Tuple[Any, ...], err: Exception) -> str:
    """The message of the ``TraceError`` for ``err``, raised while tracing ``model`` on ``args``."""
    inner = wrapped(model)
    if inner is not None:
        return (f"NNI cannot trace through {type(model).__name__}, a wrapper around the model: pass {inner} instead, "
                f"and wrap it again after ModelSpeedup has removed the channels")
    eager = eager_failure(model, args)
    if eager is not None:
        where, _ = failure_site(model, eager)
        return (f"{type(model).__name__}{where} fails on the dummy input {shapes(args)} even without NNI's tracer "
                f"({first_line(eager)}): pass a dummy_input shaped like one batch of the data the model takes, and "
                f"check that forward runs on it")
    where, construct = failure_site(model, err)
    return (f"NNI cannot trace {type(model).__name__}{where} ({first_line(err)}): {trace_advice(err, construct)}; "
            f"or prune a traceable submodule instead (pass it as the model, with a dummy input of its own)")


def wrapped(model: nn.Module) -> Optional[str]:
    """The expression for the module inside a wrapper the tracer cannot see through (``torch.compile``'s
    OptimizedModule, DataParallel, DistributedDataParallel), or None."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return "model.module"
    if type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):  # torch.compile
        return "model._orig_mod (the module torch.compile was given)"
    return None


def eager_failure(model: nn.Module, args: Tuple[Any, ...]) -> Optional[Exception]:
    """The error of a plain forward pass on ``args``, or None when it runs."""
    try:
        with torch.no_grad():
            model(*args)
    except Exception as err:  # whatever the model raises
        return err
    return None


def first_line(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}"


def shapes(args: Tuple[Any, ...]) -> str:
    described = [f"of shape {tuple(a.shape)}" if isinstance(a, torch.Tensor) else type(a).__name__ for a in args]
    return ", ".join(described)


# the tracer's proxy methods that a Python construct calls on a traced tensor
_CONSTRUCTS = {"__bool__": "a condition (if, while, and/or, assert) on a traced value",
               "__iter__": "iterating over or unpacking a tensor", "__len__": "len() of a tensor",
               "__index__": "a tensor used as a Python int", "__int__": "a tensor turned into a Python number",
               "__float__": "a tensor turned into a Python number", "__array__": "a tensor turned into numpy",
               "numpy": "a tensor turned into numpy", "item": "a tensor turned into a Python number (.item())"}


def failure_site(model: nn.Module, err: Exception) -> Tuple[str, str]:
    """Where in the model's own code the trace failed, as " at name (Class.forward, file:line: `code`)", and the
    construct there, read off the traceback: the innermost frame of a submodule's code outside torch and NNI,
    and the innermost tracer proxy method (``__bool__``, ``__iter__``...) the error passed through."""
    names = {id(module): name for name, module in model.named_modules()}
    where, construct, tb = "", "", err.__traceback__
    while tb is not None:
        frame, path = tb.tb_frame, Path(tb.tb_frame.f_code.co_filename)
        owner = frame.f_locals.get("self")
        if owner is not None and id(owner) in names and not library_code(path):
            code = linecache.getline(str(path), tb.tb_lineno).strip()
            function = "forward" if frame.f_code.co_name == "new_func" else frame.f_code.co_name  # NNI's rewrite
            where = (f" at {names[id(owner)] or 'its forward'} ({type(owner).__name__}.{function}, "
                     f"{path.name}:{tb.tb_lineno}: `{code}`)")
        if "concrete_trace_utils" in path.parts and frame.f_code.co_name in _CONSTRUCTS:
            construct = _CONSTRUCTS[frame.f_code.co_name]
        tb = tb.tb_next
    return where, construct


def library_code(path: Path) -> bool:
    """A file of torch's or NNI's own packages, by their install folders: a folder named ``torch`` elsewhere (a
    virtual environment in /opt/torch, say) holds the user's code and torchvision's models."""
    import nni

    return any(path.is_relative_to(Path(module.__file__).parent) for module in (torch, nni))


def trace_advice(err: Exception, construct: str = "") -> str:
    """What in forward() the tracer's error points at: it records one graph for every input."""
    text, tb = str(err), err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if (isinstance(err, (IndexError, KeyError, AssertionError, AttributeError)) and tb is not None
            and "concrete_trace_utils" in Path(tb.tb_frame.f_code.co_filename).parts):
        return (f"NNI's tracer failed in its own code on {construct or 'that line'}, which is not wrong in itself "
                f"(a tracer bug; nni_mrs_plugin.host.compat.applied_fixes() lists the repairs active here)")
    if construct.startswith("a condition") or "__bool__" in text or ("ConcreteProxy" in text and "bool" in text):
        return ("forward() branches on a tensor's value (an `if`/`while` on a tensor, or `.item()` in a condition), "
                "which one graph cannot hold: compute both branches and pick with torch.where")
    if "numpy" in construct or "__array" in text or "numpy" in text.lower():
        return "forward() turns a tensor into numpy: rewrite that part with torch ops"
    if construct:
        return f"the tracer cannot follow {construct} there: rewrite that line with torch ops"
    return "forward() does something the tracer cannot follow (Python I/O, a C extension): rewrite it with torch ops"
