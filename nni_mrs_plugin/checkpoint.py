"""Save and rebuild pruned models without pickling code.

A sped-up model has the original class but narrower layers. Its checkpoint stores the model's registry name
and constructor arguments plus each layer's new shape (plain dicts), next to the state dict, so loading is
``torch.load(..., weights_only=True)``: no arbitrary code runs when a checkpoint is opened.

Every file is written atomically, and under ``stop_on_signals`` SIGTERM and SIGINT stop the program only between
writes: a checkpoint is either the old one or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import re
import secrets
import shutil
import signal
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterator, Mapping, Optional, Union

import torch
from torch import nn

from .models import Zeros, build_model

__all__ = ["architecture", "rebuild", "save_pruned", "load_pruned", "atomic_save", "atomic_write", "seal", "unseal",
           "DiskFullError", "Stopped", "stop_on_signals"]

_RESIZABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


def _shape(module: nn.Module) -> Dict[str, Any]:
    if isinstance(module, nn.Conv2d):
        return {"type": "Conv2d", "in": module.in_channels, "out": module.out_channels, "groups": module.groups}
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in": module.in_features, "out": module.out_features}
    return {"type": type(module).__name__, "out": module.num_features}


def _removed(module: nn.Module) -> Dict[str, Any]:
    if isinstance(module, Zeros):
        return {"type": "Zeros", "channels": module.channels, "stride": module.stride}
    return {"type": "Identity"}


def architecture(model: nn.Module, name: str, **model_kwargs: Any) -> Dict[str, Any]:
    """Everything needed to rebuild ``model``'s shapes from ``build_model(name, **model_kwargs)``: each resizable
    layer's shape, and the modules layer pruning replaced (``Zeros`` and ``nn.Identity``)."""
    layers = {n: _shape(m) if isinstance(m, _RESIZABLE) else _removed(m) for n, m in model.named_modules()
              if isinstance(m, _RESIZABLE + (Zeros, nn.Identity))}
    return {"model": name, "kwargs": dict(model_kwargs), "layers": layers}


def _resized(module: nn.Module, spec: Dict[str, Any]) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(spec["in"], spec["out"], module.kernel_size, module.stride, module.padding,
                         module.dilation, spec["groups"], module.bias is not None, module.padding_mode)
    if isinstance(module, nn.Linear):
        return nn.Linear(spec["in"], spec["out"], module.bias is not None)
    return type(module)(spec["out"], module.eps, module.momentum, module.affine, module.track_running_stats)


def rebuild(arch: Dict[str, Any]) -> nn.Module:
    """A freshly initialised model with the layer shapes recorded by ``architecture``."""
    model = build_model(arch["model"], **arch["kwargs"])
    modules = dict(model.named_modules())
    for name, spec in arch["layers"].items():
        removed = spec["type"] in ("Zeros", "Identity")
        if name not in modules or not removed and (not isinstance(modules[name], _RESIZABLE)
                                                   or _shape(modules[name])["type"] != spec["type"]):
            raise ValueError(f"architecture does not match {arch['model']}: no {spec['type']} named {name!r}")
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        replacement = (Zeros(spec["channels"], spec["stride"]) if spec["type"] == "Zeros" else nn.Identity()) \
            if removed else _resized(modules[name], spec)
        setattr(parent, child, replacement)
    return model


class DiskFullError(OSError):
    """A write that did not fit: names the folder, the bytes the file needed and the bytes that were free."""

    def __init__(self, path: Path, needed: int):
        free = shutil.disk_usage(path.parent).free
        super().__init__(errno.ENOSPC, f"no space left in {path.parent} for {path.name}: it needs {needed:,} bytes, "
                                       f"{free:,} are free", str(path))
        self.needed, self.free = needed, free


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT under ``stop_on_signals``; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.exit_code = signum, 128 + signum


_writes = 0  # atomic writes under way in this process
_pending: Optional[int] = None  # a signal that arrived during one
_owner: Optional[int] = None  # the PID that installed the handlers (a forked worker inherits them)


