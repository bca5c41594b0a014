"""nni-mrs-plugin: robustness-aware structured pruning for NNI 3.0.

Importing the package installs the NNI compat fixes (see ``nni_mrs_plugin.compat``) and nothing heavier:
the public API below is loaded on first use, so the ``.pth`` hook that applies the fixes to unchanged NNI
scripts costs no torch import at interpreter start.
"""
from __future__ import annotations

import importlib
from typing import Any

from . import compat

__version__ = "0.1.0"

compat.install()

_EXPORTS = {
    # models
    "build_model": "models", "MODELS": "models", "ResNet18": "models", "VGG16BN": "models",
    "MobileNetV2": "models", "SmallCNN": "models", "Normalize": "models",
    # data
    "load_dataset": "data", "make_loaders": "data", "DataNotFoundError": "data", "DATASETS": "data",
    # structured removal
    "trace": "speedup", "group_dependencies": "speedup", "compute_masks": "speedup",
    "mask_like_removal": "speedup", "speedup_model": "speedup", "remove_channels": "speedup", "TraceError": "speedup",
    # measurement
    "count_params": "metrics", "count_flops": "metrics", "measure_latency": "metrics", "accuracy": "metrics",
    # module robustness sensitivity -> allocation -> pruning
    "MRSPruner": "pruner", "MRSSparsityAllocator": "allocator", "Allocation": "allocation",
    "UnitReport": "allocation", "CostModel": "cost", "Unit": "units", "ESTIMATORS": "sensitivity",
    "WeightMRS": "sensitivity", "ProbeMRS": "sensitivity", "TaylorMRS": "sensitivity",
    "get_pruner": "registry", "register_pruner": "registry", "available_pruners": "registry",
    "RandomPruner": "baselines", "GlobalL1NormPruner": "baselines", "baseline_masks": "baselines",
    # checkpoints
    "save_pruned": "checkpoint", "load_pruned": "checkpoint", "architecture": "checkpoint", "rebuild": "checkpoint",
    # training: natural and adversarial, NNI TorchEvaluator hooks, standalone fine-tuning, robust evaluation
    "train_natural": "training", "NonFiniteLossError": "training",
    "AdversarialTrainer": "adversarial", "trades_loss": "adversarial", "mart_loss": "adversarial",
    "fit": "finetune", "FitResult": "finetune", "evaluate_robustness": "robustness",
    # the MRPF job
    "load_config": "config", "Config": "config", "ConfigError": "config", "Pipeline": "pipeline",
    "run_pipeline": "pipeline", "write_report": "report", "compare": "compare",
    # NNI's experiment manager
    "run_trial": "experiment", "launch_experiment": "experiment", "check_search_space": "experiment",
}

__all__ = ["compat", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nni_mrs_plugin' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
