"""What each NNI 3.0 fix in ``compat.FIXES`` does: for each, a check whether the installed versions need it and
the in-memory repair (standard library only at import; torch is imported inside the checks that need it)."""
from __future__ import annotations

import inspect
from types import ModuleType
from typing import List

# --- fix 1: leaf functions whose __module__ is None (microsoft/nni#5768, #5738, #5766) -------------------

def _crashing_leaf_functions(tracer: ModuleType) -> List[object]:
    """Entries of ConcreteTracer's default leaf functions that make ``ConcreteTracer.trace`` read
    ``func.__module__.startswith`` on ``None`` (builtins such as ``TensorBase._make_subclass`` in torch>=2.2)."""
    from types import MethodDescriptorType, MethodWrapperType

    bad = []
    for func in tracer.ConcreteTracer.default_autowrap_leaf_function:
        qualname = getattr(func, "__qualname__", "")
        if qualname.startswith(("_TensorBase", "_VariableFunctionsClass")):
            continue  # NNI handles these branches without __module__
        if isinstance(func, (MethodDescriptorType, MethodWrapperType)):
            continue
        if getattr(func, "__name__", None) == "apply" and isinstance(getattr(func, "__self__", None), type):
            continue  # autograd.Function.apply branch
        if getattr(func, "__module__", "") is None:
            bad.append(func)
    return bad


def _drop_crashing_leaf_functions(tracer: ModuleType) -> None:
    table = tracer.ConcreteTracer.default_autowrap_leaf_function
    for func in _crashing_leaf_functions(tracer):
        del table[func]


# --- fix 2: Node.is_impure(impure_random) ------------------------------------------------------------------

def _is_impure_takes_arguments(tracer: ModuleType) -> bool:
    from torch.fx import Node

    original = getattr(tracer, "_orig_node_is_impure", Node.is_impure)
    return len(inspect.signature(original).parameters) > 1


def _accept_is_impure_arguments(tracer: ModuleType) -> None:
    legacy = tracer.node_is_impure_wrapper

    def node_is_impure_wrapper(node, *args, **kwargs):  # torch>=2.6 passes impure_random; NNI's rule ignores it
        return legacy(node)

    node_is_impure_wrapper.__wrapped__ = legacy  # type: ignore[attr-defined]
    tracer.node_is_impure_wrapper = node_is_impure_wrapper


# --- fix 3: a debug print left in NNI's mask-conflict resolution ------------------------------------------

def _has_debug_print(module: ModuleType) -> bool:
    try:
        return "print(prune_axis, prune_type)" in inspect.getsource(module)
    except (OSError, TypeError):
        return False


def _silence_module_print(module: ModuleType) -> None:
    module.print = lambda *args, **kwargs: None  # shadows the builtin for this module only


# --- fix 4: functools.wraps(type) on Python 3.12+ ----------------------------------------------------------

def _wraps_of_type_fails(tracer: ModuleType) -> bool:
    """Python 3.12 added ``__type_params__`` to ``functools.WRAPPER_ASSIGNMENTS``; ``type.__type_params__`` is
    a descriptor, not a tuple, so ``functools.wraps(type)`` on the tracer's ``type`` wrapper raises TypeError."""
    module = getattr(tracer, "functools", None)
    if module is None:
        return False
    try:
        module.wraps(type)(lambda instance: instance)
    except TypeError:
        return True
    return False


def tolerant_wraps(wrapped, assigned=None, updated=None):
    """``functools.wraps`` that skips ``__type_params__`` when the wrapped object has no tuple there."""
    import functools

    assigned = functools.WRAPPER_ASSIGNMENTS if assigned is None else assigned
    updated = functools.WRAPPER_UPDATES if updated is None else updated
    if not isinstance(getattr(wrapped, "__type_params__", ()), tuple):
        assigned = tuple(a for a in assigned if a != "__type_params__")
    return functools.wraps(wrapped, assigned=assigned, updated=updated)


def _tolerate_type_params(tracer: ModuleType) -> None:
    import functools

    shim = ModuleType("functools")
    shim.__dict__.update(functools.__dict__)
    shim.wraps = tolerant_wraps
    tracer.functools = shim  # this module's name only; the real functools is untouched


# --- fix 5: builtin classes the tracer wraps are not subscriptable (list[int]) --------------------------------

_CLASS_FACTORIES = ("_create_wrapped_leaf_class", "_create_wrapped_leaf_iterable_class")


def _wrapped_classes_not_subscriptable(tracer: ModuleType) -> bool:
    """While tracing, NNI replaces ``list``, ``dict``, ``tuple``... by wrapper objects; ``list[int]`` on one raises
    "'clz_wrapper_clz' object is not subscriptable". torch's ``F.max_pool2d(x, 2)`` (stride None) runs
    ``torch.jit.annotate(list[int], [])``, so NNI's own LeNet quick start cannot be traced."""
    factory = getattr(tracer, _CLASS_FACTORIES[0], None)
    if factory is None:
        return False
    try:
        factory(None, list)[int]  # the tracer is only read when the wrapper is called
    except TypeError:
        return True
    return False


def _subscriptable_wrapped_classes(tracer: ModuleType) -> None:
    def subscriptable(factory):
        def create(owner, clz):
            wrapper = factory(owner, clz)
            if hasattr(clz, "__class_getitem__") or isinstance(clz, type) and hasattr(type(clz), "__getitem__"):
                type(wrapper).__getitem__ = lambda self, item: clz[item]  # list[int] -> the real generic alias
            return wrapper
        return create

    for name in _CLASS_FACTORIES:
        setattr(tracer, name, subscriptable(getattr(tracer, name)))


# --- fix 6: the executing instruction on Python 3.11+ ------------------------------------------------------

def _instruction_index_is_not_offset(proxy: ModuleType) -> bool:
    """ConcreteProxy finds the instruction being executed as ``dis.get_instructions(code)[f_lasti // 2]``. From
    Python 3.11 bytecode holds inline CACHE entries that ``get_instructions`` leaves out, so that index lands on a
    later instruction or past the end: ``IndexError`` in ``__bool__`` for torchvision's GoogLeNet, EfficientNet
    and ViT, or a branch condition traced as a proxy."""
    def probe(x):
        return x.y < 1 if x else None

    return any(ins.offset != 2 * i for i, ins in enumerate(proxy.dis.get_instructions(probe)))


def _offset_indexed_instructions(proxy: ModuleType) -> None:
    import dis

    def get_instructions(code, *args, **kwargs):
        """Index k holds the first instruction at offset >= 2k: NNI's ``[f_lasti // 2]`` and ``[cur + 1]`` then
        name the executing instruction and the one after it, whatever CACHE entries lie between."""
        real = list(dis.get_instructions(code, *args, **kwargs))
        padded, j = [], 0
        for k in range(real[-1].offset // 2 + 1):
            while real[j].offset < 2 * k:
                j += 1
            padded.append(real[j])
        return padded

    shim = ModuleType("dis")
    shim.__dict__.update(dis.__dict__)
    shim.get_instructions = get_instructions
    proxy.dis = shim  # this module's name only; the real dis is untouched
    # 3.11 renamed the conditional jumps (POP_JUMP_FORWARD_IF_FALSE, ...), which NNI's list does not know
    jumps = {op for name, op in dis.opmap.items() if "JUMP_IF" in name or name.startswith("POP_JUMP")}
    proxy.ConcreteProxy.jump_opcodes = tuple(sorted(set(proxy.ConcreteProxy.jump_opcodes) | jumps))
