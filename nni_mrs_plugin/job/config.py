"""The MRPF job's YAML config: sections model, data, pretrain, pruning, finetune, eval, output.

Every key has a default, so a config only states what differs. Unknown keys get "did you mean ...", and wrong
types or ranges get one line naming the key (``ConfigError``). ``overrides`` such as
``{"pruning.tau": 0.5}`` come from ``--set`` on the command line or from an NNI trial's parameters.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Union

from .legacy import FLAT
from .schema import ConfigError, apply_overrides, build_section, constructor_checks, require

__all__ = ["ConfigError", "Config", "load_config", "default_config_path", "apply_overrides"]


@dataclass
class ModelSection:
    name: str = "small_cnn"
    checkpoint: Optional[str] = None  # dense weights to start from (state dict); skips pre-training
    kwargs: Dict[str, Any] = field(default_factory=dict)  # build_model's own keywords, e.g. {width: 0.25}

    def check(self, key: str) -> None:
        from ..models import MODELS

        require(self.name in MODELS, f"{key}.name", f"must be one of {', '.join(sorted(MODELS))}", self.name)


@dataclass
class DataSection:
    dataset: str = "fashion_mnist"
    root: Optional[str] = None
    train_subset: Optional[int] = 10000
    test_subset: Optional[int] = 1000
    validation: Optional[int] = None  # training images held out (the same ones for every seed), for eval.split
    batch_size: int = 128
    normalization: Optional[List[List[float]]] = None  # [mean, std]: the loaders normalise, attacks run on pixels

    def check(self, key: str) -> None:
        from ..data import DATASETS

        require(self.dataset in DATASETS, f"{key}.dataset", f"must be one of {', '.join(sorted(DATASETS))}",
                self.dataset)
        for name in ("train_subset", "test_subset", "validation"):
            value = getattr(self, name)
            require(value is None or value >= 1, f"{key}.{name}",
                    "must be >= 1 or null (" + ("none held out)" if name == "validation" else "all)"), value)
        require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1", self.batch_size)
        channels = DATASETS[self.dataset].in_channels
        require(self.normalization is None or (len(self.normalization) == 2 and all(
            len(v) == channels for v in self.normalization) and min(self.normalization[1]) > 0),
            f"{key}.normalization", f"must be [mean, std] with {channels} value(s) each for {self.dataset}, std > 0",
            self.normalization)


@dataclass
class TrainingSection:
    """Shared by pre-training and fine-tuning: Sehwag et al.'s rule is one robust objective for both."""

    epochs: int = 1
    method: str = "pgd"
    eps: Optional[float] = None  # default: 0.1 for one-channel data, 8/255 otherwise
    alpha: Optional[float] = None
    steps: int = 10
    beta: float = 6.0
    lr: float = 0.05
    teacher: Optional[str] = None  # rslad/ard: a save_pruned model; fine-tuning defaults to the run's dense model
    ema: Optional[float] = None  # a decay in (0, 1): validate, keep and return the weights' moving average
    schedule: str = "cosine"  # the learning rate per step: cosine to 0, or onecycle (warm-up, then cosine)
    ibp: Dict[str, float] = field(default_factory=dict)  # method ibp: warmup, ramp, kappa_end (certified.py)
    collapse_retries: int = 0  # fit's collapse guard: epochs at chance roll back at half the lr, this many times

    def check(self, key: str) -> None:
        from ..attacks import check_eps
        from ..train.loop import SCHEDULES
        from ..train.trainer import DISTILLING, AdversarialTrainer

        require(self.epochs >= 0, f"{key}.epochs", "must be >= 0", self.epochs)
        require(self.lr > 0, f"{key}.lr", "must be > 0", self.lr)
        require(self.schedule in SCHEDULES, f"{key}.schedule", f"must be one of {', '.join(SCHEDULES)}",
                self.schedule)
        require(self.collapse_retries >= 0, f"{key}.collapse_retries", "must be >= 0 (0: no collapse guard)",
                self.collapse_retries)
        require(self.ema is None or 0 < self.ema < 1, f"{key}.ema", "must be a decay in (0, 1), e.g. 0.999, or null",
                self.ema)
        constructor_checks(key, self, lambda: self.eps is None or check_eps(self.eps, positive=True))
        constructor_checks(key, self, lambda: AdversarialTrainer(
            self.method, eps=self.eps or 0.0, alpha=self.alpha, steps=self.steps, beta=self.beta, ibp=self.ibp or None))
        require(self.teacher is None or self.method in DISTILLING, f"{key}.teacher",
                f"only {' and '.join(DISTILLING)} distil from a teacher, not method {self.method!r}", self.teacher)
        require(self.teacher is None or Path(self.teacher).is_file(), f"{key}.teacher", "file not found",
                self.teacher)
        require(key != "pretrain" or self.method not in DISTILLING or self.teacher is not None, f"{key}.teacher",
                f"pre-training with {self.method} needs a teacher model (a save_pruned file)", self.teacher)


