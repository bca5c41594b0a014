"""``LayerPruner``: whole residual blocks removed until a global budget is met (Jordao & Pedrini 2021, filter *and*
layer pruning as a defence).

blocks (``host.blocks``: an add ``s + f(X)`` whose branch is used nowhere else) -> each block's share of the budget,
measured by removing it -> a score per block (``criterion``) -> the lowest-scoring blocks go until the target is met
-> NNI masks with the branch's layers masked whole, which ``speedup_model`` turns into the branch's removal.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from ..attacks import PixelSpace, build_attack, check_eps, check_pixel_range, default_eps
from ..budget.pruner import BudgetPruner, PruningContext, unwrapped
from ..budget.report import Allocation, UnitReport
from ..budget.units import DEFAULT_ROUND_TO
from ..evaluate import count_flops, count_params, mean_loss
from ..host.blocks import Block, find_blocks, remove_blocks
from ..host.speedup import trace
from .calibration import adversarial_examples, check_n_samples, collect_samples
from .rules import seeded

__all__ = ["LayerPruner", "LAYER_CRITERIA"]

LAYER_CRITERIA = ("adversarial", "norm")


@contextmanager
def _without(model: nn.Module, block: Block) -> Iterator[nn.Module]:
    """``model`` with ``block``'s branch removed inside, its own modules back afterwards."""
    saved = {name: model.get_submodule(name) for name in block.modules}
    remove_blocks(model, [block])
    try:
        yield model
    finally:
        for name, module in saved.items():
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module)


