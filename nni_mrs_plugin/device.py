"""The device a user names (``"cpu"``, ``"cuda"``, ``"cuda:1"``), checked against this machine before any work.

torch accepts ``torch.device("cuda:7")`` on a machine with one GPU, or none, and fails later, deep inside the
first CUDA call ("invalid device ordinal", "Torch not compiled with CUDA enabled"); a run should stop at once
with one line that names the device and what this machine has.
"""
from __future__ import annotations

import torch

__all__ = ["parse_device", "check_device"]


def parse_device(device: torch.device | str) -> torch.device:
    """``device`` as a CPU or CUDA torch.device, whatever this machine has (a config is checked where it is
    written, the run happens elsewhere); a one-line ValueError for anything else."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return parsed


def check_device(device: torch.device | str) -> torch.device:
    """``device`` as a torch.device, or a one-line ValueError when this machine does not have it."""
    device = parse_device(device)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"device {str(device)!r} asked for, but this machine has no CUDA device; use 'cpu'")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {str(device)!r} asked for, but this machine has {count} CUDA device(s): "
                             f"use one of cuda:0 ... cuda:{count - 1}")
    return device
