"""Evaluation: what pruning buys (parameters, FLOPs counted by ``torch.utils.flop_counter``, latency) and what it
costs (accuracy, and robust accuracy under the attacks robust-pruning papers report: clean, FGSM, PGD-20, CW,
AutoAttack, all from torchattacks, and on request verified accuracy by interval bounds, ``"ibp"``, as a dict that
serialises to JSON with its sample counts, seeds and settings).

The model is attacked in eval mode, on pixels in [0, 1] with ε in pixel units: normalisation is the model's first
layer, or the loader's, declared with ``normalization=(mean, std)``.
Caveat stated in the result: torchattacks' ``CW`` is Carlini-Wagner **L2** (no epsilon bound; a budget of
``c``/``steps``), not the L∞ "CW∞" (PGD on the CW margin) some tables report, which torchattacks lacks.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Dict, Iterable, Optional, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from .attacks import (EVAL_ATTACKS, PixelSpace, check_alpha, check_eps, check_eval_attacks, check_pixel_range,
                      default_alpha, eval_attack)
from .bounds import IntervalBounds
from .device import check_device

__all__ = ["evaluate_robustness", "ATTACKS", "count_params", "count_flops", "measure_latency", "accuracy", "mean_loss"]

# --- what pruning buys ------------------------------------------------------------------------------------

def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, dummy_input: Any) -> int:
    """FLOPs of one forward pass at the dummy input's shape (a multiply-add counts 2), eval mode."""
    args = dummy_input if isinstance(dummy_input, tuple) else (dummy_input,)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(*args)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@torch.no_grad()
def measure_latency(model: nn.Module, dummy_input: torch.Tensor, warmup: int = 5, runs: int = 20) -> float:
    """Median wall-clock milliseconds of one forward pass (CUDA events on GPU), after ``warmup`` passes."""
    if warmup < 0 or runs < 1:
        raise ValueError(f"need warmup >= 0 and runs >= 1, got {warmup} and {runs}")
    was_training = model.training
    model.eval()
    cuda = dummy_input.is_cuda
    times = []
    try:
        for i in range(warmup + runs):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(dummy_input)
                end.record()
                torch.cuda.synchronize()
                elapsed = start.elapsed_time(end)
            else:
                t0 = time.perf_counter()
                model(dummy_input)
                elapsed = (time.perf_counter() - t0) * 1000.0
            if i >= warmup:
                times.append(elapsed)
    finally:
        model.train(was_training)
    return statistics.median(times)


# --- what it costs ----------------------------------------------------------------------------------------

ATTACKS = EVAL_ATTACKS


