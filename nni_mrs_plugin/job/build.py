"""What a job config describes, built: the model's keywords and dummy input, the trainer, and the pruner.

The pruner is built one way for every registry name: ``pruning.options`` go to its constructor as they are, over
what the job has at hand (a ``PruningContext``) for what its class asks of it (``BudgetPruner.context_options``);
NNI's own pruners get a seed or an adversarial ``TorchEvaluator`` as their registry spec says. ``check_pruner``
builds it on a synthetic context, so a bad option fails when the config loads, not after pre-training.
Functions take the ``Config`` (``job/config.py``), which imports this module, not the other way round.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

__all__ = ["dataset_info", "normalization", "eps", "model_kwargs", "dummy_input", "trainer", "pruning_context",
           "config_list", "pruner_keywords", "check_pruner", "check_model_fits_data"]


def dataset_info(config: Any):
    from ..data import DATASETS

    return DATASETS[config.data.dataset]


def normalization(config: Any):
    """``data.normalization`` as the (mean, std) pair the trainer, pruner and evaluation take; None: pixels."""
    return tuple(config.data.normalization) if config.data.normalization else None


def eps(config: Any, value: Optional[float]) -> float:
    """``value``, or the data set's usual L-inf radius when the config leaves it null."""
    from ..attacks import default_eps

    return value if value is not None else default_eps(dataset_info(config).in_channels)


def model_kwargs(config: Any) -> Dict[str, Any]:
    info = dataset_info(config)
    kwargs = {"num_classes": info.num_classes, "in_channels": info.in_channels}
    if config.data.normalization:  # the loaders normalise: the model's own first layer must not
        kwargs.update(mean=[0.0] * info.in_channels, std=[1.0] * info.in_channels)
    if config.model.name == "small_cnn":
        kwargs["image_size"] = info.image_size
    return {**kwargs, **config.model.kwargs}


def dummy_input(config: Any) -> torch.Tensor:
    info = dataset_info(config)
    return torch.zeros(1, info.in_channels, info.image_size, info.image_size)


def trainer(config: Any, section: Any, teacher: Optional[nn.Module] = None):
    """The section's objective; rslad and ard distil from ``section.teacher`` (a save_pruned file) if given,
    else from ``teacher`` (the job passes the run's dense model)."""
    from ..checkpoint import load_pruned
    from ..train.trainer import DISTILLING, AdversarialTrainer
    from .schema import ConfigError

    if section.method in DISTILLING and section.teacher:
        try:
            teacher = load_pruned(section.teacher)
        except ValueError as err:
            raise ConfigError(f"teacher: {err}") from None
    return AdversarialTrainer(section.method, eps=eps(config, section.eps), alpha=section.alpha, steps=section.steps,
                              beta=section.beta, normalization=normalization(config),
                              teacher=teacher if section.method in DISTILLING else None, ibp=section.ibp or None)


def pruning_context(config: Any, data: Any, checkpoint: Optional[Path] = None, teacher: Optional[nn.Module] = None):
    """What the job offers every pruner: its training data, the fine-tuning objective (distilling from
    ``teacher`` for rslad/ard), a resume file, the fine-tuning radius (``finetune.eps``, else the data set's), the
    loaders' normalisation, the seed and progress bars."""
    from ..budget.pruner import PruningContext

    return PruningContext(data=data, trainer=trainer(config, config.finetune, teacher), checkpoint=checkpoint,
                          eps=eps(config, config.finetune.eps), normalization=normalization(config), seed=config.seed,
                          progress=config.progress)


def config_list(config: Any, removed: float = 0.0, target: Optional[float] = None) -> list:
    """The config's selection at ``target`` (default ``pruning.target``); once whole blocks have ``removed`` a
    fraction of the budget, the rest of the target as a fraction of what is left."""
    cfg = config.pruning
    exclude = {"exclude_op_names": list(cfg.exclude)} if cfg.exclude else {}
    ratio = cfg.target if target is None else target
    ratio = 1 - (1 - ratio) / (1 - removed) if removed else ratio
    return [{"op_types": list(cfg.op_types), "sparse_ratio": ratio, **exclude}]


def prune_layers(config: Any, model: nn.Module, context: Any, dummy: torch.Tensor):
    """``pruning.layers``: whole residual blocks go first (``LayerPruner`` at that fraction of the budget), removed
    from ``model`` in place; (their allocation, their NNI masks), or (None, {}) when the key is 0."""
    from ..host.speedup import speedup_model
    from ..mrs.layers import LayerPruner

    cfg = config.pruning
    if not cfg.layers:
        return None, {}
    options = {key: value for key, value in LayerPruner.context_options(context).items() if value is not None}
    pruner = LayerPruner(model, config_list(config, target=cfg.layers), dummy_input=dummy, budget=cfg.budget,
                         **options)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    speedup_model(model, masks, dummy)
    return pruner.allocation, masks


