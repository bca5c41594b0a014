"""HARP's training of the gates: minimise the adversarial loss + gamma x the resource loss over the gates' rates and
scores, the model's own parameters frozen (HARP trains what to keep, not the weights).

The weight gamma follows HARP's step-wise schedule: the run is cut into ``stages``; while the rates are above the
budget at a stage's end, gamma grows by its initial value (robustness first, then a growing push toward the
target); once they meet it, gamma is frozen, so both terms keep the weight that balanced them. The rates are then
rounded to channel counts and the budget solver's single-channel refine finishes the budget exactly (pruning
first where the learned rate is lowest). State, the RNG and the data position included, is saved at every stage's
end, so a killed run resumes there and ends as an uninterrupted one would.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

import torch
from tqdm.auto import tqdm

from ..attacks import check_pixel_range
from ..checkpoint import atomic_save, seal, unseal
from ..evaluate import check_labels
from ..budget.problem import BudgetProblem
from ..budget.report import Allocation
from ..budget.importance import channel_importance
from .gates import ChannelGates, resource_loss

__all__ = ["learn_allocation"]


def _start(problem: BudgetProblem, start: str = "uniform") -> ChannelGates:
    """Gates with channels ranked by L1 norm, at ``start``: 'uniform', the ratios that meet the budget uniformly
    (the uniform-L1 pruned model, with the next channel of each block 0.3 open: at a whole count the rate's
    gradient would read a closed channel), or 'dense', every rate 1.0 (HARP's reference code)."""
    model, units = problem.model, problem.units
    modules = dict(model.named_modules())
    if start == "dense":
        keep = {u.name: 1.0 for u in units}
    else:
        uniform = problem.scale({u.name: 1.0 for u in units})
        keep = {u.name: min((u.per_block - uniform[u.name] + 0.3) / u.per_block, 1.0) for u in units}
    scores = {u.name: torch.stack([channel_importance(modules[layer].weight, "l1") for layer in u.layers]).mean(0)
              for u in units}
    return ChannelGates(units, keep, scores).to(next(model.parameters()).device)


def _own_generator(data: Iterable) -> Optional[torch.Generator]:
    """A DataLoader's own generator (``generator=``), which its shuffle draws from instead of the global RNG."""
    generator = getattr(data, "generator", None) or getattr(getattr(data, "sampler", None), "generator", None)
    return generator if isinstance(generator, torch.Generator) else None


def _rng(data: Iterable = ()) -> dict:
    own = _own_generator(data)
    return {"cpu": torch.random.get_rng_state(),
            **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_initialized() else {}),
            **({"loader": own.get_state()} if own is not None else {})}


def _set_rng(state: dict, data: Iterable = ()) -> None:
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    own = _own_generator(data)
    if "loader" in state and own is not None:
        own.set_state(state["loader"])