def evaluate_robustness(model: nn.Module, loader: Iterable, attacks: Sequence[str] = ATTACKS, *, eps: float = 8 / 255,
                        alpha: Optional[float] = None, cw_c: float = 1.0, cw_steps: int = 50,
                        max_samples: Optional[int] = None, autoattack_samples: Optional[int] = None, seed: int = 0,
                        device: Optional[torch.device | str] = None, progress: bool = False,
                        normalization: Optional[tuple] = None,
                        seconds: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    """Accuracy of ``model`` on ``loader`` under each attack, e.g. ``result["pgd20"]["accuracy"]``.

    ``alpha`` (PGD step) defaults to eps/4, i.e. 2/255 at 8/255. ``max_samples`` caps the whole evaluation;
    ``autoattack_samples`` runs AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square) on only the first that many
    samples, and its entry then says ``"subset": true`` with the count it ran on. The global RNG is seeded with
    ``seed`` inside a forked RNG state, so results repeat and the caller's random stream is untouched.
    ``normalization=(mean, std)``: the loader normalises; attacks then run on pixels (ε in pixel units).
    ``seconds``, a dict, receives each attack's wall time (for ``clean``, the forward passes), so a caller can see
    where an evaluation's time went; it stays out of the result, which repeats exactly under a seed.
    """
    check_eval_attacks(attacks)
    space = PixelSpace(normalization)
    eps = check_eps(eps)
    alpha = default_alpha(eps) if alpha is None else check_alpha(alpha)
    for label, value in (("max_samples", max_samples), ("autoattack_samples", autoattack_samples)):
        if value is not None and value < 1:
            raise ValueError(f"{label} must be >= 1 or None, got {value}")
    if cw_steps < 1:
        raise ValueError(f"cw_steps must be >= 1, got {cw_steps}")
    device = check_device(device) if device is not None else next(model.parameters()).device
    model.to(device)  # a model loaded on the CPU is evaluated where the data goes
    was_training = model.training
    model.eval()
    correct = {name: 0 for name in attacks}
    counted = {name: 0 for name in attacks}
    spent = {name: 0.0 for name in attacks}
    built: Dict[str, tuple] = {}
    stages: Dict[str, Any] = {}
    seen = 0
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for x, y in tqdm(loader, desc="robustness", disable=not progress, leave=False):
                if max_samples is not None:
                    x, y = x[:max_samples - seen], y[:max_samples - seen]
                if len(y) == 0:
                    break
                if any(name != "clean" for name in attacks):
                    check_pixel_range(x, "evaluate_robustness", space)
                x, y = x.to(device), y.to(device)
                started = time.perf_counter()
                with torch.no_grad():
                    logits = model(x)
                if "clean" in spent:
                    spent["clean"] += time.perf_counter() - started
                check_outputs(logits, y)
                for name in attacks:
                    if name == "autoattack" and autoattack_samples is not None:
                        keep = max(0, min(len(y), autoattack_samples - counted[name]))
                    else:
                        keep = len(y)
                    if keep == 0:
                        continue
                    started = time.perf_counter()
                    if name == "clean":
                        predictions = logits.argmax(1)
                    elif name == "ibp":  # verified: no point of the ball changes the prediction
                        if name not in built:
                            built[name] = (IntervalBounds(model, normalization), {"method": "interval bounds (IBP)"})
                        predictions = torch.where(built[name][0].verified(x[:keep], y[:keep], eps), y[:keep], -1)
                    else:
                        if name not in built:
                            built[name] = eval_attack(name, space.model(model), eps, alpha, logits.shape[1], seed,
                                                      cw_c, cw_steps)
                            stages[name] = _stage_bar(built[name][0], name, progress)
                        bar = stages.get(name)
                        if bar is not None:
                            bar.total += len(bar.labels)
                            tqdm.write(f"{name}: samples {counted[name] + 1}-{counted[name] + keep} "
                                       f"({' -> '.join(bar.labels)})")
                        adversarial = space.attack(built[name][0], x[:keep], y[:keep])
                        if bar is not None:  # stages skipped once every sample fell count as done
                            bar.update(bar.total - bar.n)
                        with torch.no_grad():
                            predictions = model(adversarial).argmax(1)
                    correct[name] += int((predictions[:keep] == y[:keep]).sum())
                    counted[name] += keep
                    spent[name] += time.perf_counter() - started
                seen += len(y)
    finally:
        model.train(was_training)
        for bar in stages.values():
            if bar is not None:
                bar.close()
    if seen == 0:
        raise ValueError("evaluate_robustness: the loader yielded no samples")
    if seconds is not None:
        seconds.update(spent)

    result: Dict[str, Any] = {"settings": {"norm": "Linf", "eps": eps, "pgd_alpha": alpha, "seed": seed,
                                           "samples": seen, "model_mode": "eval"}}
    if normalization is not None:
        result["settings"]["normalization"] = [list(map(float, v)) for v in normalization]
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


def check_labels(model: nn.Module, x: torch.Tensor, y: torch.Tensor, who: str) -> None:
    """``check_outputs`` on a batch before attacking or training on it: labels the model cannot predict would fail
    inside the attack's loss, on CUDA as a device-side assert that breaks the process's CUDA context. One forward
    of two samples in eval mode, without gradients: no statistics or random state touched."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x[:2])
    except RuntimeError as err:  # a batch of the wrong shape: torch's message names the layer's expectation
        if isinstance(err, torch.cuda.OutOfMemoryError):
            raise
        first = next((f"{name} ({type(m).__name__}) takes {m.in_channels} channels" if hasattr(m, "in_channels")
                      else f"{name} (Linear) takes {m.in_features} features" for name, m in model.named_modules()
                      if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))), "")
        raise ValueError(f"{who}: the model cannot take inputs of shape {tuple(x.shape)}"
                         f"{f'; its first layer {first}' if first else ''} ({str(err).splitlines()[0]})") from None
    finally:
        model.train(was_training)
    check_outputs(logits, y, who)


def check_outputs(logits: Any, y: torch.Tensor, who: str = "evaluate_robustness") -> None:
    """One-line errors for a model that does not return logits, and for labels it cannot predict (which would
    otherwise fail deep inside an attack's loss)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{who}: the model must return a (batch, classes) logits tensor, got {got}; "
                         f"wrap it in a module whose forward returns the logits")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"{who}: labels must be integer class indices, got {y.dtype}")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= logits.shape[1]:
        raise ValueError(f"{who}: labels must be in [0, {logits.shape[1] - 1}] for a model with "
                         f"{logits.shape[1]} outputs, got labels {low}..{high}")


def _stage_bar(attack: Any, name: str, progress: bool) -> Optional[tqdm]:
    """A bar over the stages of a multi-stage attack (AutoAttack: APGD-CE, APGD-T, FAB-T, Square), naming the stage
    that runs and on how many still-robust samples: one AutoAttack batch takes minutes on a CPU, and the outer
    bar would sit at 0 for all of them."""
    stages = getattr(getattr(attack, "_autoattack", None), "attacks", None)
    if not progress or not stages:
        return None
    bar = tqdm(total=0, desc=name, unit="stage", leave=False)
    bar.labels = [type(stage).__name__ for stage in stages]
    for stage, label in zip(stages, bar.labels):
        def forward(images, labels, *args, _inner=stage.forward, _label=label, **kwargs):
            bar.set_postfix_str(f"{_label} on {len(images)} samples still robust", refresh=True)
            out = _inner(images, labels, *args, **kwargs)
            bar.update(1)
            return out
        stage.forward = forward  # torchattacks calls self.forward: the instance attribute wins
    return bar


def accuracy(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu") -> float:
    """Clean top-1 accuracy in [0, 1] over a loader (``evaluate_robustness`` with the clean column only)."""
    return evaluate_robustness(model, loader, ("clean",), device=device)["clean"]["accuracy"]


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
