"""Every attack the plugin runs is built here: the calibration attack of MRS, the attacks of adversarial training and
those of robust evaluation, from a name or a torchattacks class, with one set of defaults and checks.

All radii are L∞ and in pixel units: inputs in [0, 1]. Defaults: ε is 0.1 for one-channel images (Fashion-MNIST)
and 8/255 for colour ones; the PGD step α is ε/4 (2/255 at 8/255). Data normalised by the loader (NNI's examples
do it in their transforms) is supported through ``normalization=(mean, std)``: ``PixelSpace`` then attacks
de-normalised pixels of a model that normalises first, and the result is normalised again.
"""
from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

__all__ = ["EVAL_ATTACKS", "VERIFIERS", "default_eps", "default_alpha", "check_eps", "check_alpha", "check_pixel_range",
           "outside_pixel_range", "pixel_range_error", "PixelSpace", "resolve_attack", "accepted_kwargs", "build_attack",
           "check_eval_attacks", "eval_attack"]

AttackSpec = Union[None, str, type, Callable[[nn.Module], Any], Any]

EVAL_ATTACKS = ("clean", "fgsm", "pgd20", "cw", "autoattack")  # and any 'pgdN'
VERIFIERS = ("ibp",)  # verified accuracy (bounds.py), on request: not every model has interval rules
_PGD = re.compile(r"pgd(\d+)$")


def default_eps(x: Union[torch.Tensor, int]) -> float:
    """The usual radius for a batch (or a channel count): 0.1 for grayscale, 8/255 for colour (CIFAR, SVHN)."""
    channels = x if isinstance(x, int) else x.shape[1]
    return 0.1 if channels == 1 else 8 / 255


def default_alpha(eps: float) -> float:
    """The PGD step size the robust-pruning literature uses: ε/4."""
    return eps / 4


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def check_eps(eps: Any, positive: bool = False) -> float:
    """``eps`` as a float, or a ValueError naming it: a radius in [0, 1] ((0, 1] where an attack must move)."""
    if not (_number(eps) and (0 < eps if positive else 0 <= eps) and eps <= 1):
        interval = "(0, 1]" if positive else "[0, 1]"
        raise ValueError(f"eps must be an L-inf radius in {interval} (inputs are in [0, 1]), got {eps!r}")
    return float(eps)


def check_alpha(alpha: Any) -> float:
    if not (_number(alpha) and 0 < alpha <= 1):
        raise ValueError(f"alpha (attack step size) must be in (0, 1], got {alpha!r}")
    return float(alpha)


def outside_pixel_range(low: float, high: float) -> bool:
    """Whether inputs spanning [low, high] leave [0, 1] (by more than float rounding of ToTensor()/255)."""
    return low < -1e-4 or high > 1 + 1e-4


def pixel_range_error(low: float, high: float, where: str) -> ValueError:
    """The one-line error for inputs outside [0, 1]: torchattacks would clamp them to [0, 1] and ignore ε."""
    if low >= -1e-4 and high > 2:  # non-negative and well past 1: raw 0-255 values, not a normalising loader
        return ValueError(
            f"{where}: inputs range over [{low:.3g}, {high:.3g}], but attacks work on pixels in [0, 1] and ε is in "
            f"pixel units (torchattacks clamps to [0, 1], so every attack would be wrong): these look like raw 0-255 "
            f"values. Scale them to [0, 1] (transforms.ToTensor() does; or divide by 255)")
    return ValueError(
        f"{where}: inputs range over [{low:.3g}, {high:.3g}], but attacks work on pixels in [0, 1] and ε is in pixel "
        f"units (torchattacks clamps to [0, 1], so every attack would be wrong): the data loader normalises. Pass "
        f"normalization=(mean, std) as the loader's Normalize has them, or make normalisation the model's first "
        f"layer (nni_mrs_plugin.Normalize(mean, std))")


