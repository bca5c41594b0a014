"""Calibration data for sensitivity: n training samples and their adversarial versions X', made once with the
model in eval mode by a torchattacks attack (``attacks.build_attack``: PGD by default)."""
from __future__ import annotations

from typing import Any, Iterable, Optional, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from ..attacks import PixelSpace
from ..evaluate import check_labels

__all__ = ["check_n_samples", "collect_samples", "adversarial_examples"]


def check_n_samples(n_samples: Any) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")


def collect_samples(calibration: Any, n_samples: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_samples`` (x, y) of a DataLoader / iterable of batches, or a seeded draw from an (x, y) pair."""
    check_n_samples(n_samples)
    if calibration is None:
        raise ValueError("no calibration data: pass calibration=DataLoader or (x, y), or an evaluator")
    if isinstance(calibration, (tuple, list)) and len(calibration) == 2 and all(
            isinstance(t, torch.Tensor) for t in calibration):
        x, y = calibration
        if len(x) != len(y):
            raise ValueError(f"calibration x and y differ in length: {len(x)} vs {len(y)}")
        if len(x) > n_samples:
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n_samples]
            x, y = x[order.to(x.device)], y[order.to(y.device)]
    else:
        if not isinstance(calibration, Iterable):
            raise ValueError(f"calibration must be a DataLoader, an iterable of (x, y) batches or an (x, y) pair, "
                             f"got {type(calibration).__name__}")
        xs, ys, count = [], [], 0
        for batch in calibration:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError(f"calibration batches must be (x, y) pairs, got {type(batch).__name__}")
            xs.append(batch[0])
            ys.append(batch[1])
            count += len(batch[0])
            if count >= n_samples:
                break
        if not xs:
            raise ValueError("calibration data is empty: the DataLoader yielded no batch")
        x, y = torch.cat(xs)[:n_samples], torch.cat(ys)[:n_samples]
    if len(x) == 0:
        raise ValueError("calibration data is empty: 0 samples")
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        shape = f" of shape {tuple(y.shape)} (one label per sample)" if y.dim() != 1 else ""
        raise ValueError(f"calibration labels must be class indices (a 1-D integer tensor), got {y.dtype}{shape}")
    return x.detach(), y.detach().long()


def adversarial_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Any, batch_size: int = 256,
                         seed: int = 0, progress: bool = True, space: Optional[PixelSpace] = None) -> torch.Tensor:
    """X' for the whole calibration set, in eval mode, reproducible for a seed (the global RNG is untouched).
    With ``space`` (a normalising loader) the attack runs on pixels and X' is normalised like x."""
    space = space or PixelSpace(None)
    check_labels(model, x, y, "calibration")
    was_training = model.training
    model.eval()
    device = x.device
    devices = [device] if device.type == "cuda" else []
    out = []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in tqdm(range(0, len(x), batch_size), desc="calibration attack", disable=not progress,
                              leave=False):
                out.append(space.attack(attack, x[start:start + batch_size], y[start:start + batch_size]).detach())
    except RuntimeError as err:
        raise RuntimeError(f"{type(attack).__name__} could not attack {type(model).__name__} ({err}); the loss must be "
                           f"differentiable with respect to the input (no numpy or detach() in forward)") from err
    finally:
        model.train(was_training)
    return torch.cat(out)
