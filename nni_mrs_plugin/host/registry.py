"""Pruners by name, for config files: 'mrs', 'l1', 'l2', 'fpgm', 'taylor', ... -> NNI pruner classes, each with a
small spec that tells the job how to build it, so the job builds every pruner the same way.

NNI 3.0 has no registry of its own. Other packages add names through the ``nni_mrs_plugin.pruners``
entry-point group (``name = "package.module:PrunerClass"``); ``register_pruner`` adds one at run time.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Dict, List, Union

from . import compat

__all__ = ["ENTRY_POINT_GROUP", "PrunerSpec", "get_pruner", "pruner_spec", "register_pruner", "unregister_pruner",
           "available_pruners"]

ENTRY_POINT_GROUP = "nni_mrs_plugin.pruners"


@dataclass(frozen=True)
class PrunerSpec:
    """How to build a pruner at a global budget.

    Whether it allocates itself is its class: a ``BudgetPruner`` takes the global target as ``sparse_ratio`` and
    ``dummy_input``/``budget``/``r_max`` keywords, and says itself what it takes from a job's context
    (``context_options``); any other NNI pruner gets uniform per-unit ratios. A config's ``pruning.options`` go
    to the constructor as they are.
    ``needs_evaluator``: it trains inside ``compress()`` (Taylor, Slim, AGP, ...), so it gets a ``TorchEvaluator``.
    ``takes_seed``: it draws random numbers and takes a ``seed`` keyword.
    """

    pruner: Union[str, type]  # the class, or its "module:Class" path
    needs_evaluator: bool = False
    takes_seed: bool = False


_NNI = "nni.compression.pruning:"
_BUILTIN: Dict[str, PrunerSpec] = {
    "mrs": PrunerSpec("nni_mrs_plugin.mrs.pruner:MRSPruner", takes_seed=True),
    "l1": PrunerSpec(_NNI + "L1NormPruner"),
    "l2": PrunerSpec(_NNI + "L2NormPruner"),
    "fpgm": PrunerSpec(_NNI + "FPGMPruner"),
    "level": PrunerSpec(_NNI + "LevelPruner"),
    "taylor": PrunerSpec(_NNI + "TaylorPruner", needs_evaluator=True),
    "slim": PrunerSpec(_NNI + "SlimPruner", needs_evaluator=True),
    "linear": PrunerSpec(_NNI + "LinearPruner", needs_evaluator=True),
    "agp": PrunerSpec(_NNI + "AGPPruner", needs_evaluator=True),
    "movement": PrunerSpec(_NNI + "MovementPruner", needs_evaluator=True),
    "random": PrunerSpec("nni_mrs_plugin.budget.baselines:RandomPruner", takes_seed=True),
    "l1-global": PrunerSpec("nni_mrs_plugin.budget.baselines:GlobalL1NormPruner"),
    "harp": PrunerSpec("nni_mrs_plugin.harp.pruner:HARPPruner", takes_seed=True),
    "layer": PrunerSpec("nni_mrs_plugin.mrs.layers:LayerPruner", takes_seed=True),
}
_registered: Dict[str, PrunerSpec] = {}


def _entry_points() -> Dict[str, PrunerSpec]:
    found = metadata.entry_points()
    points = found.select(group=ENTRY_POINT_GROUP) if hasattr(found, "select") else found.get(ENTRY_POINT_GROUP, [])
    return {point.name: PrunerSpec(point.value) for point in points}


def _known() -> Dict[str, PrunerSpec]:
    return {**_BUILTIN, **_entry_points(), **_registered}


def available_pruners() -> List[str]:
    return sorted(_known())


def register_pruner(name: str, pruner: Union[str, type], overwrite: bool = False, *, needs_evaluator: bool = False,
                    takes_seed: bool = False) -> None:
    """Add ``name`` -> a pruner class (or its "module:Class" path), with how the job should build it."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"pruner name must be a non-empty string, got {name!r}")
    if name in _known() and not overwrite:
        raise ValueError(f"pruner name {name!r} is taken; pass overwrite=True to replace it")
    _registered[name] = PrunerSpec(pruner, needs_evaluator, takes_seed)


def unregister_pruner(name: str) -> None:
    """Remove a name added by ``register_pruner`` (built-in and entry-point names stay)."""
    if name not in _registered:
        raise ValueError(f"pruner {name!r} was not added by register_pruner")
    del _registered[name]


def pruner_spec(name: str) -> PrunerSpec:
    """How the pruner registered under ``name`` is built."""
    known = _known()
    if name not in known:
        raise ValueError(f"unknown pruner {name!r}; available: {', '.join(sorted(known))}")
    return known[name]


def get_pruner(name: str) -> type:
    """The pruner class registered under ``name``."""
    entry = pruner_spec(name).pruner
    if not isinstance(entry, str):
        return entry
    module, _, attr = entry.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception as err:  # a plugin's module may fail at import in any way: one line, its first
        detail = str(err).strip().splitlines()[0] if str(err).strip() else "no detail"
        raise ValueError(f"pruner {name!r} is registered as {entry!r} but cannot be loaded ({type(err).__name__}: "
                         f"{detail})") from None


# --- ``from nni.compression.pruning import MRSPruner`` ------------------------------------------------------------

_EXPOSED = {"MRSPruner": "mrs", "HARPPruner": "harp", "LayerPruner": "layer"}  # attribute of nni.compression.pruning -> registry name


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