class _Batches:
    """The data epoch after epoch, resumable exactly: it keeps the RNG state each pass began with (the global one and
    the loader's own generator: a shuffling DataLoader draws its order from them, workers their seeds) and how many
    batches of the pass were used, so a resumed run replays the pass's order and skips what was used."""

    def __init__(self, data: Iterable, position: Optional[dict] = None) -> None:
        self.data, self.it = data, None
        self.start, self.used = (position["rng"], position["used"]) if position else (None, 0)
        if position:
            _set_rng(self.start, data)
            self.it = iter(data)
            for _ in range(self.used):
                next(self.it)

    def position(self) -> dict:
        return {"rng": self.start, "used": self.used}

    def _new_pass(self) -> None:
        self.start, self.used, self.it = _rng(self.data), 0, iter(self.data)

    def __next__(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.it is None:
            self._new_pass()
        batch = next(self.it, None)
        if batch is None:  # the pass is over: the next one
            self._new_pass()
            batch = next(self.it, None)
            if batch is None:
                raise ValueError("HARP's train_data yielded no batches")
        self.used += 1
        return batch[0], batch[1]


def learn_allocation(problem: BudgetProblem, data: Iterable, trainer: Any, steps: int, *, gamma: float = 1.0,
                     stages: int = 4, lr: float = 0.01, seed: int = 0, progress: bool = True,
                     checkpoint: Optional[Path] = None, start: str = "uniform"
                     ) -> Tuple[Allocation, Dict[str, torch.Tensor], dict]:
    """(allocation, |score| per unit channel, history) after ``steps`` optimiser steps of HARP on ``data``."""
    model, units, cost, target, budget = problem.model, problem.units, problem.cost, problem.target, problem.budget
    gates = _start(problem, start)
    optimizer = torch.optim.Adam(gates.parameters(), lr=lr)
    stage_length = max(1, math.ceil(steps / stages))
    state = {"step": 0, "gamma": float(gamma), "frozen": False, "history": []}
    fingerprint = {"units": [u.name for u in units], "steps": steps, "target": target, "budget": budget,
                   "gamma": gamma, "stages": stages, "lr": lr, "seed": seed,
                   **({"start": start} if start != "uniform" else {})}
    if checkpoint is not None and Path(checkpoint).is_file():
        saved = unseal(torch.load(checkpoint, map_location="cpu", weights_only=True), checkpoint)
        if saved.get("fingerprint") != fingerprint:
            raise ValueError(f"{checkpoint} holds a HARP run with other settings ({saved.get('fingerprint')}); "
                             f"delete it or use another path")
        gates.load_state_dict(saved["gates"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
    generator_state = torch.random.get_rng_state()
    if "data" in state:  # resumed: the data where the run was, then the RNG as it was
        batches = _Batches(data, state["data"])
        _set_rng(state["rng"], data)
    else:
        torch.manual_seed(seed)
        batches = _Batches(data)
    if getattr(trainer, "attack_bn", "eval") == "train":  # gates.py: eval mode, the attack's passes too (train-mode
        trainer = copy.copy(trainer)  # BatchNorm renormalises a partial channel and moves the running statistics)
        trainer.attack_bn = "eval"
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    device = params[0].device
    for p in params:
        p.requires_grad_(False)
    gates.attach(model)
    model.eval()  # see gates.py: BatchNorm's running statistics stay as they were
    try:
        checked = False
        with tqdm(total=steps, initial=state["step"], desc="HARP", disable=not progress, leave=False) as bar:
            while state["step"] < steps:
                x, y = next(batches)
                x, y = x.to(device), y.to(device)
                if not checked:  # once (a GPU read syncs): normalised inputs would make every attack wrong
                    if trainer.attack_class is not None:
                        check_pixel_range(x, "HARPPruner", trainer.space)
                    check_labels(model, x, y, "HARPPruner")
                    checked = True
                adversarial = trainer.loss(model, x, y)
                penalty = resource_loss(gates, cost, target, budget)
                loss = adversarial + state["gamma"] * penalty
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"HARP loss is {float(loss)} at step {state['step']}: lower lr")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                state["step"] += 1
                bar.update(1)
                bar.set_postfix(loss=f"{adversarial.item():.3f}", over=f"{penalty.item():.3f}",
                                gamma=f"{state['gamma']:.2f}")
                if state["step"] % stage_length == 0 or state["step"] == steps:
                    with torch.no_grad():
                        over = float(resource_loss(gates, cost, target, budget))
                    state["history"].append({"step": state["step"], "loss": adversarial.item(), "over": over,
                                             "gamma": state["gamma"], "rates": gates.rates()})
                    if not state["frozen"]:
                        if over <= 1e-4:
                            state["frozen"] = True
                        else:
                            state["gamma"] += float(gamma)
                    if checkpoint is not None:
                        state.update(rng=_rng(data), data=batches.position())
                        atomic_save(seal({"fingerprint": fingerprint, "gates": gates.state_dict(), "state": state,
                                          "optimizer": optimizer.state_dict()}), checkpoint)
    finally:
        gates.detach()
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
        torch.random.set_rng_state(generator_state)

    rates = gates.rates()
    # rounding can miss the budget: single channels go first where the learned rate is lowest
    pruned = problem.refine(gates.pruned_counts(), {name: 1.0 - rate + 1e-6 for name, rate in rates.items()})
    allocation = problem.allocation(pruned, rates, rule="harp")
    return allocation, gates.channel_scores(), {"history": state["history"], "rates": rates}
