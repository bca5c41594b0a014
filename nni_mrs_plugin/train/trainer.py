"""Adversarial training objectives as one trainer: Madry PGD, TRADES, MART, fast (FGSM with random start), N-FGSM,
the robust distillations RSLAD and ARD from a teacher (the dense model, for a pruned student) and natural, with
the training examples made by torchattacks attacks.

MRPF's claim is that fine-tuning decides robustness more than the pruning criterion, so the same objective must
serve NNI pruners that train (through ``TorchEvaluator``) and the fine-tuning of the sped-up model (``fit``).

BatchNorm mode while the attack runs follows each method's reference code (torchattacks' own default is eval):

=========  ==========================  ======================================================================
method     default attack (torchattacks)  BN mode during the attack, and why
=========  ==========================  ======================================================================
pgd        PGD (uniform random start)  train: Madry et al.'s code attacks the training-mode model, as does
                                       Rice et al.'s PyTorch reimplementation (``attack_pgd`` under model.train())
trades     TPGD (KL-PGD, x + 0.001 N)  eval: TRADES' ``trades_loss`` calls model.eval() to craft x_adv
mart       PGD (uniform random start)  eval: MART's ``mart_loss`` calls model.eval() to craft x_adv (its own
                                       PGD starts at x + 0.001 N; torchattacks' PGD starts uniformly in the ball)
fast       FFGSM (alpha = 1.25 eps)    train: Wong et al.'s "fast is better than free" never leaves train mode
nfgsm      NFGSM (alpha = eps, noise   train: de Jorge et al.'s code, like fast
           2 eps, no projection)
rslad      TeacherKL (KL to the        eval: RSLAD's ``rslad_inner_loss`` calls model.eval() to craft x_adv
           teacher, x + 0.001 N)
ard        PGD (uniform random start)  train: ARD's ``AttackPGD`` runs inside the training-mode student
natural    none                        -
ibp        none: interval bounds       - (certified training, ``certified.py``: IBP's loss and ε/κ schedule)
=========  ==========================  ======================================================================

``attack_bn="train"|"eval"`` overrides the choice. In train mode the attack's forward passes update BatchNorm
running statistics, as in the reference code.
"""
from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Dict, Iterable, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import (PixelSpace, accepted_kwargs, check_alpha, check_eps, check_pixel_range, default_alpha,
                       resolve_attack)
from ..evaluate import check_labels
from .adversaries import NFGSM, TeacherKL
from .certified import CertifiedObjective
from .loop import train_epoch
from .losses import ard_loss, mart_loss, rslad_loss, trades_loss

__all__ = ["AdversarialTrainer", "METHODS", "DISTILLING", "trades_loss", "mart_loss"]

# method -> (default attack: torchattacks class or name, BatchNorm in train mode while attacking)
_DEFAULTS: Dict[str, tuple] = {
    "pgd": ("PGD", True),
    "trades": ("TPGD", False),
    "mart": ("PGD", False),
    "fast": ("FFGSM", True),
    "nfgsm": (NFGSM, True),
    "rslad": (TeacherKL, False),
    "ard": ("PGD", True),
    "natural": (None, False),
    "ibp": (None, False),
}
METHODS = tuple(_DEFAULTS)
DISTILLING = ("rslad", "ard")  # the methods that learn from a teacher's logits
_MULTI_STEP = ("pgd", "trades", "mart", "rslad", "ard")


