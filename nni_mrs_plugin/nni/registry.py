"""Pruners by name, for config files: 'mrs', 'l1', 'l2', 'fpgm', 'taylor', ... -> NNI pruner classes.

NNI 3.0 has no registry of its own. Other packages add names through the ``nni_mrs_plugin.pruners``
entry-point group (``name = "package.module:PrunerClass"``); ``register_pruner`` adds one at run time.
"""
from __future__ import annotations

import importlib
from importlib import metadata
from types import ModuleType
from typing import Dict, List, Union

from . import compat

__all__ = ["ENTRY_POINT_GROUP", "get_pruner", "register_pruner", "available_pruners"]

ENTRY_POINT_GROUP = "nni_mrs_plugin.pruners"

_BUILTIN: Dict[str, str] = {
    "mrs": "nni_mrs_plugin.mrs.pruner:MRSPruner",
    "l1": "nni.compression.pruning:L1NormPruner",
    "l2": "nni.compression.pruning:L2NormPruner",
    "fpgm": "nni.compression.pruning:FPGMPruner",
    "level": "nni.compression.pruning:LevelPruner",
    "taylor": "nni.compression.pruning:TaylorPruner",
    "slim": "nni.compression.pruning:SlimPruner",
    "linear": "nni.compression.pruning:LinearPruner",
    "agp": "nni.compression.pruning:AGPPruner",
    "movement": "nni.compression.pruning:MovementPruner",
    "random": "nni_mrs_plugin.mrs.baselines:RandomPruner",
    "l1-global": "nni_mrs_plugin.mrs.baselines:GlobalL1NormPruner",
}
_registered: Dict[str, Union[str, type]] = {}


def _entry_points() -> Dict[str, metadata.EntryPoint]:
    found = metadata.entry_points()
    points = found.select(group=ENTRY_POINT_GROUP) if hasattr(found, "select") else found.get(ENTRY_POINT_GROUP, [])
    return {point.name: point for point in points}


def _known() -> Dict[str, object]:
    return {**_BUILTIN, **_entry_points(), **_registered}


def available_pruners() -> List[str]:
    return sorted(_known())


def register_pruner(name: str, pruner: Union[str, type], overwrite: bool = False) -> None:
    """Add ``name`` -> a pruner class (or its "module:Class" path)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"pruner name must be a non-empty string, got {name!r}")
    if name in _known() and not overwrite:
        raise ValueError(f"pruner name {name!r} is taken; pass overwrite=True to replace it")
    _registered[name] = pruner


def _load(path: str) -> type:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def get_pruner(name: str) -> type:
    """The pruner class registered under ``name``."""
    known = _known()
    if name not in known:
        raise ValueError(f"unknown pruner {name!r}; available: {', '.join(sorted(known))}")
    entry = known[name]
    try:
        if isinstance(entry, metadata.EntryPoint):
            return entry.load()
        return _load(entry) if isinstance(entry, str) else entry
    except (ImportError, AttributeError) as err:
        raise ValueError(f"pruner {name!r} is registered as {entry!r} but cannot be loaded: {err}") from err


# --- ``from nni.compression.pruning import MRSPruner`` ------------------------------------------------------------

_EXPOSED = {"MRSPruner": "mrs"}  # attribute of nni.compression.pruning -> registry name


def _expose_pruners(module: ModuleType) -> None:
    """The plugin's pruners as attributes of NNI's pruning module, loaded on first use (a module ``__getattr__``)."""
    previous = module.__dict__.get("__getattr__")

    def __getattr__(name: str):
        if name in _EXPOSED:
            value = get_pruner(_EXPOSED[name])
            setattr(module, name, value)
            return value
        if previous is not None:
            return previous(name)
        raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")

    module.__getattr__ = __getattr__


compat.add_extension("nni.compression.pruning", _expose_pruners)
