"""``Allocation``: what a budget pruner decided, as an NNI config_list (one entry per unit) plus a report row per
unit saying why; every budget pruner returns one, whatever its rule."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Union

__all__ = ["UnitReport", "Allocation"]


@dataclass
class UnitReport:
    """One row of the allocation report. ``score`` is what the rule allocated by: the unit's MRS for
    ``MRSPruner``, its learned keep rate for ``HARPPruner``, the ratio itself for a rule that gives none."""

    unit: str
    layers: List[str]
    score: float
    ratio: float
    channels_before: int
    channels_after: int
    budget_share: float

    @property
    def mrs(self) -> float:
        """``score`` under the name the report used before pruners other than MRS shared it."""
        return self.score


@dataclass
class Allocation:
    """An NNI config_list (per-layer ``sparse_ratio`` + ``dependency_group_id``) and why each ratio was chosen."""

    config_list: List[dict]
    report: List[UnitReport]
    target: float
    achieved: float
    budget: str
    skipped: Dict[str, str]
    rule: str = "power"
    curves: Dict[str, List[float]] = field(default_factory=dict)  # unit -> Delta L at ``ratios`` (budget rule)
    ratios: List[float] = field(default_factory=list)
    measured: bool = True  # False: the score column holds placeholders (uniform ratios), not measurements
    round_to: Union[int, str] = 1  # every pruned unit keeps a multiple of this many channels ('auto': its own)

    def as_dict(self) -> dict:
        units = [dict(asdict(row), mrs=row.score) for row in self.report]  # "mrs": the key old readers know
        out = {"target": self.target, "achieved": self.achieved, "budget": self.budget, "skipped": self.skipped,
               "rule": self.rule, "units": units, "config_list": self.config_list, "measured": self.measured,
               "round_to": self.round_to}
        if self.curves:
            out.update(curves=self.curves, ratios=self.ratios)
        return out

    def table(self) -> str:
        """The report as aligned text, highest score first."""
        rows = sorted(self.report, key=lambda row: -row.score)
        lines = [f"{'unit':<28} {'layers':>6} {'score':>10} {'ratio':>6} {'channels':>11} {'share':>6}"]
        for row in rows:
            score = f"{row.score:>10.4g}" if self.measured else f"{'-':>10}"
            lines.append(f"{row.unit[:28]:<28} {len(row.layers):>6} {score} {row.ratio:>6.3f} "
                         f"{row.channels_before:>5}->{row.channels_after:<5} {row.budget_share:>6.3f}")
        lines.append(f"removed {self.achieved:.4f} of {self.budget} (target {self.target:.4f})")
        return "\n".join(lines)
