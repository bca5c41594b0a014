"""Calibration data for sensitivity: n training samples and their adversarial versions X', made once with the
model in eval mode by a torchattacks attack (PGD by default)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Tuple, Union

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["collect_samples", "default_eps", "make_attack", "adversarial_examples", "mean_loss"]

AttackSpec = Union[None, str, Callable[[nn.Module], Any], Any]


def collect_samples(calibration: Any, n_samples: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_samples`` (x, y) of a DataLoader / iterable of batches, or a seeded draw from an (x, y) pair."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
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
    return x.detach(), y.detach()


def default_eps(x: torch.Tensor) -> float:
    """The usual L-inf radius: 0.1 for grayscale (Fashion-MNIST), 8/255 for colour (CIFAR, SVHN)."""
    return 0.1 if x.shape[1] == 1 else 8 / 255


def make_attack(model: nn.Module, attack: AttackSpec = None, eps: float = 8 / 255, **kwargs) -> Any:
    """A torchattacks attack on ``model``: None -> PGD-10 (alpha = eps/4, random start), a torchattacks class
    or class name (``eps`` passed when it takes one, plus ``kwargs``), a factory ``model -> attack``, or a
    ready attack instance."""
    import torchattacks

    from .adversarial import _accepted, resolve_attack

    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if attack is None:
        return torchattacks.PGD(model, **{"eps": eps, "alpha": eps / 4, "steps": 10, "random_start": True, **kwargs})
    if isinstance(attack, torchattacks.attack.Attack):
        return attack
    if isinstance(attack, (str, type)):
        cls = resolve_attack(attack)
        try:
            return cls(model, **_accepted(cls, {"eps": eps}), **kwargs)
        except TypeError as err:
            raise ValueError(f"bad attack_kwargs {kwargs} for {cls.__name__}: {err}") from None
    if callable(attack):
        return attack(model)
    raise ValueError(f"attack must be None, a torchattacks class or name, a factory or an attack, got {attack!r}")


def adversarial_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Any, batch_size: int = 256,
                         seed: int = 0, progress: bool = True) -> torch.Tensor:
    """X' for the whole calibration set, in eval mode, reproducible for a seed (the global RNG is untouched)."""
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
                out.append(attack(x[start:start + batch_size], y[start:start + batch_size]).detach())
    except RuntimeError as err:
        raise RuntimeError(f"{type(attack).__name__} could not attack {type(model).__name__} ({err}); the loss must be "
                           f"differentiable with respect to the input (no numpy or detach() in forward)") from err
    finally:
        model.train(was_training)
    return torch.cat(out)


def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
              grad: bool = False) -> torch.Tensor:
    """Mean cross-entropy over (x, y) in batches; with ``grad`` the batches' gradients accumulate as one mean."""
    total = torch.zeros((), device=x.device)
    with torch.set_grad_enabled(grad):
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(xb), yb, reduction="sum") / len(x)
            if grad:
                loss.backward()
            total = total + loss.detach()
    return total
