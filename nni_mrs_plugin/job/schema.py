"""Typed config sections from YAML: each section is a dataclass whose type hints are the schema. A wrong type, an
unknown key ("did you mean ..."), or a value the configured object refuses is one ``ConfigError`` line naming the
key; ``job/config.py`` holds the sections themselves.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

__all__ = ["ConfigError", "require", "constructor_checks", "build_section", "apply_overrides"]


class ConfigError(ValueError):
    """A config value or key is wrong; the message names it, on one line whatever the key or value holds."""

    def __init__(self, message: str):
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


def require(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}, got {value!r}")


def constructor_checks(key: str, section: Any, build: Callable[[], Any], field_name: Optional[str] = None,
                       keys: Optional[Mapping[str, str]] = None) -> None:
    """Run the checks of the object a section configures (``build()``), so the rules live in one place; its
    ValueError becomes a ConfigError naming ``field_name``, else the first key the message names: a field of the
    section, or a word of ``keys`` ({word: the full key to name})."""
    try:
        build()
    except ValueError as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if keys is None:
            keys = {f.name: f"{key}.{f.name}" for f in dataclasses.fields(section)}
        mentioned = f"{key}.{field_name}" if field_name else next(
            (keys[word] for word in re.findall(r"[A-Za-z_]+", message) if word in keys), key)
        raise ConfigError(f"{mentioned}: {message}") from None


def type_ok(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return any(type_ok(value, arg) for arg in args)
    if origin in (list, List):
        return isinstance(value, list) and all(type_ok(v, args[0]) for v in value)
    if origin in (dict, Dict):
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin in (list, List):
        return f"a list of {type_name(args[0])}"
    if origin in (dict, Dict):
        return "a mapping of option names to values"
    return {float: "a number", int: "an integer", str: "a string", bool: "true/false"}.get(hint, str(hint))


def build_section(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: must be a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            spelled = {**{name: name for name in names}, **getattr(cls, "MOVED", {})}
            close = difflib.get_close_matches(str(key), list(spelled), n=1)
            hint = (f"; did you mean '{prefix}{spelled[close[0]]}'?" if close
                    else f"; known keys: {', '.join(names)}")
            raise ConfigError(f"unknown key {where!r}{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = build_section(hint, value if value is not None else {}, f"{where}.")
            continue
        if not type_ok(value, hint):
            raise ConfigError(f"{where}: must be {type_name(hint)}, got {value!r}")
        values[key] = float(value) if hint in (float, Optional[float]) and isinstance(value, int) else value
    instance = cls(**values)
    if hasattr(instance, "check"):
        instance.check(prefix.rstrip("."))
    return instance


def apply_overrides(data: Dict[str, Any], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """Set dotted keys (``{"pruning.tau": 0.5}``) in a raw config dict; the result is validated by ``Config``."""
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = str(dotted).split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node[leaf] = value
    return data
