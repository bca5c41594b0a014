"""The old name of ``nni_mrs_plugin.host``, kept importable for one release (0.1 -> 0.2).

``import nni_mrs_plugin.nni.speedup`` gives the very module object ``nni_mrs_plugin.host.speedup`` (one registry,
one set of compat hooks), with one ``FutureWarning`` naming the new path. Loaded only when someone imports it.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from .. import host

_OLD, _NEW = __name__, host.__name__


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``nni_mrs_plugin.nni.X`` and loads it as the already-imported ``nni_mrs_plugin.host.X``."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(_OLD + "."):
            return None
        new = _NEW + fullname[len(_OLD):]
        if importlib.util.find_spec(new) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None  # a placeholder: ``exec_module`` puts the real module in its place

    def exec_module(self, module):
        sys.modules[module.__name__] = importlib.import_module(_NEW + module.__name__[len(_OLD):])


if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
    sys.meta_path.insert(0, _Alias())

warnings.warn(f"{_OLD} was renamed {_NEW}; the old name goes in 0.2", FutureWarning, stacklevel=2)


def __getattr__(name: str):
    return getattr(host, name)
