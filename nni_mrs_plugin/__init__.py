"""nni-mrs-plugin: robustness-aware structured pruning for NNI 3.0.

Importing the package installs the NNI compat fixes (see ``nni_mrs_plugin.host.compat``) and nothing heavier:
the public API below is loaded on first use, so the ``.pth`` hook that applies the fixes to unchanged NNI
scripts costs no torch import at interpreter start.
"""
from __future__ import annotations

import importlib
from typing import Any

from .host import compat  # light: standard library only

__version__ = "0.1.0"

compat.install()

_EXPORTS = {
    # models
    "build_model": "models", "MODELS": "models", "ResNet18": "models", "VGG16BN": "models",
    "MobileNetV2": "models", "SmallCNN": "models", "Normalize": "models", "MobileViT": "models",
    # data
    "load_dataset": "data", "make_loaders": "data", "DataNotFoundError": "data", "DATASETS": "data",
    # structured removal
    "trace": "host.speedup", "group_dependencies": "host.speedup", "compute_masks": "host.speedup",
    "mask_like_removal": "host.speedup", "speedup_model": "host.speedup", "remove_channels": "host.speedup", "TraceError": "host.speedup",
    # measurement
    "count_params": "evaluate", "count_flops": "evaluate", "measure_latency": "evaluate", "accuracy": "evaluate",
    # module robustness sensitivity -> allocation -> pruning
    "MRSPruner": "mrs.pruner", "verify_removal": "budget.pruner", "MRSSparsityAllocator": "mrs.allocator",
    "Allocation": "budget.report", "UnitReport": "budget.report", "BudgetPruner": "budget.pruner",
    "PruningContext": "budget.pruner", "LayerPruner": "mrs.layers",
    "BudgetProblem": "budget.problem", "UniformPruner": "budget.baselines", "CostModel": "budget.cost",
    "Unit": "budget.units", "ESTIMATORS": "mrs.sensitivity", "Rule": "mrs.rules", "PowerRule": "mrs.rules",
    "BudgetRule": "mrs.rules", "JointRule": "mrs.rules", "RULES": "mrs.rules",
    "WeightMRS": "mrs.sensitivity", "ProbeMRS": "mrs.sensitivity", "TaylorMRS": "mrs.sensitivity",
    "get_pruner": "host.registry", "register_pruner": "host.registry", "available_pruners": "host.registry",
    "pruner_spec": "host.registry", "PrunerSpec": "host.registry", "unregister_pruner": "host.registry",
    "RandomPruner": "budget.baselines", "GlobalL1NormPruner": "budget.baselines", "baseline_masks": "budget.baselines",
    # deployment: BatchNorm folded, ONNX / OpenVINO / AOTInductor, checked in the runtime
    "export": "deploy", "fold_batchnorm": "deploy", "load_artifact": "deploy", "MissingExtraError": "deploy",
    # what pruning can buy in latency at most
    "latency_bound": "roofline", "calibrate": "roofline", "op_costs": "roofline", "Device": "roofline",
    # checkpoints
    "save_pruned": "checkpoint", "load_pruned": "checkpoint", "architecture": "checkpoint", "rebuild": "checkpoint",
    # training: natural and adversarial, NNI TorchEvaluator hooks, standalone fine-tuning, robust evaluation
    "train_natural": "train.loop", "NonFiniteLossError": "train.loop",
    "AdversarialTrainer": "train.trainer", "trades_loss": "train.losses", "mart_loss": "train.losses",
    "rslad_loss": "train.losses", "ard_loss": "train.losses",
    "fit": "train.fit", "FitResult": "train.fit", "TrainingCollapsedError": "train.guard",
    "evaluate_robustness": "evaluate", "interval_bounds": "bounds", "IntervalBounds": "bounds",
    # learned robust allocation (HARP)
    "HARPPruner": "harp.pruner",
    # the MRPF job
    "load_config": "job.config", "Config": "job.config", "ConfigError": "job.config", "Pipeline": "job.pipeline",
    "run_pipeline": "job.pipeline", "write_report": "job.report", "compare": "job.compare",
    # NNI's experiment manager
    "run_trial": "job.experiment", "launch_experiment": "job.experiment", "check_search_space": "job.experiment",
    "load_training_service": "job.experiment", "ExperimentError": "job.experiment",
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
