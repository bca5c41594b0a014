"""Configs and run folders from before ``pruning.options``: the flat pruning keys of the first configs.

``migrate`` moves each flat key to the option the old job passed it as, for the pruner the config names (one
``FutureWarning`` line that also lists the keys that had no effect), and ``fingerprint`` rebuilds the flat form a
run folder of that time hashed, so old run folders resume and ``options: {tau: 1}`` is the same run as ``tau: 1``.
Nothing else in the package reads these names. ``changed_settings`` names what differs from a folder that is
refused (a default changed since it was made, as ``pruning.round_to`` did).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ["FLAT", "migrate", "fingerprint", "changed_settings"]

# the flat keys with their defaults, as the first configs had them
FLAT: Dict[str, Any] = {"estimator": None, "criterion": "taylor", "tau": 0.0, "rule": "power", "recalibrate": False,
                        "rounds": 10, "rho": 0.1, "steps": 5, "samples": 512, "eps": None, "epochs": 1}
_ADDED = ("rule", "recalibrate", "rounds", "epochs")  # added later: not hashed at their default
_FLOATS = ("tau", "rho", "eps")  # the old config turned integers into floats for these
_RENAMED = {"samples": "n_samples"}  # flat key -> MRSPruner's keyword


def _resolved_estimator(flat: Mapping[str, Any]) -> Optional[str]:
    from ..mrs.allocator import default_estimator

    try:
        return flat["estimator"] or default_estimator(flat["rule"])
    except (ValueError, KeyError, TypeError):
        return flat["estimator"]


def _option(pruner: str, key: str, flat: Mapping[str, Any]) -> Optional[str]:
    """The keyword the old job passed flat ``key`` as to ``pruner``, or None where it had no effect."""
    from ..mrs.sensitivity import ESTIMATORS

    if pruner == "harp":
        return key if key == "epochs" else None
    if pruner != "mrs":
        return None
    estimator = ESTIMATORS.get(_resolved_estimator(flat) or "")
    takes = {"estimator", "criterion", "rule", "eps", "samples"}
    takes |= {"tau"} if flat["rule"] == "power" else {"rounds"} if flat["rule"] == "joint" else set()
    takes |= set(getattr(estimator, "options", ()))
    return _RENAMED.get(key, key) if key in takes else None


def migrate(pruning: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, str]]:
    """(the section with its flat keys moved into ``options``, the raw flat values, {option: the key the user
    wrote}). Only values that differ from the old default move; the old job read the rest as defaults too.
    A key given both ways is a ValueError naming it."""
    raw = {key: pruning[key] for key in FLAT if key in pruning}
    if not raw:
        return dict(pruning), {}, {}
    section = {key: value for key, value in pruning.items() if key not in FLAT}
    options = dict(section.get("options") or {})
    flat = {**FLAT, **raw}
    pruner = str(section.get("pruner", "mrs"))
    moved, ignored, origins = [], [], {}
    for key, value in raw.items():
        option = _option(pruner, key, flat)
        if option is None:
            ignored.append(f"pruning.{key}")
        elif value != FLAT[key]:
            if option in options:
                raise ValueError(f"pruning.{key}: also given as pruning.options.{option}; keep one")
            options[option], origins[option] = value, f"pruning.{key}"
            moved.append(f"pruning.{key} -> pruning.options.{option}")
    section["options"] = options
    notes = ([f"moved {', '.join(moved)}"] if moved else []) + (
        [f"{', '.join(ignored)} had no effect with pruner '{pruner}'"] if ignored else [])
    message = "; ".join(notes) or "they hold their defaults"
    warnings.warn(f"flat pruning keys are deprecated, use pruning.options: {message}", FutureWarning, stacklevel=3)
    return section, raw, origins


def fingerprint(section: Mapping[str, Any], raw: Mapping[str, Any]) -> Dict[str, Any]:
    """The pruning section as the first configs hashed it: old defaults, then the raw flat values the config was
    written with, then the options the old keys map to; options with no flat key stay under ``options``."""
    flat = {**FLAT, **raw}
    options = dict(section.get("options") or {})
    pruner = section["pruner"]
    for key in FLAT:
        option = _RENAMED.get(key, key)
        if option in options and (pruner == "mrs" and key != "epochs" or pruner == "harp" and key == "epochs"):
            flat[key] = options.pop(option)
    for key in _FLOATS:
        if isinstance(flat[key], int) and not isinstance(flat[key], bool):
            flat[key] = float(flat[key])
    flat["estimator"] = _resolved_estimator(flat)  # null resumes folders that named the rule's own
    out = {**{key: value for key, value in section.items() if key != "options"}, **flat}
    for key in _ADDED:
        if out[key] == FLAT[key]:
            del out[key]
    if options:
        out["options"] = options
    return out


def changed_settings(folder: Path, config: Any, skip: Tuple[str, ...] = ("progress", "output", "export")) -> str:
    """' (section.key: old -> new, ...)': the settings of ``config`` that the run folder's config.yaml holds
    otherwise ('' when none is found): why a folder is refused, e.g. a default changed since it was made."""
    import yaml

    try:
        old = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return ""
    diffs = [f"{section}.{key}: {old[section][key]!r} -> {value!r}" for section, values in config.to_dict().items()
             if section not in skip and isinstance(values, dict) and isinstance(old, dict)
             and isinstance(old.get(section), dict) for key, value in values.items()
             if key in old[section] and old[section][key] != value]
    return f" ({', '.join(diffs[:3])}{', ...' if len(diffs) > 3 else ''})" if diffs else ""
