"""The MRPF job: pretrain -> prune (MRS -> allocation -> NNI masks) -> ModelSpeedup -> adversarial fine-tuning ->
robust evaluation -> report, each stage writing its outputs to the run folder.

A rerun of the same config resumes after the last finished stage, and the training stages resume within
themselves from their last epoch. Every file is written atomically. ``stages.json`` records what each
finished stage measured.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from ..checkpoint import atomic_json, atomic_save, atomic_write, load_pruned, save_pruned
from . import build
from .config import Config, ConfigError
from .legacy import changed_settings
from .lock import FolderLock

__all__ = ["STAGES", "Pipeline", "run_pipeline", "robust_evaluation"]

STAGES = ("pretrain", "prune", "speedup", "finetune", "evaluate", "export", "report")


def _device(config: Config) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from ..device import check_device

    try:  # checked before anything is trained or written
        return check_device(config.device)
    except ValueError as err:
        raise ConfigError(f"device: {err}") from None


def _make_loaders(config: Config):
    from ..data import make_loaders

    data = config.data
    try:
        return make_loaders(data.dataset, data.root, data.batch_size, data.train_subset, data.test_subset,
                            config.seed, normalization=build.normalization(config), validation=data.validation,
                            split=config.eval.split)
    except ValueError as err:  # e.g. more images held out than the data set has
        raise ConfigError(f"data: {err}") from None


def robust_evaluation(config: Config, model: nn.Module, test_loader: Any = None,
                      attacks: Optional[List[str]] = None) -> Dict[str, Any]:
    """The config's ``eval`` section applied to any model (the run's test loader, or one built from ``data``);
    ``attacks`` replaces ``eval.attacks``."""
    from ..evaluate import evaluate_robustness

    cfg = config.eval
    test_loader = test_loader if test_loader is not None else _make_loaders(config)[1]
    return evaluate_robustness(model, test_loader, attacks or cfg.attacks, eps=build.eps(config, cfg.eps),
                               max_samples=cfg.samples, autoattack_samples=cfg.autoattack_samples, seed=config.seed,
                               device=_device(config), progress=config.progress,
                               normalization=build.normalization(config))


class Pipeline:
    """One run folder for one config. Call ``run()``; each stage's result is kept in ``self.state``."""

    def __init__(self, config: Config, output: Optional[str] = None, on_epoch: Optional[Callable] = None,
                 dense_evaluation: Optional[Dict[str, Any]] = None, on_stage: Optional[Callable] = None):
        import yaml

        self.config = config
        self.dir = Path(output or config.output.dir)
        self.on_epoch = on_epoch  # on_epoch(stage, row) after each training epoch, e.g. NNI intermediate results
        self.on_stage = on_stage  # on_stage(stage, index, total) as a stage that is not done yet starts
        # the dense model's robust_evaluation when the caller already has it (compare shares one across runs)
        self.dense_evaluation = dense_evaluation
        # what the results depend on: progress bars and the folder's own name do not
        what = {k: v for k, v in config.fingerprint_dict().items() if k not in ("progress", "output", "export")}
        self.fingerprint = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
        self.device = _device(config)
        if not (self.dir / "stages.json").is_file():  # an unreachable target fails now, not after pre-training
            self._check_target()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state: Dict[str, Any] = self._load_state()
        atomic_write(self.dir / "config.yaml", lambda f: f.write(yaml.safe_dump(config.to_dict()).encode()))
        self._loaders = None

    # -- bookkeeping ----------------------------------------------------------------------------------------
    def _load_state(self) -> Dict[str, Any]:
        path = self.dir / "stages.json"
        if not path.exists():
            return {"fingerprint": self.fingerprint, "stages": {}}
        try:
            state = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} is damaged ({type(err).__name__}: {str(err).splitlines()[0]}); delete it to "
                              f"redo every stage in {self.dir}, or delete the folder to start over") from None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            raise ConfigError(f"{self.dir} holds a run of a different config{changed_settings(self.dir, self.config)}; "
                              f"use another output.dir or delete the folder to start over")
        return state

    def _finish(self, stage: str, result: Dict[str, Any]) -> None:
        self.state["stages"][stage] = result
        atomic_json(self.dir / "stages.json", self.state)

    def done(self, stage: str) -> bool:
        if stage == "export" and stage in self.state["stages"]:  # a format added to the config since: export again
            return set(self.config.export.formats) <= set(self.state["stages"]["export"]["formats"])
        return stage in self.state["stages"]

    # -- shared pieces ----------------------------------------------------------------------------------------
    @property
    def loaders(self):
        if self._loaders is None:
            self._loaders = _make_loaders(self.config)
        return self._loaders

    @property
    def model_kwargs(self) -> Dict[str, Any]:
        return build.model_kwargs(self.config)

    @property
    def dummy(self) -> torch.Tensor:
        return build.dummy_input(self.config)

    def trainer(self, section):
        return build.trainer(self.config, section, self._teacher(section))

    def _teacher(self, section) -> Optional[nn.Module]:
        """rslad/ard fine-tuning (and pruners that train on its objective) distil from the run's dense model,
        unless ``finetune.teacher`` names another."""
        from ..train.trainer import DISTILLING

        dense = self.dir / "dense.pt"
        wanted = section is self.config.finetune and section.method in DISTILLING and not section.teacher
        return load_pruned(dense) if wanted and dense.is_file() else None

    def _fit(self, model: nn.Module, section, stage: str) -> Dict[str, Any]:
        from ..train.fit import fit

        train, test = self.loaders
        report = (lambda row: self.on_epoch(stage, row)) if self.on_epoch is not None else None
        result = fit(model, train, test, section.epochs, self.trainer(section), lr=section.lr,
                     checkpoint_dir=self.dir / stage, resume=True, seed=self.config.seed, device=self.device,
                     val_samples=min(len(test.dataset), 500), progress=self.config.progress, on_epoch=report,
                     ema=section.ema, lr_schedule=section.schedule, collapse_retries=section.collapse_retries)
        return result.to_dict()

    def measure(self, model: nn.Module) -> Dict[str, Any]:
        from ..evaluate import count_flops, count_params, measure_latency

        model = model.to("cpu").eval()
        return {"params": count_params(model), "flops": count_flops(model, self.dummy),
                "cpu_latency_ms": measure_latency(model, self.dummy, warmup=5, runs=30)}

    # -- stages -----------------------------------------------------------------------------------------------
    def pretrain(self) -> Dict[str, Any]:
        from ..models import build_model

        torch.manual_seed(self.config.seed)
        model = build_model(self.config.model.name, **self.model_kwargs)
        source = self.config.model.checkpoint
        if source:
            try:
                model.load_state_dict(torch.load(source, map_location="cpu", weights_only=True))
            except (OSError, RuntimeError) as err:
                raise ConfigError(f"model.checkpoint: cannot load {source!r} into {self.config.model.name}: "
                                  f"{str(err).splitlines()[0]}") from None
            result: Dict[str, Any] = {"source": source}
        elif self.config.pretrain.epochs > 0:
            result = {"fit": self._fit(model, self.config.pretrain, "pretrain")}
        else:
            result = {"source": "random initialisation"}
        save_pruned(self.dir / "dense.pt", model.cpu(), self.config.model.name, **self.model_kwargs)
        result["dense"] = self.measure(model)
        return result

    def prune(self) -> Dict[str, Any]:
        """Any registered pruner at the config's budget, built the same way (``job/build.py``)."""
        from ..budget.baselines import baseline_masks
        from ..host.registry import get_pruner

        model = load_pruned(self.dir / "dense.pt").to(self.device)
        cfg = self.config.pruning
        dummy = self.dummy.to(self.device)
        context = build.pruning_context(self.config, self.loaders[0], self.dir / "prune-harp.pt",
                                        self._teacher(self.config.finetune))
        layers, masks = build.prune_layers(self.config, model, context, dummy)  # pruning.layers: blocks first
        allocation, predicted = layers, layers.achieved if layers else 0.0
        if predicted < cfg.target:  # channels take the rest (all of it without pruning.layers)
            allocation, channels = baseline_masks(
                model, build.config_list(self.config, predicted), dummy, get_pruner(cfg.pruner), cfg.budget,
                cfg.r_max, cfg.round_to, **build.pruner_keywords(self.config, model, context, dummy))
            masks = {**masks, **channels}
            predicted = 1 - (1 - predicted) * (1 - allocation.achieved)
        atomic_save({k: {t: m.cpu() for t, m in v.items() if m is not None} for k, v in masks.items()},
                    self.dir / "masks.pt")
        extra = {"layers": layers.as_dict()} if layers and allocation is not layers else {}
        atomic_json(self.dir / "allocation.json", {**allocation.as_dict(), **extra})
        return {"pruner": cfg.pruner, "target": cfg.target, "budget": cfg.budget, "predicted_removed": predicted}

    def _check_target(self) -> None:
        from ..models import build_model
        from ..budget.problem import BudgetProblem

        cfg = self.config.pruning
        model = build_model(self.config.model.name, **self.model_kwargs)
        BudgetProblem.build(model, build.config_list(self.config), self.dummy, cfg.budget, 0.0, cfg.r_max,
                            round_to=cfg.round_to).check_reachable()

    def speedup(self) -> Dict[str, Any]:
        from ..host.speedup import recalibrate_batchnorm, speedup_model

        model = load_pruned(self.dir / "dense.pt")
        masks = torch.load(self.dir / "masks.pt", map_location="cpu", weights_only=True)
        started = time.perf_counter()
        speedup_model(model, masks, self.dummy)
        seconds = time.perf_counter() - started
        if self.config.pruning.adapt_bn:
            recalibrate_batchnorm(model.to(self.device), self._images(self.config.pruning.adapt_bn).to(self.device))
        save_pruned(self.dir / "pruned_init.pt", model.cpu(), self.config.model.name, **self.model_kwargs)
        return {"pruned": self.measure(model), "speedup_seconds": seconds}

    def _images(self, n: int) -> torch.Tensor:
        """The first ``n`` training images in the loader's seeded order."""
        batches, count = [], 0
        for x, _ in self.loaders[0]:
            batches.append(x)
            count += len(x)
            if count >= n:
                break
        return torch.cat(batches)[:n]

    def finetune(self) -> Dict[str, Any]:
        model = load_pruned(self.dir / "pruned_init.pt")
        result = {"fit": self._fit(model, self.config.finetune, "finetune")} if self.config.finetune.epochs else {}
        save_pruned(self.dir / "pruned.pt", model.cpu(), self.config.model.name, **self.model_kwargs)
        return result

    def evaluate(self) -> Dict[str, Any]:
        """The dense model (unless given), the fine-tuned one and, under ``eval.after_pruning``'s attacks, the one
        right after the removal (``pruned_init``)."""
        attacks = {"dense": None, "pruned": None, "pruned_init": self.config.eval.after_pruning}
        results = {name: robust_evaluation(self.config, load_pruned(self.dir / f"{name}.pt"), self.loaders[1], todo)
                   for name, todo in attacks.items()
                   if (name != "dense" or self.dense_evaluation is None) and todo != []}
        results.setdefault("dense", self.dense_evaluation)
        atomic_json(self.dir / "evaluation.json", results)
        return results

    def export(self) -> Dict[str, Any]:
        """Dense and pruned model as each ``export.formats`` artifact, checked; latency at batch 1 in its runtime."""
        from .export import export_saved

        result: Dict[str, Any] = {"formats": list(self.config.export.formats)}
        for name in ("dense", "pruned"):
            model = load_pruned(self.dir / f"{name}.pt")
            for format in self.config.export.formats:
                record = export_saved(self.config, model, self.dir / f"{name}.pt", self.loaders[1], format,
                                      samples=self.config.export.samples)
                result.setdefault(name, {})[format] = {key: record[key] for key in ("path", "latency_ms_batch_1")}
        return result

    def report(self) -> Dict[str, Any]:
        from .report import write_report

        return {"files": [str(p) for p in write_report(self.dir, self.config, self.state["stages"])]}

    # -- driver -----------------------------------------------------------------------------------------------
    def run(self, until: Optional[str] = None) -> Dict[str, Any]:
        """Run the stages not yet finished (up to ``until``); returns ``stages.json``'s content."""
        if until is not None and until not in STAGES:
            raise ConfigError(f"until: must be one of {', '.join(STAGES)}, got {until!r}")
        with FolderLock(self.dir):
            self.state = self._load_state()  # what a writer before us finished
            for index, stage in enumerate(STAGES, 1):
                if not self.done(stage):
                    if self.on_stage is not None:
                        self.on_stage(stage, index, len(STAGES))
                    started = time.perf_counter()
                    result = getattr(self, stage)()
                    result["seconds"] = round(time.perf_counter() - started, 2)
                    if stage == "export":  # the report shows the artifacts' latency: write it again
                        self.state["stages"].pop("report", None)
                    self._finish(stage, result)
                if stage == until:
                    break
        return self.state


def run_pipeline(config: Config, output: Optional[str] = None, **kwargs: Any) -> Dict[str, Any]:
    return Pipeline(config, output, **kwargs).run()