# (section, key) -> default, for keys added after run folders existed; see Config.fingerprint_dict
ADDED_KEYS: Dict[Tuple[str, str], Any] = {("data", "normalization"): None, ("model", "kwargs"): {},
                                          ("pretrain", "teacher"): None, ("finetune", "teacher"): None,
                                          ("pretrain", "ema"): None, ("finetune", "ema"): None,
                                          ("pretrain", "schedule"): "cosine", ("finetune", "schedule"): "cosine",
                                          ("pretrain", "ibp"): {}, ("finetune", "ibp"): {},
                                          ("pretrain", "collapse_retries"): 0, ("finetune", "collapse_retries"): 0,
                                          ("data", "validation"): None, ("pruning", "adapt_bn"): 0,
                                          ("pruning", "round_to"): 1, ("pruning", "layers"): 0.0,
                                          ("eval", "split"): "test", ("eval", "after_pruning"): []}


@dataclass
class PruningSection:
    pruner: str = "mrs"  # or any registry name: l1, l2, fpgm, taylor, harp, ... (uniform ratios, same budget)
    target: float = 0.5  # fraction of the budget the sped-up model loses
    budget: str = "flops"
    r_max: float = 0.9
    op_types: List[str] = field(default_factory=lambda: ["Conv2d", "Linear"])
    exclude: List[str] = field(default_factory=list)
    adapt_bn: int = 0  # training images BatchNorm statistics are re-estimated on after the removal (0: none)
    round_to: Union[int, str] = "auto"  # pruned units keep a multiple of this many channels; auto: per unit
    layers: float = 0.0  # fraction of the budget whole residual blocks remove first (LayerPruner), channels the rest
    options: Dict[str, Any] = field(default_factory=dict)  # the pruner's own constructor keywords, as they are
    MOVED: ClassVar[Dict[str, str]] = {name: f"options.{name}" for name in FLAT}  # where an old key lives now

    def __post_init__(self) -> None:
        self.legacy: Dict[str, Any] = {}  # flat keys of an old config, as written (job/legacy.py)
        self.origins: Dict[str, str] = {}  # option -> the old key it came from, for error messages

    def check(self, key: str) -> None:
        from ..budget.problem import check_bounds, check_budget
        from ..budget.units import check_round_to
        from ..host.registry import available_pruners

        require(self.pruner in available_pruners(), f"{key}.pruner",
                f"must be one of {', '.join(available_pruners())}", self.pruner)
        require(0 < self.target < 1, f"{key}.target", "must be in (0, 1)", self.target)
        require(0 < self.r_max, f"{key}.r_max", "must be in (0, 1)", self.r_max)
        require(bool(self.op_types), f"{key}.op_types", "must name at least one layer type", self.op_types)
        require(self.adapt_bn >= 0, f"{key}.adapt_bn", "must be >= 0 (images; 0: off)", self.adapt_bn)
        require(0 <= self.layers < self.target, f"{key}.layers", f"must be in [0, target={self.target}): the part "
                f"of the target whole blocks remove before channels go", self.layers)
        require(not self.layers or self.budget != "channels", f"{key}.layers", "needs budget flops or params "
                "(whole blocks have no channel count)", self.layers)
        constructor_checks(key, self, lambda: check_budget(self.budget), "budget")
        constructor_checks(key, self, lambda: check_bounds(0.0, self.r_max), "r_max")
        constructor_checks(key, self, lambda: check_round_to(self.round_to), "round_to")


@dataclass
class EvalSection:
    attacks: List[str] = field(default_factory=lambda: ["clean", "fgsm", "pgd20", "autoattack"])
    eps: Optional[float] = None
    samples: Optional[int] = 1000
    autoattack_samples: Optional[int] = 100
    split: str = "test"  # or "validation": the data.validation images (choose there, report the test set once)
    after_pruning: List[str] = field(default_factory=list)  # attacks on the model right after the removal too

    def check(self, key: str) -> None:
        from ..attacks import check_eps, check_eval_attacks

        constructor_checks(key, self, lambda: check_eval_attacks(self.attacks), "attacks")
        constructor_checks(key, self, lambda: not self.after_pruning or check_eval_attacks(self.after_pruning),
                           "after_pruning")
        constructor_checks(key, self, lambda: self.eps is None or check_eps(self.eps))
        for name in ("samples", "autoattack_samples"):
            value = getattr(self, name)
            require(value is None or value >= 1, f"{key}.{name}", "must be >= 1 or null (all)", value)
        require(self.split in ("test", "validation"), f"{key}.split", "must be 'test' or 'validation'", self.split)