def _unwrap(model: nn.Module) -> nn.Module:
    """The module under DistributedDataParallel: attacks run on it, so they neither sync buffers nor arm DDP's
    gradient reduction."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _single(value: Any, what: str) -> Any:
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"the adversarial training_func drives one {what}, got {len(value)}")
        return value[0]
    return value


class AdversarialTrainer:
    """Makes adversarial training examples and the method's loss; plugs into NNI's ``TorchEvaluator``
    (``training_func``/``training_step``) and into ``fit``.

    ``eps``/``alpha`` are L∞ radii in the model's [0, 1] input space; ``alpha`` defaults to eps/4 (PGD methods),
    1.25 eps (fast) or eps (nfgsm). ``steps`` is the attack's iteration count (ignored by ``fast``/``nfgsm``).
    ``teacher`` (rslad, ard; required by them, refused by the others) is a model with the student's inputs and
    classes, used frozen: eval mode, no gradients, on the student's device. ``temperature`` and
    ``distill_weight`` are ARD's T and α (the weight of its distillation term; ``alpha`` is the attack's step). ``attack`` (torchattacks
    class or name) and ``attack_kwargs`` replace the method's default attack; eps/alpha/steps are passed to it
    when it accepts them, ``attack_kwargs`` win. ``amp`` runs attack and loss under bf16 autocast,
    ``channels_last`` converts inputs (and, in ``fit``/``training_func``, the model) to that memory format.
    ``ibp`` (method 'ibp', certified training): ``{"warmup", "ramp", "kappa_end"}`` of its schedule (``certified.py``).
    """

    def __init__(self, method: str = "pgd", eps: float = 8 / 255, alpha: Optional[float] = None, steps: int = 10,
                 beta: float = 6.0, attack: Union[str, type, None] = None,
                 attack_kwargs: Optional[Mapping[str, Any]] = None, attack_bn: Optional[str] = None,
                 amp: bool = False, channels_last: bool = False, normalization: Optional[tuple] = None,
                 teacher: Optional[nn.Module] = None, temperature: float = 30.0, distill_weight: float = 1.0,
                 ibp: Optional[Mapping[str, float]] = None):
        if method not in _DEFAULTS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if teacher is not None and method not in DISTILLING:
            raise ValueError(f"teacher: method {method!r} learns from labels, not a teacher; the methods that "
                             f"distil are {', '.join(DISTILLING)}")
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise ValueError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not (isinstance(distill_weight, (int, float)) and 0 <= distill_weight <= 1):
            raise ValueError(f"distill_weight (ARD's alpha) must be in [0, 1], got {distill_weight!r}")
        check_eps(eps)
        if alpha is not None:
            check_alpha(alpha)
        if method in _MULTI_STEP and not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps must be an integer >= 1 for method {method!r}, got {steps!r}")
        if not (isinstance(beta, (int, float)) and beta >= 0):
            raise ValueError(f"beta (TRADES/MART robustness weight) must be >= 0, got {beta!r}")
        if attack_bn not in (None, "train", "eval"):
            raise ValueError(f"attack_bn must be 'train', 'eval' or None (the method's reference), got {attack_bn!r}")
        if method in ("natural", "ibp") and (attack is not None or attack_kwargs):
            raise ValueError(f"method {method!r} runs no attack; do not pass attack or attack_kwargs")
        if ibp is not None and method != "ibp":
            raise ValueError(f"ibp (the certified schedule) is for method 'ibp', not {method!r}")
        self.method, self.eps, self.steps, self.beta = method, float(eps), steps, float(beta)
        self.alpha = float(alpha) if alpha is not None else (
            1.25 * eps if method == "fast" else float(eps) if method == "nfgsm" else default_alpha(eps))
        self.teacher, self.temperature, self.distill_weight = teacher, float(temperature), float(distill_weight)
        self.amp, self.channels_last = amp, channels_last
        default_name, bn_train = _DEFAULTS[method]
        self.attack_bn = attack_bn or ("train" if bn_train else "eval")
        self.attack_class: Optional[type] = None
        self.attack_kwargs: Dict[str, Any] = {}
        self.certified = CertifiedObjective.build(self.eps, ibp, normalization) if method == "ibp" else None
        if method not in ("natural", "ibp"):
            self.attack_class = resolve_attack(attack if attack is not None else default_name)
            base = {"eps": self.eps, "alpha": self.alpha, "steps": steps}
            self.attack_kwargs = {**accepted_kwargs(self.attack_class, base), **dict(attack_kwargs or {})}
            self._check_attack_kwargs()
        self.space = PixelSpace(normalization)  # where attacks run when the loader normalises
        self.normalization = normalization
        self.adversarial_batches = 0  # how many batches got adversarial examples (NNI tests read it)
        self._range_checked = False  # training_step checks its first batch's pixels and labels (once: a GPU read syncs)
        self._cached: Optional[tuple] = None
        self._teacher_checked = False

    def _check_attack_kwargs(self) -> None:
        """Build the attack once on a stand-in model, so bad kwargs fail here, not mid-training."""
        try:
            self.attack_class(nn.Linear(1, 1), **self.attack_kwargs)
        except (TypeError, ValueError) as err:
            name = self.attack_class.__name__
            raise ValueError(f"torchattacks.{name} rejected {self.attack_kwargs}: {err}") from None

    def config(self) -> Dict[str, Any]:
        """Plain settings (JSON and checkpoint friendly)."""
        plain_kwargs = {k: v for k, v in self.attack_kwargs.items() if isinstance(v, (int, float, str, bool))}
        return {"method": self.method, "eps": self.eps, "alpha": self.alpha, "steps": self.steps, "beta": self.beta,
                "attack": self.attack_class.__name__ if self.attack_class else None, "attack_kwargs": plain_kwargs,
                "attack_bn": self.attack_bn, "amp": self.amp, "channels_last": self.channels_last,
                "normalization": [list(map(float, v)) for v in self.normalization] if self.normalization else None,
                **({"temperature": self.temperature, "distill_weight": self.distill_weight}
                   if self.method == "ard" else {}),
                **({"ibp": self.certified.settings()} if self.certified is not None else {})}

    def autocast(self, device: torch.device) -> ContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16) if self.amp else nullcontext()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def attack_for(self, model: nn.Module):
        """The torchattacks attack bound to ``model`` (cached while model, device and ``attack_bn`` stay the same)."""
        model = _unwrap(model)
        key = (next(model.parameters()).device, self.attack_bn)
        if self._cached is None or self._cached[0] is not model or self._cached[1] != key:
            attack = self.attack_class(self.space.model(model), **self.attack_kwargs)
            if self.attack_bn == "train":
                attack.set_model_training_mode(model_training=True, batchnorm_training=True, dropout_training=True)
            self._cached = (model, key, attack)
        return self._cached[2]

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's clean logits for a batch (eval mode, no gradients, moved to ``x``'s device)."""
        if self.teacher is None:
            raise ValueError(f"method {self.method!r} distils from a teacher: pass teacher=<the dense model> (the job "
                             f"uses the run's dense model, or finetune.teacher)")
        self.teacher.to(x.device).eval()
        try:
            with torch.no_grad(), self.autocast(x.device):
                return self.teacher(x).float()
        except RuntimeError as err:
            raise ValueError(f"the teacher cannot take the student's inputs {tuple(x.shape)}: "
                             f"{str(err).splitlines()[0]}") from None

    def _check_teacher(self, model: nn.Module, x: torch.Tensor, teacher: torch.Tensor) -> None:
        """Once: the teacher and the student predict the same classes (one eval-mode forward of one sample)."""
        was_training = model.training
        try:
            with torch.no_grad(), self.autocast(x.device):
                classes = model.eval()(x[:1]).shape[1]
        finally:
            model.train(was_training)
        if teacher.shape[1] != classes:
            raise ValueError(f"the teacher gives {teacher.shape[1]} classes, the student {classes}: distil from a "
                             f"model of the same task")
        self._teacher_checked = True

    def adversarial_examples(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training examples for ``x`` (under autocast when ``amp``); the model's train/eval mode is restored.
        For rslad, ``y`` is the teacher's clean logits."""
        if self.attack_class is None:
            return x
        self.adversarial_batches += 1
        was_training = model.training  # torchattacks gives train mode back, never eval: restore it here
        try:
            with torch.enable_grad(), self.autocast(x.device):
                return self.prepare(self.space.attack(self.attack_for(model), x, y))
        finally:
            model.train(was_training)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             x_adv: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The method's training loss on a batch; pass ``x_adv`` to skip generating adversarial examples."""
        if self.certified is not None:
            with self.autocast(x.device):
                return self.certified.loss(model, x, y)
        if self.method == "natural":
            with self.autocast(x.device):
                return F.cross_entropy(model(x).float(), y)
        teacher = self.teacher_logits(x) if self.method in DISTILLING else None
        if teacher is not None and not self._teacher_checked:
            self._check_teacher(model, x, teacher)
        if x_adv is None:
            x_adv = self.adversarial_examples(model, x, teacher if self.method == "rslad" else y)
        with self.autocast(x.device):
            if self.method in ("pgd", "fast", "nfgsm"):
                return F.cross_entropy(model(x_adv).float(), y)
            logits_adv = model(x_adv)
            logits_nat = model(x) if self.method != "ard" or self.distill_weight < 1 else logits_adv
        if self.method == "rslad":
            return rslad_loss(logits_adv, logits_nat, teacher)
        if self.method == "ard":
            return ard_loss(logits_adv, logits_nat, teacher, y, self.temperature, self.distill_weight)
        objective = trades_loss if self.method == "trades" else mart_loss
        return objective(logits_nat, logits_adv, y, self.beta)

    # --- NNI TorchEvaluator ---------------------------------------------------------------------------------

    def training_step(self, batch: Any, model: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """NNI ``training_step(batch, model)``: the adversarial loss of one ``(inputs, labels)`` batch."""
        x, y = batch[0], batch[1]
        who = f"AdversarialTrainer({self.method!r}).training_step"
        if self.attack_class is not None and not self._range_checked:
            check_pixel_range(x, who, self.space)
        device = next(model.parameters()).device
        x, y = self.prepare(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        if not self._range_checked:  # the first batch only: a GPU read syncs
            check_labels(model, x, y, who)
            self._range_checked = True
        return self.loss(model, x, y)

    def training_func(self, loader: Iterable, epochs: int = 1, progress: bool = False,
                      log_every: int = 50) -> Callable[..., None]:
        """NNI ``training_func`` over ``loader``: ``max_steps``/``max_epochs`` from the pruner win over ``epochs``.

        It calls the (possibly NNI-patched) ``training_step`` and the optimizer NNI re-creates, and steps the
        lr scheduler, if any, after every optimizer step.
        """
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")

        def run(model: nn.Module, optimizers: Any, training_step: Callable, lr_schedulers: Any = None,
                max_steps: Optional[int] = None, max_epochs: Optional[int] = None, *args: Any, **kwargs: Any) -> None:
            optimizer, scheduler = _single(optimizers, "optimizer"), _single(lr_schedulers, "lr scheduler")
            if self.channels_last:
                model.to(memory_format=torch.channels_last)
            device = next(model.parameters()).device
            total_epochs = max_epochs or (epochs if max_steps is None else sys.maxsize)
            done = 0
            for epoch in range(1, total_epochs + 1):
                remaining = None if max_steps is None else max_steps - done
                if remaining is not None and remaining <= 0:
                    break
                stats = train_epoch(model, loader, lambda m, x, y: training_step((x, y), m), optimizer, scheduler,
                                    epoch=epoch, epochs=max_epochs or epochs, device=device,
                                    desc=f"NNI {self.method}", progress=progress, log_every=log_every,
                                    max_steps=remaining, prepare=self.prepare)
                done += stats.steps
                if stats.steps == 0:
                    raise ValueError("the training loader yielded no batches")

        return run
