"""The MRPF job's YAML config: sections model, data, pretrain, pruning, finetune, eval, output.

Every key has a default, so a config only states what differs. Unknown keys get "did you mean ...", and wrong
types or ranges get one line naming the key (``ConfigError``). ``overrides`` such as
``{"pruning.tau": 0.5}`` come from ``--set`` on the command line or from an NNI trial's parameters.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

__all__ = ["ConfigError", "Config", "load_config", "default_config_path", "apply_overrides"]


class ConfigError(ValueError):
    """A config value or key is wrong; the message names it."""


def _require(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}, got {value!r}")


def _constructor_checks(key: str, section: Any, build: Callable[[], Any], field_name: Optional[str] = None) -> None:
    """Run the checks of the object a section configures (``build()``), so the rules live in one place; its
    ValueError becomes a ConfigError naming ``field_name``, else the first key of the section the message names."""
    try:
        build()
    except ValueError as err:
        message = str(err)
        names = {f.name for f in dataclasses.fields(section)}
        mentioned = field_name or next((word for word in re.findall(r"[a-z_]+", message) if word in names), None)
        raise ConfigError(f"{key}.{mentioned}: {message}" if mentioned else f"{key}: {message}") from None


@dataclass
class ModelSection:
    name: str = "small_cnn"
    checkpoint: Optional[str] = None  # dense weights to start from (state dict); skips pre-training

    def check(self, key: str) -> None:
        from ..models import MODELS

        _require(self.name in MODELS, f"{key}.name", f"must be one of {', '.join(sorted(MODELS))}", self.name)


@dataclass
class DataSection:
    dataset: str = "fashion_mnist"
    root: Optional[str] = None
    train_subset: Optional[int] = 10000
    test_subset: Optional[int] = 1000
    batch_size: int = 128
    normalization: Optional[List[List[float]]] = None  # [mean, std]: the loaders normalise, attacks run on pixels

    def check(self, key: str) -> None:
        from ..data import DATASETS

        _require(self.dataset in DATASETS, f"{key}.dataset", f"must be one of {', '.join(sorted(DATASETS))}",
                 self.dataset)
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"{key}.{name}", "must be >= 1 or null (all)", value)
        _require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1", self.batch_size)
        channels = DATASETS[self.dataset].in_channels
        _require(self.normalization is None or (len(self.normalization) == 2 and all(
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

    def check(self, key: str) -> None:
        from ..attacks import check_eps
        from ..train.trainer import AdversarialTrainer

        _require(self.epochs >= 0, f"{key}.epochs", "must be >= 0", self.epochs)
        _require(self.lr > 0, f"{key}.lr", "must be > 0", self.lr)
        _constructor_checks(key, self, lambda: self.eps is None or check_eps(self.eps, positive=True))
        _constructor_checks(key, self, lambda: AdversarialTrainer(self.method, eps=self.eps or 0.0, alpha=self.alpha,
                                                                  steps=self.steps, beta=self.beta))


# (section, key) -> default, for keys added after run folders existed; see Config.fingerprint_dict
ADDED_KEYS: Dict[Tuple[str, str], Any] = {("pruning", "rule"): "power", ("pruning", "recalibrate"): False,
    ("pruning", "rounds"): 10, ("data", "normalization"): None, ("pruning", "epochs"): 1}


@dataclass
class PruningSection:
    pruner: str = "mrs"  # or any registry name: l1, l2, fpgm, taylor, ... (uniform ratios, same budget)
    target: float = 0.5  # fraction of the budget the sped-up model loses
    budget: str = "flops"
    estimator: Optional[str] = None  # null: the rule's own (power: feature, chosen on validation; budget: curve)
    criterion: str = "taylor"  # channels inside a unit; chosen on validation with the estimator
    tau: float = 0.0  # uniform ratios: no MRS allocation beat them on validation (BENCHMARKS.md); 1.0: by MRS
    rule: str = "power"  # 'power': one MRS per unit; 'budget': loss curves vs cost; 'joint': measured step by step
    recalibrate: bool = False  # probe/curve estimators: re-estimate BatchNorm statistics on each pruned model
    rounds: int = 10  # rule 'joint': measured steps to the target
    rho: float = 0.1
    steps: int = 5
    samples: int = 512
    eps: Optional[float] = None
    r_max: float = 0.9
    epochs: int = 1  # pruners that train to choose (harp): passes over the training set
    op_types: List[str] = field(default_factory=lambda: ["Conv2d", "Linear"])
    exclude: List[str] = field(default_factory=list)

    def estimator_name(self) -> str:
        """``estimator``, or the rule's own when it is null, as ``MRSPruner`` resolves ``estimator=None``."""
        from ..mrs.allocator import default_estimator
        return self.estimator or default_estimator(self.rule)

    def check(self, key: str) -> None:
        from ..mrs.allocator import MRSSparsityAllocator
        from ..mrs.sensitivity import ESTIMATORS
        from ..host.registry import available_pruners

        _require(self.pruner in available_pruners(), f"{key}.pruner",
                 f"must be one of {', '.join(available_pruners())}", self.pruner)
        _require(0 < self.target < 1, f"{key}.target", "must be in (0, 1)", self.target)
        _require(self.samples >= 1, f"{key}.samples", "must be >= 1", self.samples)
        _require(self.epochs >= 1, f"{key}.epochs", "must be >= 1", self.epochs)
        _require(0 < self.r_max, f"{key}.r_max", "must be in (0, 1)", self.r_max)
        _require(bool(self.op_types), f"{key}.op_types", "must name at least one layer type", self.op_types)
        options = {name: getattr(self, name) for name in getattr(ESTIMATORS.get(self.estimator_name()), "options", ())}
        options.update({"rounds": self.rounds} if self.rule == "joint" else {"tau": self.tau} if self.rule == "power" else {})
        _constructor_checks(key, self, lambda: ESTIMATORS["weight"](rho=self.rho, steps=self.steps))  # its keys
        _constructor_checks(key, self, lambda: MRSSparsityAllocator(
            self.estimator_name(), self.budget, rule=self.rule, criterion=self.criterion, eps=self.eps,
            r_max=self.r_max, progress=False, **options))