@dataclass
class ExportSection:
    """The pruned model (and the dense one, for the same-backend speedup) as deployment artifacts (``deploy.py``);
    not part of a run's fingerprint: adding a format to a finished run exports it."""

    formats: List[str] = field(default_factory=list)  # onnx, openvino, pt2
    samples: int = 64  # test images each artifact is checked on

    def check(self, key: str) -> None:
        from ..deploy import FORMATS

        for name in self.formats:
            require(name in FORMATS, f"{key}.formats", f"must name formats among {', '.join(FORMATS)}", name)
        require(len(set(self.formats)) == len(self.formats), f"{key}.formats", "names a format twice", self.formats)
        require(self.samples >= 2, f"{key}.samples", "must be >= 2", self.samples)


@dataclass
class OutputSection:
    dir: str = "runs/mrpf"


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    pretrain: TrainingSection = field(default_factory=TrainingSection)
    pruning: PruningSection = field(default_factory=PruningSection)
    finetune: TrainingSection = field(default_factory=TrainingSection)
    eval: EvalSection = field(default_factory=EvalSection)
    export: ExportSection = field(default_factory=ExportSection)
    output: OutputSection = field(default_factory=OutputSection)
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def check(self, key: str) -> None:
        from ..device import parse_device

        try:
            if self.device != "auto":
                parse_device(self.device)
        except ValueError:
            raise ConfigError(f"device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}") from None
        require(self.eval.split == "test" or bool(self.data.validation), "eval.split",
                "'validation' needs data.validation (how many training images to hold out)", self.eval.split)
        if self.model.kwargs:
            from ..models import build_model
            from .build import model_kwargs

            def build() -> None:
                try:
                    build_model(self.model.name, **model_kwargs(self))
                except TypeError as err:
                    raise ValueError(f"build_model({self.model.name!r}) cannot take {self.model.kwargs}: {err}")

            constructor_checks("model", self.model, build, "kwargs")

    def check_pruner(self) -> None:
        """Build the pruner with ``pruning.options`` (``job/build.py``): its own checks name the bad option, as
        the user wrote it (``pruning.options.tau``, or ``pruning.tau`` in an old config)."""
        from .build import check_pruner

        keys = {name: self.pruning.origins.get(name, f"pruning.options.{name}") for name in self.pruning.options}
        constructor_checks("pruning.options", self.pruning, lambda: check_pruner(self), keys=keys)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint_dict(self) -> Dict[str, Any]:
        """``to_dict`` as the first release hashed it: the pruning section in its old flat form and the keys added
        since left out at their default, so a run folder made then still resumes under the same results."""
        from .legacy import fingerprint

        out = self.to_dict()
        out["pruning"] = fingerprint(out["pruning"], self.pruning.legacy)
        for (section, name), default in ADDED_KEYS.items():
            if out.get(section, {}).get(name, default) == default:
                out.get(section, {}).pop(name, None)
        return out


def default_config_path() -> Path:
    return Path(__file__).parents[1] / "configs" / "fashion_mnist_small_cnn.yaml"


def load_config(source: Union[str, Path, Mapping[str, Any], None] = None,
                overrides: Optional[Mapping[str, Any]] = None) -> Config:
    """A validated ``Config`` from a YAML file, a dict, or (None) the shipped default."""
    import yaml

    if source is None:
        source = default_config_path()
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read config file {str(path)!r}: {err}") from None
        if not isinstance(data, dict) or not data:
            what = "empty" if data is None else f"a {type(data).__name__} ({data!r:.40})"
            raise ConfigError(f"{path}: a config is a mapping of sections (e.g. 'pruning:' with 'target: 0.5' under "
                              f"it), but this file is {what}")
    data = apply_overrides(copy.deepcopy(data), overrides or {})
    legacy, origins = {}, {}
    if isinstance(data.get("pruning"), Mapping):
        from .legacy import migrate

        try:
            data["pruning"], legacy, origins = migrate(data["pruning"])
        except ValueError as err:
            raise ConfigError(str(err)) from None
    config = build_section(Config, data, "")
    config.pruning.legacy, config.pruning.origins = legacy, origins
    config.check_pruner()
    return config

