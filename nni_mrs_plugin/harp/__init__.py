"""Learned robust allocation (HARP): per-unit rates and channel scores trained under the adversarial loss."""
from .pruner import HARPPruner

__all__ = ["HARPPruner"]