@dataclass
class EvalSection:
    attacks: List[str] = field(default_factory=lambda: ["clean", "fgsm", "pgd20", "autoattack"])
    eps: Optional[float] = None
    samples: Optional[int] = 1000
    autoattack_samples: Optional[int] = 100

    def check(self, key: str) -> None:
        from ..attacks import check_eps, check_eval_attacks

        _constructor_checks(key, self, lambda: check_eval_attacks(self.attacks), "attacks")
        _constructor_checks(key, self, lambda: self.eps is None or check_eps(self.eps))
        for name in ("samples", "autoattack_samples"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"{key}.{name}", "must be >= 1 or null (all)", value)


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

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint_dict(self) -> Dict[str, Any]:
        """``to_dict`` without the keys added after the first release while they hold their default: a run folder
        made before a key existed still resumes under the same results."""
        out = self.to_dict()
        out["pruning"]["estimator"] = self.pruning.estimator_name()  # null resumes folders that named the same one
        for (section, name), default in ADDED_KEYS.items():
            if out.get(section, {}).get(name, default) == default:
                out.get(section, {}).pop(name, None)
        return out


def _type_ok(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return any(_type_ok(value, arg) for arg in args)
    if origin in (list, List):
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, List):
        return f"a list of {_type_name(args[0])}"
    return {float: "a number", int: "an integer", str: "a string", bool: "true/false"}.get(hint, str(hint))


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: must be a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown key '{where}'{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value if value is not None else {}, f"{where}.")
            continue
        if not _type_ok(value, hint):
            raise ConfigError(f"{where}: must be {_type_name(hint)}, got {value!r}")
        values[key] = float(value) if hint in (float, Optional[float]) and isinstance(value, int) else value
    instance = cls(**values)
    if hasattr(instance, "check"):
        instance.check(prefix.rstrip("."))
    return instance


def apply_overrides(data: Dict[str, Any], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """Set dotted keys (``{"pruning.tau": 0.5}``) in a raw config dict; the result is validated by ``Config``."""
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = str(dotted).split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node[leaf] = value
    return data


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
    return _build(Config, data, "")

