"""Make NNI 3.0's tracer-based tools (``ModelSpeedup``, fx dependency grouping) work on current PyTorch.

NNI 3.0 (2023-09) is unmaintained; newer PyTorch releases broke its ``concrete_trace``. Each fix below is
applied in memory (NNI's installed files are never edited), only when the installed versions need it, and at
most once. Fixes are installed as post-import hooks, so they take effect whether NNI was imported before or
after this plugin, and, through the ``nni_mrs_plugin.pth`` file the package installs, in unchanged NNI
scripts that never import the plugin.

Set ``NNI_MRS_PLUGIN_SKIP_FIXES`` to a comma-separated list of fix names (or ``all``) to disable fixes,
e.g. to reproduce an upstream failure.
"""
from __future__ import annotations

import importlib.abc
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Dict, List, Optional, Sequence

SKIP_ENV = "NNI_MRS_PLUGIN_SKIP_FIXES"
_TRACER = "nni.common.concrete_trace_utils.concrete_tracer"
_MASK_CONFLICT = "nni.compression.speedup.mask_conflict"
_PROXY = "nni.common.concrete_trace_utils.concrete_proxy"


@dataclass(frozen=True)
class Fix:
    """One in-memory repair of an NNI module: ``needed`` decides from the installed versions, ``apply`` repairs."""

    name: str
    module: str
    upstream: str
    summary: str
    needed: Callable[[ModuleType], bool]
    apply: Callable[[ModuleType], None]


from .fixes import (_accept_is_impure_arguments, _crashing_leaf_functions, _drop_crashing_leaf_functions,
                    _has_debug_print, _is_impure_takes_arguments, _silence_module_print, _subscriptable_wrapped_classes,
                    _tolerate_type_params, _wrapped_classes_not_subscriptable, _wraps_of_type_fails,
                    _instruction_index_is_not_offset, _offset_indexed_instructions)

FIXES: Dict[str, Fix] = {
    f.name: f
    for f in (
        Fix("leaf-function-module-none", _TRACER, "microsoft/nni#5768, #5738, #5766",
            "concrete_trace crashes with \"'NoneType' object has no attribute 'startswith'\": drop the builtin "
            "leaf functions whose __module__ is None (tensor-subclass constructors, never model ops)",
            lambda m: bool(_crashing_leaf_functions(m)), _drop_crashing_leaf_functions),
        Fix("node-is-impure-signature", _TRACER, "torch.fx Node.is_impure(impure_random), torch>=2.6",
            "eliminate_dead_code fails with 'Node.is_impure() takes 1 positional argument but 2 were given': "
            "NNI's replacement accepts and ignores the new argument",
            _is_impure_takes_arguments, _accept_is_impure_arguments),
        Fix("mask-conflict-debug-print", _MASK_CONFLICT, "debug print in nni/compression/speedup/mask_conflict.py",
            "ModelSpeedup prints '0 Filter' to stdout: silence that module's print",
            _has_debug_print, _silence_module_print),
        Fix("wraps-type-params", _TRACER, "python/cpython: __type_params__ in functools.WRAPPER_ASSIGNMENTS, 3.12",
            "concrete_trace fails on Python 3.12+ with '__type_params__ must be set to a tuple' "
            "(functools.wraps(type)): the tracer's wraps skips that attribute when it is not a tuple",
            _wraps_of_type_fails, _tolerate_type_params),
        Fix("wrapped-class-subscript", _TRACER, "PEP 585 generics (list[int]) in torch.nn.functional, e.g. max_pool2d",
            "concrete_trace fails with \"'clz_wrapper_clz' object is not subscriptable\" on F.max_pool2d(x, 2): "
            "the tracer's wrappers of builtin classes forward [] to the real class",
            _wrapped_classes_not_subscriptable, _subscriptable_wrapped_classes),
        Fix("bytecode-offsets", _PROXY, "CPython 3.11 inline caches in bytecode (PEP 659)",
            "concrete_trace fails with 'IndexError: list index out of range' in ConcreteProxy.__bool__ on Python "
            "3.11+ (torchvision GoogLeNet, EfficientNet, ViT): the proxy finds the executing instruction by "
            "offset, and knows 3.11's conditional jumps",
            _instruction_index_is_not_offset, _offset_indexed_instructions),
    )
}

