"""Robust accuracy under the attacks robust-pruning papers report (clean, FGSM, PGD-20, CW, AutoAttack), all from
torchattacks, as a dict that serialises to JSON with its sample counts, seeds and attack settings.

The model is attacked in eval mode, in its [0, 1] input space (normalisation is the model's first layer).
Caveat stated in the result: torchattacks' ``CW`` is Carlini-Wagner **L2** (no epsilon bound; a budget of
``c``/``steps``), not the L∞ "CW∞" (PGD on the CW margin) some tables report, which torchattacks lacks.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Iterable, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["evaluate_robustness", "ATTACKS"]

ATTACKS = ("clean", "fgsm", "pgd20", "cw", "autoattack")
_PGD = re.compile(r"pgd(\d+)$")


def _check_attacks(attacks: Sequence[str]) -> None:
    if isinstance(attacks, str) or not attacks:
        raise ValueError(f"attacks must be a non-empty sequence of names from {ATTACKS} (or 'pgdN'), got {attacks!r}")
    for name in attacks:
        match = _PGD.match(name) if isinstance(name, str) else None
        if name not in ATTACKS and not (match and int(match.group(1)) >= 1):
            raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)} or 'pgdN' (N >= 1 steps)")
    if len(set(attacks)) != len(attacks):
        raise ValueError(f"attacks lists a name twice: {list(attacks)}")


def _build(name: str, model: nn.Module, eps: float, alpha: float, cw_c: float, cw_steps: int, n_classes: int,
           seed: int) -> tuple:
    """(torchattacks attack, its settings) for one attack name."""
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


def evaluate_robustness(model: nn.Module, loader: Iterable, attacks: Sequence[str] = ATTACKS, *, eps: float = 8 / 255,
                        alpha: Optional[float] = None, cw_c: float = 1.0, cw_steps: int = 50,
                        max_samples: Optional[int] = None, autoattack_samples: Optional[int] = None, seed: int = 0,
                        device: Optional[torch.device | str] = None, progress: bool = False) -> Dict[str, Any]:
    """Accuracy of ``model`` on ``loader`` under each attack, e.g. ``result["pgd20"]["accuracy"]``.

    ``alpha`` (PGD step) defaults to eps/4, i.e. 2/255 at 8/255. ``max_samples`` caps the whole evaluation;
    ``autoattack_samples`` runs AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square) on only the first that many
    samples, and its entry then says ``"subset": true`` with the count it ran on. The global RNG is seeded with
    ``seed`` inside a forked RNG state, so results repeat and the caller's random stream is untouched.
    """
    _check_attacks(attacks)
    if not (isinstance(eps, (int, float)) and 0 <= eps <= 1):
        raise ValueError(f"eps must be an L-inf radius in [0, 1], got {eps!r}")
    alpha = eps / 4 if alpha is None else alpha
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    for label, value in (("max_samples", max_samples), ("autoattack_samples", autoattack_samples)):
        if value is not None and value < 1:
            raise ValueError(f"{label} must be >= 1 or None, got {value}")
    if cw_steps < 1:
        raise ValueError(f"cw_steps must be >= 1, got {cw_steps}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)  # a model loaded on the CPU is evaluated where the data goes
    was_training = model.training
    model.eval()
    correct = {name: 0 for name in attacks}
    counted = {name: 0 for name in attacks}
    built: Dict[str, tuple] = {}
    seen = 0
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for x, y in tqdm(loader, desc="robustness", disable=not progress, leave=False):
                if max_samples is not None:
                    x, y = x[:max_samples - seen], y[:max_samples - seen]
                if len(y) == 0:
                    break
                x, y = x.to(device), y.to(device)
                with torch.no_grad():
                    logits = model(x)
                for name in attacks:
                    if name == "autoattack" and autoattack_samples is not None:
                        keep = max(0, min(len(y), autoattack_samples - counted[name]))
                    else:
                        keep = len(y)
                    if keep == 0:
                        continue
                    if name == "clean":
                        predictions = logits.argmax(1)
                    else:
                        if name not in built:
                            built[name] = _build(name, model, eps, alpha, cw_c, cw_steps, logits.shape[1], seed)
                        adversarial = built[name][0](x[:keep], y[:keep])
                        with torch.no_grad():
                            predictions = model(adversarial).argmax(1)
                    correct[name] += int((predictions[:keep] == y[:keep]).sum())
                    counted[name] += keep
                seen += len(y)
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate_robustness: the loader yielded no samples")

    result: Dict[str, Any] = {"settings": {"norm": "Linf", "eps": eps, "pgd_alpha": alpha, "seed": seed,
                                           "samples": seen, "model_mode": "eval"}}
    for name in attacks:
        entry: Dict[str, Any] = {"accuracy": correct[name] / counted[name], "correct": correct[name],
                                 "samples": counted[name], "seed": seed}
        if name in built:
            entry.update(built[name][1])
        if name == "cw":
            entry["note"] = "Carlini-Wagner L2 (torchattacks.CW): not bounded by eps"
        if name == "autoattack":
            entry["subset"] = counted[name] < seen
            entry["of"] = seen
            if entry["subset"]:
                entry["note"] = f"AutoAttack ran on a subset: the first {counted[name]} of {seen} samples"
        result[name] = entry
    return result
