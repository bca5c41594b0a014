"""Standalone adversarial fine-tuning of a (sped-up) model: ``fit``.

Each epoch: train with the ``AdversarialTrainer``'s loss (SGD, per-step cosine decay), measure clean and PGD
accuracy on the validation set, keep the weights with the best PGD accuracy, and write a checkpoint. With
``ema``, an exponential moving average of the weights (``torch.optim.swa_utils.AveragedModel``) is what is
validated, chosen and returned. A killed
run resumed with ``resume=True`` loses at most the epoch in progress and then continues exactly as the
uninterrupted run would have: the checkpoint holds model, optimizer, schedule and every rank's RNG state, and
the data order depends only on (seed, epoch). Under ``torchrun`` the same call trains with
DistributedDataParallel; rank 0 alone writes checkpoints and logs.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import distributed
from .trainer import AdversarialTrainer
from ..checkpoint import atomic_json, atomic_save, seal, unseal
from ..evaluate import evaluate_robustness
from .guard import CollapseGuard, TrainingCollapsedError, starting_point
from .loop import SCHEDULES, scheduled_sgd, train_epoch

__all__ = ["fit", "FitResult", "LAST", "BEST", "HISTORY", "TrainingCollapsedError"]

LAST, BEST, HISTORY = "last.pt", "best.pt", "history.json"
_BEFORE = {"ema": None, "lr_schedule": "cosine"}  # what checkpoints made before these settings existed used


@dataclass
class FitResult:
    history: List[Dict[str, Any]] = field(default_factory=list)  # one row per epoch
    best_epoch: Optional[int] = None  # chosen on validation PGD accuracy (the last epoch without val_loader)
    best_robust_accuracy: Optional[float] = None
    checkpoint_dir: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _state(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _validate(model: nn.Module, loader: DataLoader, trainer: AdversarialTrainer, steps: int, seed: int,
              ctx: distributed.Context) -> Dict[str, float]:
    pgd = f"pgd{steps}"
    result = evaluate_robustness(model, loader, ("clean", pgd), eps=trainer.eps, seed=seed, device=ctx.device,
                                 normalization=trainer.normalization)
    clean, robust, n = distributed.all_sum([result["clean"]["correct"], result[pgd]["correct"],
                                            result["clean"]["samples"]], ctx)
    return {"clean_acc": clean / n, "pgd_acc": robust / n, "val_samples": int(n)}


def _restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any,
             config: Dict[str, Any], ctx: distributed.Context) -> Dict[str, Any]:
    checkpoint = unseal(torch.load(path, map_location=ctx.device, weights_only=True), path)
    for key in ("epochs", "steps_per_epoch", "method", "ema", "lr_schedule"):
        made = checkpoint["config"].get(key, _BEFORE.get(key))
        if made != config[key]:
            raise ValueError(f"cannot resume from {path}: it was made with {key}={made!r}, this call has "
                             f"{key}={config[key]!r}; use a new checkpoint_dir or the same settings")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    schedule.load_state_dict(checkpoint["schedule"])
    if not distributed.set_rng(checkpoint["rng"], ctx) and ctx.is_main:
        tqdm.write(f"fit: world size changed since {path}; random streams restart from the seed")
    return checkpoint


def fit(model: nn.Module, train_loader: DataLoader, val_loader: Optional[DataLoader] = None, epochs: int = 1,
        trainer: Optional[AdversarialTrainer] = None, *, lr: float = 0.05, momentum: float = 0.9,
        weight_decay: float = 5e-4, checkpoint_dir: Union[str, Path, None] = None, resume: bool = False,
        seed: int = 0, device: Optional[torch.device | str] = None, val_steps: int = 10,
        val_samples: Optional[int] = None, restore_best: bool = True, progress: bool = True,
        log_every: int = 50, on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None,
        ema: Optional[float] = None, lr_schedule: str = "cosine", collapse_retries: int = 0) -> FitResult:
    """Fine-tune ``model`` in place with ``trainer`` (default: PGD-10 at 8/255) for ``epochs``, SGD with the
    ``lr_schedule`` per step ('cosine' to 0, or 'onecycle': warm-up then cosine annealing; ``loop.scheduled_sgd``).

    ``train_loader`` gives the dataset, global batch size and workers; ``fit`` reshuffles it per epoch with
    ``seed`` (see ``distributed``). Validation: clean and PGD-``val_steps`` accuracy at the trainer's eps on
    ``val_samples`` items of ``val_loader``. ``checkpoint_dir`` receives ``last.pt`` (every epoch),
    ``best.pt`` and ``history.json``; ``resume=True`` continues from ``last.pt`` there when it exists.
    ``restore_best`` loads the best weights into ``model`` at the end. A NaN/inf loss raises
    ``NonFiniteLossError`` naming epoch and step. ``on_epoch(row)`` is called on rank 0 after each epoch's
    checkpoint (e.g. to report NNI intermediate results).

    ``ema`` (a decay in (0, 1), e.g. 0.999) keeps e = ema · e + (1 - ema) · w after every optimizer step, starting
    from the weights after the first step; BatchNorm statistics are averaged the same way (``use_buffers``).
    Validation, the best epoch and the weights left in ``model`` are the averaged ones; ``last.pt`` keeps both,
    so a resumed run continues the average exactly. An average over more steps than the run has (1 / (1 - ema)
    against epochs x batches) mostly remembers the starting weights: that gets a warning.

    An epoch that ends at chance, from a model that started above it, is run again from the last good state at
    half the learning rate, up to ``collapse_retries`` times (default 0: off; 2 is the usual setting), then
    ``TrainingCollapsedError``
    (``train/guard.py``); the row of a retried epoch says ``collapse_retries`` and ``lr_scale``.
    """
    trainer = trainer or AdversarialTrainer()
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not isinstance(val_steps, int) or val_steps < 1:
        raise ValueError(f"val_steps must be an integer >= 1, got {val_steps!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (where last.pt is)")
    if lr_schedule not in SCHEDULES:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if not isinstance(collapse_retries, int) or collapse_retries < 0:
        raise ValueError(f"collapse_retries must be an integer >= 0 (0: no collapse guard), got {collapse_retries!r}")
    if ema is not None and not (isinstance(ema, float) and 0 < ema < 1):
        raise ValueError(f"ema must be a decay in (0, 1), e.g. 0.999, got {ema!r}")
    ctx = distributed.init(device)
    try:
        return _fit(model, train_loader, val_loader, epochs, trainer, lr, momentum, weight_decay,
                    Path(checkpoint_dir) if checkpoint_dir is not None else None, resume, seed, ctx, val_steps,
                    val_samples, restore_best, progress, log_every, on_epoch, ema, lr_schedule, collapse_retries)
    finally:
        if ctx.started_here:
            torch.distributed.destroy_process_group()


def _fit(model: nn.Module, train_loader: DataLoader, val_loader: Optional[DataLoader], epochs: int,
         trainer: AdversarialTrainer, lr: float, momentum: float, weight_decay: float, out: Optional[Path],
         resume: bool, seed: int, ctx: distributed.Context, val_steps: int, val_samples: Optional[int],
         restore_best: bool, progress: bool, log_every: int,
         on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None, ema: Optional[float] = None,
         lr_schedule: str = "cosine", collapse_retries: int = 0) -> FitResult:
    torch.manual_seed(seed + ctx.rank)
    model.to(ctx.device)
    if trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    loader, sampler = distributed.shard_train_loader(train_loader, ctx, seed)
    val = distributed.shard_eval_loader(val_loader, ctx, val_samples) if val_loader is not None else None
    optimizer, schedule = scheduled_sgd(model, lr, epochs * len(loader), momentum, weight_decay, lr_schedule)
    config = {"epochs": epochs, "steps_per_epoch": len(loader), "method": trainer.method, "lr": lr, "seed": seed,
              "world_size": ctx.world_size, "val_steps": val_steps, "trainer": trainer.config(), "ema": ema,
              "lr_schedule": lr_schedule}
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema), use_buffers=True) if ema else None
    if ema and epochs * len(loader) < 1 / (1 - ema) and ctx.is_main:
        warnings.warn(f"fit: ema={ema} averages over about {1 / (1 - ema):.0f} steps, but the run has "
                      f"{epochs * len(loader)}: the average mostly keeps the first weights; use a smaller decay")
    judged = averaged.module if averaged is not None else model  # what is validated, kept and returned
    result = FitResult(checkpoint_dir=str(out) if out else None)
    best_state: Optional[Dict[str, torch.Tensor]] = None
    start = 0
    if resume and out is not None and (out / LAST).is_file():
        checkpoint = _restore(out / LAST, model, optimizer, schedule, config, ctx)
        start, result.history = checkpoint["epoch"], checkpoint["history"]
        if averaged is not None:
            averaged.load_state_dict(checkpoint["ema"])
        result.best_epoch, result.best_robust_accuracy = checkpoint["best_epoch"], checkpoint["best_robust_accuracy"]
        if restore_best and (out / BEST).is_file():
            best = torch.load(out / BEST, map_location=ctx.device, weights_only=True)
            best_state = unseal(best, out / BEST)["model"]
    net = distributed.wrap(model, ctx)
    main_progress = progress and ctx.is_main
    guard = None
    if collapse_retries and start < epochs:
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):  # RNG untouched
            classes, baseline = starting_point(judged, next(iter(loader)), ctx.device)
        guard = CollapseGuard(classes, checkpoint.get("baseline", baseline) if start else baseline, trainer.method,
                              collapse_retries)
        guard.save(model, optimizer, schedule, averaged, ctx)

    for epoch in range(start + 1, epochs + 1):
        for retry in range(collapse_retries + 1):
            sampler.set_epoch(epoch)
            if getattr(trainer, "certified", None) is not None:  # IBP's schedule follows the run, resumed too
                trainer.certified.at_step((epoch - 1) * len(loader), epochs * len(loader))
            began = time.perf_counter()
            stats = train_epoch(net, loader, trainer.loss, optimizer, schedule, epoch=epoch, epochs=epochs,
                                device=ctx.device, desc=f"fit {trainer.method}", progress=main_progress,
                                log_every=log_every, prepare=trainer.prepare,
                                pixels=trainer.space.pixels if trainer.attack_class is not None else None,
                                after_step=None if averaged is None else lambda: averaged.update_parameters(model))
            seconds = time.perf_counter() - began
            distributed.sync_buffers(model, ctx)
            loss_sum, samples = distributed.all_sum([stats.loss * stats.steps, stats.samples], ctx)
            row: Dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum / max(1, stats.steps * ctx.world_size),
                                   "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
                                   "samples_per_s": round(samples / seconds, 1)}
            if val is not None:
                row.update(_validate(judged, val, trainer, val_steps, seed, ctx))
            why = guard.collapsed(row) if guard is not None else None
            if why is None:
                break
            if retry == collapse_retries:
                guard.roll_back(model, optimizer, schedule, averaged, ctx, 1.0)
                raise TrainingCollapsedError(f"fit: epoch {epoch} collapsed ({why}) {retry + 1} times, the last with "
                                             f"the learning rate x {0.5 ** retry:g}; {out / LAST if out else 'model'} "
                                             f"holds epoch {epoch - 1}: lower lr or use a multi-step method")
            guard.roll_back(model, optimizer, schedule, averaged, ctx, 0.5 ** (retry + 1))
            if ctx.is_main:
                tqdm.write(f"fit: epoch {epoch} collapsed ({why}); back to epoch {epoch - 1}, learning rate x "
                           f"{0.5 ** (retry + 1):g}")
        if retry:
            row.update(collapse_retries=retry, lr_scale=0.5 ** retry)
        if guard is not None:
            guard.save(model, optimizer, schedule, averaged, ctx)
        improved = val is None or result.best_robust_accuracy is None or row["pgd_acc"] > result.best_robust_accuracy
        if improved:
            result.best_epoch, result.best_robust_accuracy = epoch, row.get("pgd_acc")
            best_state = _state(judged) if restore_best else None
        result.history.append(row)
        rng = distributed.gather_rng(ctx)
        if ctx.is_main and out is not None:
            if improved:
                best = {"epoch": epoch, "model": judged.state_dict(), "pgd_acc": row.get("pgd_acc")}
                atomic_save(seal(best), out / BEST)
            atomic_save(seal({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         **({"ema": averaged.state_dict()} if averaged is not None else {}),
                         "schedule": schedule.state_dict(), "rng": rng, "history": result.history,
                         "best_epoch": result.best_epoch, "best_robust_accuracy": result.best_robust_accuracy,
                         "config": config, **({"baseline": guard.baseline} if guard is not None else {})}), out / LAST)
            atomic_json(out / HISTORY, {"config": config, "history": result.history, "best_epoch": result.best_epoch})
        if ctx.is_main and on_epoch is not None:
            on_epoch(row)
        if main_progress:
            tqdm.write("fit epoch {epoch}/{epochs}: loss {train_loss:.4f}".format(epochs=epochs, **row)
                       + (" clean {clean_acc:.2%} pgd {pgd_acc:.2%}".format(**row) if val is not None else "")
                       + f" ({row['samples_per_s']:.0f} samples/s)")
        distributed.barrier(ctx)

    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    elif averaged is not None:
        model.load_state_dict(averaged.module.state_dict())
    return result