def _on_signal(signum: int, frame: Any) -> None:
    global _pending
    if os.getpid() != _owner:  # a DataLoader worker: die as it would have without us
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _writes:
        _pending = signum
    else:
        raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into ``Stopped`` in the main thread, held back while an atomic write is under way
    so that it finishes, rename included. Does nothing outside the main thread."""
    global _owner, _pending
    try:
        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread
        yield
        return
    _owner, _pending = os.getpid(), None
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _owner = None


@contextlib.contextmanager
def _one_write() -> Iterator[None]:
    global _writes, _pending
    _writes += 1
    try:
        yield
    finally:
        _writes -= 1
        if not _writes and _pending is not None:
            signum, _pending = _pending, None
            raise Stopped(signum)


def atomic_write(path: Union[str, Path], write: Callable[[BinaryIO], None]) -> Path:
    """Write through ``write(file)`` to a temporary file in the same folder, then rename: a crash never
    leaves half a file behind. A full disk is a ``DiskFullError`` naming the bytes needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()  # the whole content first: its size is what a full disk lacked
    write(buffer)
    data = buffer.getbuffer()
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    with _one_write():
        try:
            # os.open with 0o666 honours the umask, as open() would: mkstemp's 0600 made every report private
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(path, len(data)) from None
            raise
    return path


def atomic_json(path: Union[str, Path], data: Any) -> Path:
    """``data`` as indented JSON, atomically (see ``atomic_write``); numbers JSON lacks (numpy, tensors) as float."""
    return atomic_write(path, lambda f: f.write(json.dumps(data, indent=2, default=float).encode()))


def atomic_save(obj: Any, path: Union[str, Path]) -> Path:
    """``torch.save`` atomically (see ``atomic_write``)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"<{flat.dtype}{tuple(value.shape)}>".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        for key in sorted(value, key=repr):
            digest.update(f"{key!r}:".encode())
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(repr(value).encode())


def seal(payload: Dict[str, Any]) -> Dict[str, Any]:
    """``payload`` with a ``sha256`` of everything in it (tensor bytes included): ``unseal`` finds a flipped bit."""
    digest = hashlib.sha256()
    _feed(digest, payload)
    return {**payload, "sha256": digest.hexdigest()}


def unseal(loaded: Any, path: Union[str, Path]) -> Any:
    """``loaded`` without its ``sha256``, or a ValueError if the content no longer matches it (a file without one,
    written before seals existed, is taken as it is)."""
    if not isinstance(loaded, dict) or "sha256" not in loaded:
        return loaded
    payload = {k: v for k, v in loaded.items() if k != "sha256"}
    if seal(payload)["sha256"] != loaded["sha256"]:
        raise ValueError(f"{path} is damaged: its content no longer matches the checksum written with it (a "
                         f"flipped bit on disk, a truncated copy); restore it from a copy or delete it to redo it")
    return payload


def save_pruned(path: Union[str, Path], model: nn.Module, name: str, **model_kwargs: Any) -> Path:
    """Write ``{"architecture": ..., "state_dict": ...}`` atomically, after checking that ``load_pruned`` will be
    able to rebuild it (a checkpoint found unloadable later would lose the model)."""
    arch = architecture(model, name, **model_kwargs)
    state = model.state_dict()
    advice = "save_pruned is for build_model's models; save others with torch.save(model.state_dict(), path)"
    try:
        keys = set(rebuild(arch).state_dict())
    except (ValueError, TypeError) as err:
        raise ValueError(f"save_pruned: cannot rebuild {type(model).__name__} as {name!r} ({err}); {advice}") from None
    if keys != set(state):
        raise ValueError(f"save_pruned: build_model({name!r}) makes a model with other layers than this "
                         f"{type(model).__name__} (e.g. {sorted(keys ^ set(state))[:3]}); {advice}")
    return atomic_save(seal({"architecture": arch, "state_dict": state}), path)


def load_pruned(path: Union[str, Path], map_location: Any = "cpu") -> nn.Module:
    """Rebuild a model saved by ``save_pruned`` (``weights_only=True``: loading runs no pickled code)."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        model = rebuild(checkpoint["architecture"])
    except FileNotFoundError:
        raise ValueError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as err:  # unpickling, a zip error, a missing key: never torch's advice to unpickle more
        if isinstance(err, pickle.UnpicklingError):  # torch's message advises unpickling the file's code: do not echo it
            detail = "it holds pickled Python objects, e.g. a whole model from torch.save(model); only tensors are read"
        else:
            detail = re.sub(r"\x1b\[[0-9;]*m", "", str(err).splitlines()[0][:120]) if str(err) else "no detail"
        raise ValueError(f"{path} is not a model saved by nni-mrs' save_pruned ({type(err).__name__}: {detail})"
                         ) from None
    model.load_state_dict(unseal(checkpoint, path)["state_dict"])
    return model
