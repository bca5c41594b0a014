"""One writer per run folder: an exclusive ``flock`` on ``FOLDER/.lock``, which names its holder.

The kernel drops the lock when its holder exits, however it exits (kill -9 included), so a lock is never left
held by a dead process; the file keeps the last holder's PID and host, and a run that finds it filled but free
says that it takes over. On a filesystem without ``flock`` the run goes on unlocked, with a warning.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Union

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["FolderInUseError", "FolderLock"]


class FolderInUseError(RuntimeError):
    """Another process holds the folder's lock."""


def _describe(holder: Dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {since}: {holder.get('command', '?')})"


class FolderLock:
    """``with FolderLock(folder):`` holds ``folder``'s lock or raises ``FolderInUseError`` naming the holder."""

    def __init__(self, folder: Union[str, Path]):
        self.path = Path(folder) / ".lock"
        self._fd: Optional[int] = None

    def _read(self) -> Dict[str, Any]:
        os.lseek(self._fd, 0, os.SEEK_SET)
        try:
            return json.loads(os.read(self._fd, 65536).decode() or "{}")
        except (ValueError, UnicodeDecodeError):
            return {"pid": "?", "command": "an unreadable lock file"}

    def __enter__(self) -> "FolderLock":
        if fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read()
            os.close(self._fd)
            self._fd = None
            raise FolderInUseError(f"{self.path.parent} is in use by {_describe(holder)}; wait for it to finish or "
                                   f"stop it, or use another output folder") from None
        except OSError as err:  # NFS without locking, some FUSE filesystems
            os.close(self._fd)
            self._fd = None
            warnings.warn(f"{self.path.parent}: cannot lock the folder ({err.strerror}); nothing stops a second run "
                          f"from writing into it")
            return self
        previous = self._read()
        if previous:
            print(f"nni-mrs: {self.path.parent}: taking over the lock of {_describe(previous)}, which is no longer "
                  f"running", file=sys.stderr)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                  "command": " ".join(["nni-mrs", *sys.argv[1:]]) if sys.argv[0].endswith("nni-mrs") else
                  " ".join(sys.argv)}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(holder).encode(), 0)
        os.fsync(self._fd)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # released in order: nobody to take over from
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
