"""The host: NNI 3.0 made to work on current PyTorch (``compat``), pruners by name (``registry``), and real
channel removal with NNI's tracer, dependency groups and ``ModelSpeedup`` (``speedup``).

Importing this package loads only the standard library: the ``.pth`` start-up hook goes through it.
"""
from . import compat, registry  # registry adds its NNI extension to compat before compat.install()

__all__ = ["compat", "registry"]