def pruner_keywords(config: Any, model: nn.Module, context: Any, dummy: torch.Tensor) -> Dict[str, Any]:
    """The constructor keywords of the config's pruner besides model, config_list and the budget's own."""
    from ..budget.pruner import BudgetPruner
    from ..host.registry import get_pruner, pruner_spec

    name = config.pruning.pruner
    cls, spec = get_pruner(name), pruner_spec(name)
    keywords: Dict[str, Any] = {}
    if isinstance(cls, type) and issubclass(cls, BudgetPruner):
        keywords.update({key: value for key, value in cls.context_options(context).items() if value is not None})
    if spec.takes_seed:
        keywords["seed"] = context.seed
    if spec.needs_evaluator:  # it trains inside compress(): on the fine-tuning objective, for 10 steps
        import nni
        from nni.compression import TorchEvaluator

        optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=config.finetune.lr)
        keywords["evaluator"] = TorchEvaluator(context.trainer.training_func(context.data), optimizer,
                                               context.trainer.training_step, dummy_input=dummy)
        keywords["training_steps"] = 10
    keywords.update(config.pruning.options)
    return keywords


def check_pruner(config: Any) -> None:
    """Build the config's pruner on a fresh model and two synthetic samples, without pruning: its constructor's
    checks run now. A ValueError names what failed; a keyword the class does not take is one too."""
    from ..budget.pruner import BudgetPruner
    from ..host.registry import get_pruner
    from ..models import build_model

    cfg = config.pruning
    cls = get_pruner(cfg.pruner)
    model = build_model(config.model.name, **model_kwargs(config))
    dummy = dummy_input(config)
    x = torch.rand(2, *dummy.shape[1:])
    context = pruning_context(config, (x, torch.zeros(2, dtype=torch.long)))
    keywords = pruner_keywords(config, model, context, x)
    budget_pruner = isinstance(cls, type) and issubclass(cls, BudgetPruner)
    fixed = dict(dummy_input=x, budget=cfg.budget, r_max=cfg.r_max, round_to=cfg.round_to) if budget_pruner else {}
    try:
        inspect.signature(cls).bind(model, config_list(config), **fixed, **keywords)
    except TypeError as err:
        taken = inspect.signature(cls).parameters
        unknown = sorted(set(cfg.options) - set(taken))
        if not unknown:
            raise ValueError(f"{cls.__name__}: {err}") from None
        if not any(p.kind is p.VAR_KEYWORD for p in taken.values()):
            raise ValueError(f"{cls.__name__} takes no option {', '.join(map(repr, unknown))}; it takes "
                             f"{', '.join(n for n in taken if n not in ('model', 'config_list'))}") from None
    if budget_pruner:
        try:
            cls(model, config_list(config), **fixed, **keywords)
        except TypeError as err:  # a keyword that a **kwargs constructor passed on to one that does not take it
            raise ValueError(str(err)) from None


def check_model_fits_data(model: Any, config: Any) -> None:
    """A one-line error when a model cannot take the config's data (channels, image size) or predicts another number
    of classes: evaluating it anyway prints a near-chance accuracy that looks like a result."""
    from ..models import Normalize
    from .schema import ConfigError

    info = dataset_info(config)
    first = next((m for m in model.modules() if isinstance(m, (Normalize, torch.nn.Conv2d))), None)
    channels = first.mean.shape[1] if isinstance(first, Normalize) else getattr(first, "in_channels", None)
    if channels is not None and channels != info.in_channels:  # a Normalize layer would broadcast 1 channel to 3
        raise ConfigError(f"the model cannot take {config.data.dataset} inputs: it expects {channels} input "
                          f"channels, the data has {info.in_channels}")
    x = torch.rand(1, info.in_channels, info.image_size, info.image_size)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except RuntimeError as err:
        raise ConfigError(f"the model cannot take {config.data.dataset} inputs ({info.in_channels}x{info.image_size}x"
                          f"{info.image_size}): {str(err).splitlines()[0]}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != info.num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"the model outputs {shape} for one {config.data.dataset} image; the data has "
                          f"{info.num_classes} classes (logits of shape (1, {info.num_classes}) expected)")