class PixelSpace:
    """Where attacks run for data normalised by ``(mean, std)`` (one value per channel): ``pixels(x)`` undoes the
    normalisation, ``normalized(x)`` applies it, ``model(m)`` is ``m`` behind a normalising first layer."""

    def __init__(self, normalization: Optional[Tuple[Sequence[float], Sequence[float]]]):
        from .models import Normalize

        self.layer = None
        if normalization is not None:
            if not (isinstance(normalization, (tuple, list)) and len(normalization) == 2):
                raise ValueError(f"normalization must be (mean, std), one value per channel each, got {normalization!r}")
            self.layer = Normalize(*normalization)

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer is None:
            return x
        return x * self.layer.std.to(x.device, x.dtype) + self.layer.mean.to(x.device, x.dtype)

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer is None:
            return x
        return (x - self.layer.mean.to(x.device, x.dtype)) / self.layer.std.to(x.device, x.dtype)

    def model(self, model: nn.Module) -> nn.Module:
        if self.layer is None:
            return model
        return nn.Sequential(self.layer.to(next(model.parameters()).device), model)

    def attack(self, attack: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``attack`` (built on ``self.model(m)``) applied to data in the loader's space; the result is too."""
        wrapped = getattr(attack, "model", None)
        if self.layer is not None and isinstance(wrapped, nn.Sequential):
            wrapped.train(wrapped[1].training)  # the mode the attack finds and restores is the model's current one
        return self.normalized(attack(self.pixels(x), y))


def check_pixel_range(x: torch.Tensor, where: str, space: Optional[PixelSpace] = None) -> None:
    """A ValueError (``pixel_range_error``) unless ``x`` (de-normalised by ``space``) lies in [0, 1]. Reads two
    numbers: on a GPU tensor that is one synchronisation, so hot loops check once or keep the flag on the device
    (``train.loop.train_epoch``)."""
    x = space.pixels(x) if space is not None else x
    low, high = float(x.min()), float(x.max())
    if outside_pixel_range(low, high):
        raise pixel_range_error(low, high, where)


def _known() -> list:
    import torchattacks

    return sorted(n for n in torchattacks.__all__ if n not in ("MultiAttack", "LGV"))


def resolve_attack(attack: Union[str, type]) -> Type:
    """A torchattacks attack class from its class or its name (``"PGD"``); anything else is a ValueError."""
    import torchattacks

    if isinstance(attack, str):
        if attack not in _known():
            raise ValueError(f"unknown attack {attack!r}; choose a torchattacks attack: {', '.join(_known())}")
        return getattr(torchattacks, attack)
    if isinstance(attack, type) and issubclass(attack, torchattacks.attack.Attack):
        return attack
    raise ValueError(f"attack must be a torchattacks attack class or name, got {attack!r}; "
                     f"known: {', '.join(_known())}")


def accepted_kwargs(cls: type, kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """The entries of ``kwargs`` that ``cls.__init__`` takes (torchattacks classes differ: FGSM has no steps)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def build_attack(model: nn.Module, attack: AttackSpec = None, eps: float = 8 / 255, alpha: Optional[float] = None,
                 steps: int = 10, **kwargs: Any) -> Any:
    """A torchattacks attack on ``model``.

    ``attack``: None -> PGD (``steps`` steps of ``alpha``, default ε/4, random start); a torchattacks class or class
    name (given ``eps``/``alpha``/``steps`` where it takes them, then ``kwargs``, which win); a factory
    ``model -> attack``; or a ready attack instance. Bad keyword arguments are a ValueError here, not mid-run.
    """
    import torchattacks

    eps = check_eps(eps, positive=True)
    alpha = default_alpha(eps) if alpha is None else check_alpha(alpha)
    if isinstance(attack, torchattacks.attack.Attack):
        return attack
    if attack is None or isinstance(attack, (str, type)):
        cls = torchattacks.PGD if attack is None else resolve_attack(attack)
        base = {"eps": eps, "alpha": alpha, "steps": steps, **({"random_start": True} if attack is None else {})}
        try:
            return cls(model, **{**accepted_kwargs(cls, base), **kwargs})
        except (TypeError, ValueError) as err:
            raise ValueError(f"torchattacks.{cls.__name__} rejected {kwargs or base}: {err}") from None
    if callable(attack):
        return attack(model)
    raise ValueError(f"attack must be None, a torchattacks class or name, a factory or an attack, got {attack!r}")


def check_eval_attacks(attacks: Sequence[str]) -> None:
    """A ValueError unless ``attacks`` is a non-empty list of distinct names from ``EVAL_ATTACKS``, 'pgdN' or
    ``VERIFIERS``."""
    if isinstance(attacks, str) or not attacks:
        raise ValueError(f"attacks must be a non-empty sequence of names from {EVAL_ATTACKS + VERIFIERS} (or "
                         f"'pgdN'), got {attacks!r}")
    for name in attacks:
        match = _PGD.match(name) if isinstance(name, str) else None
        if name not in EVAL_ATTACKS + VERIFIERS and not (match and int(match.group(1)) >= 1):
            raise ValueError(f"unknown attack {name!r}; choose from {', '.join(EVAL_ATTACKS + VERIFIERS)} or 'pgdN' "
                             f"(N >= 1 steps)")
    if len(set(attacks)) != len(attacks):
        raise ValueError(f"attacks lists a name twice: {list(attacks)}")


def eval_attack(name: str, model: nn.Module, eps: float, alpha: float, n_classes: int, seed: int,
                cw_c: float = 1.0, cw_steps: int = 50) -> Tuple[Any, Dict[str, Any]]:
    """(torchattacks attack, its settings) for one evaluation name other than 'clean'."""
    import torchattacks

    if name == "fgsm":
        params: Dict[str, Any] = {"eps": eps}
        cls = torchattacks.FGSM
    elif name == "cw":
        params, cls = {"c": cw_c, "kappa": 0.0, "steps": cw_steps, "lr": 0.01}, torchattacks.CW
    elif name == "autoattack":
        params = {"norm": "Linf", "eps": eps, "version": "standard", "n_classes": n_classes, "seed": seed}
        cls = torchattacks.AutoAttack
    else:
        params = {"eps": eps, "alpha": alpha, "steps": int(_PGD.match(name).group(1)), "random_start": True}
        cls = torchattacks.PGD
    return cls(model, **params), {"attack": f"torchattacks.{cls.__name__}", "params": params}
