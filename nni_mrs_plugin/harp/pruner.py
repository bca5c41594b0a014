"""``HARPPruner``: per-unit pruning rates and the channels they keep, *learned* under the adversarial objective (HARP,
Zhao & Wressnegger, ICLR 2023), as a ``BudgetPruner`` like ``MRSPruner``.

``allocate`` trains the gates (``learn.py``) on the problem's units (dependency groups) and exact cost model,
``channel_data`` ranks each unit's channels by the learned |scores|, and ``_generate_sparsity`` is NNI's
``generate_sparsity`` on the learned counts. ``compress()`` returns
``(model, masks)``; ``unwrap_model()`` then ``ModelSpeedup`` removes the channels.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..attacks import default_eps
from ..budget.problem import BudgetProblem
from ..budget.pruner import BudgetPruner, PruningContext, check_arguments
from ..budget.report import Allocation
from ..budget.units import DEFAULT_ROUND_TO
from ..train.trainer import AdversarialTrainer
from .learn import learn_allocation

__all__ = ["HARPPruner"]


def _positive(value: Any, name: str, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")


class HARPPruner(BudgetPruner):
    """Learn how many channels each unit keeps (a rate) and which (scores) by training under the adversarial loss
    plus a resource loss on the exact FLOPs/params/channels of the sped-up model, then prune to them.

    ``config_list`` is NNI's, as for ``MRSPruner``: ``sparse_ratio`` is the *global* fraction of ``budget`` to
    remove, ``min_sparse_ratio``/``max_sparse_ratio`` bound layers. ``train_data`` (a DataLoader of
    ``(inputs, labels)`` in [0, 1], or one ``(x, y)`` pair) feeds ``steps`` optimiser steps (default: ``epochs``
    passes over it). ``trainer`` is the objective: an ``AdversarialTrainer`` or a method name ('pgd', 'trades',
    'mart', 'fast', 'natural', 'ibp': the certified loss) built with ``eps`` and ``attack_steps``. ``gamma`` is
    the resource term's initial weight and step of HARP's schedule over ``stages``; ``lr`` is Adam's on rates and
    scores. ``checkpoint`` (a file) makes a killed run resume at its last stage. ``start`` is where the rates
    begin: 'uniform' (the ratios that meet the budget uniformly, L1 channels) or 'dense' (every rate 1.0, as HARP's
    reference code); ``HARPPruner.REFERENCE`` holds the reference's CIFAR/SVHN schedule (20 epochs, one gamma
    step of 0.01 per epoch, from dense rates), to pass as ``**HARPPruner.REFERENCE``. After ``compress()``,
    ``allocation`` holds the report (its ``score`` column is each unit's learned keep rate) and ``history`` the
    schedule. With ``verify`` (default) ``compress()`` has removed the channels from a copy and checked it computes
    what the masked model does.
    """

    REFERENCE = {"epochs": 20, "stages": 20, "gamma": 0.01, "start": "dense"}  # HARP's code: gamma_e = (e + 1) 0.01

    def __init__(self, model: nn.Module, config_list: List[Dict[str, Any]], evaluator: Any = None, *,
                 train_data: Any = None, trainer: Union[str, AdversarialTrainer] = "pgd", epochs: int = 1,
                 steps: Optional[int] = None, eps: Optional[float] = None, attack_steps: int = 10, gamma: float = 1.0,
                 stages: int = 4, lr: float = 0.01, budget: str = "flops", dummy_input: Any = None,
                 r_max: float = 0.9, tolerance: float = 0.01, seed: int = 0, progress: bool = True,
                 checkpoint: Union[str, Path, None] = None, verify: bool = True, start: str = "uniform",
                 round_to: Union[int, str] = DEFAULT_ROUND_TO, existed_wrappers: Optional[Dict[str, Any]] = None):
        check_arguments(model, config_list, budget, 0.0, r_max, tolerance, round_to)
        if start not in ("uniform", "dense"):
            raise ValueError(f"start must be 'uniform' or 'dense', got {start!r}")
        if train_data is None:
            raise ValueError("HARPPruner learns its rates by training: pass train_data=DataLoader of (inputs, labels) "
                             "or an (x, y) pair")
        _positive(epochs, "epochs", integer=True)
        if steps is not None:
            _positive(steps, "steps", integer=True)
        for value, name in ((gamma, "gamma"), (lr, "lr")):
            _positive(value, name)
        _positive(stages, "stages", integer=True)
        self.train_data = self._loader(train_data)
        if isinstance(trainer, str):
            first = next(iter(self.train_data))[0]
            trainer = AdversarialTrainer(trainer, eps=eps if eps is not None else default_eps(first),
                                         steps=attack_steps)
        elif not isinstance(trainer, AdversarialTrainer):
            raise ValueError(f"trainer must be an AdversarialTrainer or a method name, got {type(trainer).__name__}")
        super().__init__(model, config_list, evaluator, dummy_input=dummy_input, budget=budget, r_max=r_max,
                         tolerance=tolerance, round_to=round_to, verify=verify, existed_wrappers=existed_wrappers)
        self.trainer = trainer
        self.steps = steps if steps is not None else epochs * len(self.train_data)
        self.options = dict(gamma=float(gamma), stages=stages, lr=float(lr), seed=seed, progress=progress,
                            checkpoint=Path(checkpoint) if checkpoint else None, start=start)
        self.history: dict = {}
        self._scores: Dict[str, torch.Tensor] = {}

    @classmethod
    def context_options(cls, context: PruningContext) -> Dict[str, Any]:
        """Learning on the training data under the fine-tuning objective, resumable in the context's file."""
        return {"train_data": context.data, "trainer": context.trainer, "eps": context.eps,
                "checkpoint": context.checkpoint, "seed": context.seed, "progress": context.progress}

    @staticmethod
    def _loader(data: Any) -> Any:
        if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            return DataLoader(TensorDataset(data[0], data[1]), batch_size=128, shuffle=True)
        if isinstance(data, torch.Tensor) or not hasattr(data, "__iter__"):
            raise ValueError(f"train_data must be a DataLoader of (inputs, labels) or an (x, y) pair, "
                             f"got {type(data).__name__}")
        return data

    # -- the budget pruner's parts -------------------------------------------------------------------------
    def allocate(self, problem: BudgetProblem) -> Allocation:
        allocation, self._scores, self.history = learn_allocation(problem, self.train_data, self.trainer, self.steps,
                                                                  **self.options)
        return allocation

    def default_dummy_input(self) -> Any:
        return next(iter(self.train_data))[0][:1]

    def channel_data(self, data: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, Dict[str, torch.Tensor]]:
        for unit in self.allocation.config_list:  # each layer's channels ranked by its unit's learned |score|
            scores = self._scores[unit["dependency_group_id"]]
            for layer in unit["op_names"]:
                weight = data[layer]["weight"]
                data[layer]["weight"] = scores.to(weight).view(-1, *[1] * (weight.dim() - 1)).expand_as(weight)
        return data

    def _single_compress(self, max_steps: Optional[int], max_epochs: Optional[int]) -> None:
        if max_steps is not None or max_epochs is not None:
            raise ValueError("HARPPruner trains for its own steps/epochs options: call compress() without "
                             "max_steps/max_epochs")
        self.update_masks(self.generate_masks())