# NNI's speedup utils call the deprecated torch.utils._pytree._register_pytree_node and re-register torch.fx's
# immutable collections; both warn on every import with torch>=2.2. Filtered by exact message only.
_WARNING_FILTERS = (
    (FutureWarning, r"`torch\.utils\._pytree\._register_pytree_node` is deprecated"),
    (UserWarning, r"<class 'torch\.fx\.immutable_collections\.immutable_(dict|list)'> is already registered"),
)

_lock = threading.RLock()
_applied: List[str] = []


def skipped_fixes() -> set:
    value = os.environ.get(SKIP_ENV, "").strip()
    if value == "all":
        return set(FIXES) | {"pytree-warnings"}
    return {v.strip() for v in value.split(",") if v.strip()}


# --- additions (not fixes): other modules of this package register them, so compat imports nothing above it --

EXTENSIONS: Dict[str, Callable[[ModuleType], None]] = {}


def add_extension(module: str, extend: Callable[[ModuleType], None]) -> None:
    """Run ``extend(module)`` once when the NNI module ``module`` is imported (now, if it already is).

    ``nni.registry`` uses it to expose the plugin's pruners in ``nni.compression.pruning``."""
    with _lock:
        EXTENSIONS[module] = extend
        for finder in sys.meta_path:
            if isinstance(finder, _PostImportFinder):
                finder.names = frozenset(finder.names | {module})
        if module in sys.modules:
            _apply_fixes_for(sys.modules[module])


def _hooked_modules() -> set:
    return {f.module for f in FIXES.values()} | set(EXTENSIONS)


def _apply_fixes_for(module: ModuleType) -> None:
    skip = skipped_fixes()
    with _lock:
        extend = EXTENSIONS.get(module.__name__)
        if extend is not None and not getattr(module, "_nni_mrs_plugin_extended", False):
            extend(module)
            module._nni_mrs_plugin_extended = True
        for fix in FIXES.values():
            if fix.module != module.__name__ or fix.name in skip:
                continue
            flag = "_nni_mrs_plugin_fixed_" + fix.name.replace("-", "_")
            if getattr(module, flag, False):
                continue
            if fix.needed(module):
                fix.apply(module)
                _applied.append(fix.name)
            setattr(module, flag, True)


class _CallbackLoader(importlib.abc.Loader):
    """Delegates to the real loader, then repairs the freshly executed module."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _apply_fixes_for(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds NNI's modules with the other finders and wraps their loaders with ``_CallbackLoader``."""

    def __init__(self, names: Sequence[str]):
        self.names = frozenset(names)

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.names:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _CallbackLoader(spec.loader)
                return spec
        return None


def _install_warning_filters() -> None:
    for category, message in _WARNING_FILTERS:
        warnings.filterwarnings("ignore", message=message, category=category)


def install() -> None:
    """Install the fixes: now for NNI modules already imported, at import time for the others. Idempotent."""
    skip = skipped_fixes()
    with _lock:
        if "pytree-warnings" not in skip:
            _install_warning_filters()
        if not any(isinstance(f, _PostImportFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _PostImportFinder(_hooked_modules()))
        for name in _hooked_modules():
            module = sys.modules.get(name)
            if module is not None:
                _apply_fixes_for(module)


def applied_fixes() -> List[str]:
    """Names of the fixes applied in this process so far (those that were needed)."""
    return list(_applied)


def describe(name: Optional[str] = None) -> str:
    fixes = [FIXES[name]] if name else list(FIXES.values())
    return "\n".join(f"{f.name} ({f.upstream}): {f.summary}" for f in fixes)