class LayerPruner(BudgetPruner):
    """Prune whole residual blocks: ``sparse_ratio`` in ``config_list`` is the global fraction of the ``budget``
    ('flops' or 'params') to remove, and blocks go, least important first, until it is met. A block is a candidate
    when the config_list selects all of its branch's Conv/Linear layers; blocks whose shortcut has layers of its
    own (a downsampling projection) are candidates only with ``projection=True`` (the block becomes its shortcut).

    ``criterion``: 'adversarial' (default) ranks a block by how much removing it raises the loss under attack (a
    fresh attack on the model without it, ``attack``/``eps``/``steps`` on ``n_samples`` of ``calibration``);
    'norm' by ``||f(x)|| / ||s||``, the branch's size against its shortcut's on clean samples (no attack).
    Removal is per block, so the target is met to one block's share: the allocation reports the blocks' shares
    (``granularity``) and what was achieved. ``compress()`` returns NNI masks (each removed block's layers masked
    whole); ``nni_mrs_plugin.speedup_model`` replaces those branches and removes any channel masks with them.
    ``r_max``, ``round_to`` and ``tolerance`` do not apply to whole blocks.
    """

    def __init__(self, model: nn.Module, config_list: List[Dict[str, Any]], evaluator: Any = None, *,
                 calibration: Any = None, criterion: str = "adversarial", projection: bool = False,
                 attack: Any = None, eps: Optional[float] = None, steps: int = 10, n_samples: int = 256,
                 batch_size: int = 256, seed: int = 0, normalization: Optional[tuple] = None, progress: bool = True,
                 dummy_input: Any = None, budget: str = "flops", r_min: float = 0.0, r_max: float = 0.9,
                 tolerance: float = 0.01, round_to: Union[int, str] = DEFAULT_ROUND_TO, verify: bool = True,
                 existed_wrappers: Optional[Dict[str, Any]] = None):
        if criterion not in LAYER_CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r} for LayerPruner; choose one of "
                             f"{', '.join(LAYER_CRITERIA)}")
        if budget not in ("flops", "params"):
            raise ValueError(f"LayerPruner's budget must be 'flops' or 'params', got {budget!r} (whole blocks have no "
                             f"channel count to meet)")
        if calibration is None:
            raise ValueError("LayerPruner needs calibration data (a DataLoader or an (x, y) pair) to rank the blocks")
        if eps is not None:
            check_eps(eps, positive=True)
        check_n_samples(n_samples)
        super().__init__(model, config_list, evaluator, dummy_input=dummy_input, budget=budget, r_min=r_min,
                         r_max=r_max, tolerance=tolerance, round_to=round_to, verify=verify,
                         existed_wrappers=existed_wrappers)
        self.calibration, self.criterion, self.projection = calibration, criterion, projection
        self.attack, self.eps, self.steps, self.n_samples = attack, eps, steps, n_samples
        self.batch_size, self.seed, self.progress = batch_size, seed, progress
        self.space = PixelSpace(normalization)
        self.blocks: List[Block] = []  # the candidates of the last plan, in graph order
        self.removed: List[Block] = []

    @classmethod
    def context_options(cls, context: PruningContext) -> Dict[str, Any]:
        """Calibration on the training data at the job's radius, normalisation, seed and progress bars."""
        return {"calibration": context.data, "eps": context.eps, "normalization": context.normalization,
                "seed": context.seed, "progress": context.progress}

    def default_dummy_input(self) -> Any:
        return collect_samples(self.calibration, 1, self.seed)[0]

    # -- the plan -------------------------------------------------------------------------------------------
    def plan(self) -> Allocation:
        with unwrapped(self) as model:
            self.measured_input = dummy = self.resolve_dummy_input(model)
            graph_module = trace(model, dummy)
            found, refused = find_blocks(graph_module, model, self.projection)
            selected = set(self.config_list_layers())
            self.blocks = [b for b in found if set(b.layers) <= selected]
            skipped = {**refused, **{b.name: "not all of its layers are selected by the config_list"
                                     for b in found if b not in self.blocks}}
            if not self.blocks:
                raise ValueError(self._no_blocks(model, refused, found))
            shares = self._shares(model, dummy)
            scores = self._scores(model, graph_module)
        self.removed = self._choose(shares, scores)
        removed = set(self.removed)
        achieved = sum(shares[b.name] for b in self.removed)
        report = [UnitReport(b.name, list(b.layers), scores[b.name], float(b in removed), len(b.layers),
                             0 if b in removed else len(b.layers), shares[b.name]) for b in self.blocks]
        config_list = [{"op_names": list(b.layers), "sparse_ratio": 1.0} for b in self.removed]
        self.allocation = Allocation(config_list, report, self.goal, achieved, self.budget, skipped,
                                     rule=f"layer-{self.criterion}")
        return self.allocation

    def config_list_layers(self) -> Sequence[str]:
        return [name for name, spaces in self._target_spaces.items() if spaces.get("weight") is not None]

    def _no_blocks(self, model: nn.Module, refused: Dict[str, str], found: List[Block]) -> str:
        if found:
            return (f"LayerPruner: the config_list selects every layer of none of {type(model).__name__}'s "
                    f"{len(found)} removable blocks ({', '.join(b.name for b in found[:4])}, ...)")
        why = "; ".join(f"{add}: {reason}" for add, reason in list(refused.items())[:3])
        return (f"LayerPruner: {type(model).__name__} has no removable residual block (an add x + f(x) whose branch "
                f"is used nowhere else){f' ({why})' if why else ''}; prune its channels instead")

    def _cost(self, model: nn.Module, dummy: Any) -> float:
        return float(count_flops(model, dummy) if self.budget == "flops" else count_params(model))

    def _shares(self, model: nn.Module, dummy: Any) -> Dict[str, float]:
        """Each block's fraction of the budget: what removing it alone saves (branches do not overlap, so the
        shares of several blocks add up)."""
        total = self._cost(model, dummy)
        shares = {}
        for block in self.blocks:
            with _without(model, block):
                shares[block.name] = (total - self._cost(model, dummy)) / total
        return shares

    def _scores(self, model: nn.Module, graph_module: torch.fx.GraphModule) -> Dict[str, float]:
        x, y = collect_samples(self.calibration, self.n_samples, self.seed)
        check_pixel_range(x, "LayerPruner calibration", self.space)
        device = next(model.parameters()).device
        x, y = x.to(device), y.to(device)
        was_training = model.training
        model.eval()
        try:
            if self.criterion == "norm":
                return self._norms(graph_module, x)
            attack = build_attack(self.space.model(model), self.attack, self.eps or default_eps(x), steps=self.steps)

            def adversarial_loss() -> float:
                x_adv = adversarial_examples(model, x, y, attack, self.batch_size, self.seed, False, self.space)
                return float(mean_loss(model, x_adv, y, self.batch_size))

            with seeded(self.seed, device):
                base = adversarial_loss()
                scores = {}
                for block in tqdm(self.blocks, desc="layer pruning: adversarial loss", disable=not self.progress,
                                  leave=False):
                    with _without(model, block):
                        scores[block.name] = adversarial_loss() - base
            return scores
        finally:
            model.train(was_training)

    @torch.no_grad()
    def _norms(self, graph_module: torch.fx.GraphModule, x: torch.Tensor) -> Dict[str, float]:
        """Mean over samples of ``||f(x)|| / ||s||`` at each block's add, from one pass of the traced graph."""
        wanted = {name for block in self.blocks for name in (block.branch, block.shortcut)}
        values: Dict[str, List[torch.Tensor]] = {name: [] for name in wanted}

        class Recorder(torch.fx.Interpreter):
            def run_node(self, node):
                out = super().run_node(node)
                if node.name in wanted:
                    values[node.name].append(out.detach().flatten(1).norm(dim=1))
                return out

        for start in range(0, len(x), self.batch_size):
            Recorder(graph_module).run(x[start:start + self.batch_size])
        return {b.name: float((torch.cat(values[b.branch]) / torch.cat(values[b.shortcut]).clamp_min(1e-12)).mean())
                for b in self.blocks}

    def _choose(self, shares: Dict[str, float], scores: Dict[str, float]) -> List[Block]:
        """The lowest-scoring blocks until their shares reach the target (graph order among ties)."""
        reachable = sum(shares.values())
        if reachable < self.goal:
            raise ValueError(f"LayerPruner: sparse_ratio {self.goal} asks for {self.goal:.1%} of the {self.budget}, "
                             f"but removing all {len(self.blocks)} removable blocks saves {reachable:.1%}; lower it, "
                             f"or prune channels after the blocks")
        chosen, removed = [], 0.0
        for block in sorted(self.blocks, key=lambda b: scores[b.name]):
            if removed >= self.goal:
                break
            chosen.append(block)
            removed += shares[block.name]
        return [b for b in self.blocks if b in chosen]

    # -- NNI's pipeline -------------------------------------------------------------------------------------
    def _collect_data(self) -> Dict[str, Dict[str, torch.Tensor]]:
        if self.allocation is None:
            self.plan()
        return {}

    def _calculate_metrics(self, data: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, Dict[str, torch.Tensor]]:
        return {}

    def _generate_sparsity(self, metrics: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, Dict[str, torch.Tensor]]:
        """Every target of a removed block's layers masked whole, every other target kept."""
        gone = {name for block in self.removed for name in block.layers}
        return {layer: {target: (torch.zeros_like if layer in gone else torch.ones_like)(space.target)
                        for target, space in spaces.items() if space.target is not None}
                for layer, spaces in self._target_spaces.items()}
