"""Every bad input is one clear line (issue 13 §3): a table of CLI and API inputs, each asserting a single line that
names the bad value, no traceback, exit code 2 from the CLI, and a run folder left as it was."""
import gzip
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nni_mrs_plugin.job.cli import main

FASHION = Path("/usr/share/datasets/fashion-mnist")
TINY = ["--set", "pretrain.epochs=0", "--set", "data.train_subset=256", "--set", "data.test_subset=64",
        "--set", "pruning.options.n_samples=32", "--set", "progress=false"]


def snapshot(folder: Path):
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*")) if folder.exists() else None


def cli(argv, capsys):
    """(exit code, stderr) of the CLI run in-process; argparse's own errors exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err.strip()


# (id, files to write in tmp_path {name: text}, argv with {tmp} for tmp_path, text the line must contain)
CLI_CASES = [
    ("yaml-list", {"c.yaml": "- a\n- b\n"}, ["run", "{tmp}/c.yaml", "--set", "seed=1"], "this file is a list"),
    ("yaml-scalar", {"c.yaml": "3\n"}, ["run", "{tmp}/c.yaml"], "this file is a int"),
    ("yaml-empty", {"c.yaml": ""}, ["run", "{tmp}/c.yaml"], "this file is empty"),
    ("yaml-false", {"c.yaml": "false\n"}, ["run", "{tmp}/c.yaml"], "this file is a bool"),
    ("yaml-invalid", {"c.yaml": "pruning: [\n"}, ["run", "{tmp}/c.yaml"], "is not valid YAML"),
    ("config-missing", {}, ["run", "{tmp}/nope.yaml"], "nope.yaml' does not exist"),
    ("unknown-key", {}, ["run", "--set", "pruning.tua=0.5"], "did you mean 'pruning.options.tau'"),
    ("unknown-section", {}, ["run", "--set", "prunning.tau=0.5"], "unknown key 'prunning'"),
    ("section-scalar", {}, ["run", "--set", "seed.x=1"], "'seed' is not a section"),
    ("target-high", {}, ["run", "--set", "pruning.target=2"], "got 2"),
    ("target-zero", {}, ["run", "--set", "pruning.target=0"], "got 0"),
    ("target-text", {}, ["run", "--set", "pruning.target=half"], "got 'half'"),
    ("budget", {}, ["run", "--set", "pruning.budget=speed"], "unknown budget 'speed'"),
    ("rule", {}, ["run", "--set", "pruning.options.rule=greedy"], "unknown allocation rule 'greedy'"),
    ("rule-estimator", {}, ["run", "--set", "pruning.options.rule=budget", "--set", "pruning.options.estimator=weight"],
     "needs estimator='curve'"),
    ("estimator", {}, ["run", "--set", "pruning.options.estimator=hessian"], "unknown estimator 'hessian'"),
    ("criterion", {}, ["run", "--set", "pruning.options.criterion=l3"], "unknown criterion 'l3'"),
    ("tau", {}, ["run", "--set", "pruning.options.tau=-1"], "got -1"),
    ("rho", {}, ["run", "--set", "pruning.options.estimator=weight", "--set", "pruning.options.rho=0"],
     "pruning.options.rho: rho must be > 0"),
    ("samples", {}, ["run", "--set", "pruning.options.n_samples=0"], "got 0"),
    ("r-max", {}, ["run", "--set", "pruning.r_max=0"], "got 0"),
    ("op-types-empty", {}, ["run", "--set", "pruning.op_types=[]"], "got []"),
    ("op-types-yaml", {}, ["run", "--set", "pruning.op_types=[Conv2d"], "is not valid YAML"),
    ("set-no-equals", {}, ["run", "--set", "pruning.tau"], "expected KEY=VALUE"),
    ("pruner", {}, ["run", "--set", "pruning.pruner=nope"], "must be one of"),
    ("method", {}, ["run", "--set", "finetune.method=madry"], "unknown method 'madry'"),
    ("eps", {}, ["run", "--set", "pretrain.eps=2"], "eps must be an L-inf radius"),
    ("epochs", {}, ["run", "--set", "finetune.epochs=-1"], "got -1"),
    ("lr", {}, ["run", "--set", "finetune.lr=0"], "got 0"),
    ("batch-size-type", {}, ["run", "--set", "data.batch_size=big"], "got 'big'"),
    ("dataset", {}, ["run", "--set", "data.dataset=imagenet"], "imagenet"),
    ("normalization", {}, ["run", "--set", "data.normalization=[[0.5]]"], "data.normalization: must be [mean, std]"),
    ("model", {}, ["run", "--set", "model.name=resnet50"], "must be one of"),
    ("attack", {}, ["run", "--set", "eval.attacks=[pgd0]"], "unknown attack 'pgd0'"),
    ("device-tpu", {}, ["run", "--set", "device=tpu0"], "got 'tpu0'"),
    ("device-cuda", {}, ["run", "--set", "device=cuda:7"], "cuda:7"),
    ("until", {}, ["run", "--until", "deploy"], "deploy"),
    ("unreachable-target", {}, ["run", "--output", "{tmp}/run", *TINY, "--set", "pruning.target=0.999"],
     "cannot remove 0.9990"),
    ("output-through-file", {"file": "x"}, ["run", "--output", "{tmp}/file/run", *TINY], "file/run"),
    ("stages-damaged", {"run/stages.json": '{"fingerprint": "ab'}, ["run", "--output", "{tmp}/run", *TINY],
     "stages.json is damaged"),
    ("other-config-folder", {"run/stages.json": '{"fingerprint": "0", "stages": {}}'},
     ["run", "--output", "{tmp}/run", *TINY], "holds a run of a different config"),
    ("eval-missing-checkpoint", {}, ["eval", "{tmp}/none.pt"], "none.pt' does not exist"),
    ("eval-not-a-checkpoint", {"junk.pt": "not a checkpoint"}, ["eval", "{tmp}/junk.pt"],
     "junk.pt is not a model saved by nni-mrs"),
    ("eval-missing-config", {"junk.pt": "x"}, ["eval", "{tmp}/junk.pt", "--config", "{tmp}/nope.yaml"],
     "nope.yaml' does not exist"),
    ("compare-targets", {}, ["compare", "--targets", "1.5", "--pruners", "l1"], "1.5"),
    ("command", {}, ["deploy"], "invalid choice: 'deploy'"),
]


@pytest.mark.parametrize("name, files, argv, expected", CLI_CASES, ids=[case[0] for case in CLI_CASES])
def test_cli_bad_input_is_one_line(name, files, argv, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default run folders land here, not in the repository
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    before = snapshot(tmp_path / "run")
    code, err = cli([arg.replace("{tmp}", str(tmp_path)) for arg in argv], capsys)
    lines = [line for line in err.splitlines() if not line.startswith("usage:") and line.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err and len(lines) == 1, err
    assert expected in lines[0], err
    assert snapshot(tmp_path / "run") == before, "a failed command changed the run folder"


def _fashion_copy(tmp_path: Path, damage=None) -> Path:
    folder = tmp_path / "fm"
    shutil.copytree(FASHION, folder)
    if damage:
        damage(folder / "train-labels-idx1-ubyte.gz")
    return folder


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[:100])


def _not_gzip(path: Path):
    path.write_bytes(b"plain text, not gzip")


def _short_payload(path: Path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    with gzip.open(path, "wb") as f:
        f.write(data[:1000])


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs the dataset-fashion-mnist package")
@pytest.mark.parametrize("damage, expected", [(_truncate, "not a readable IDX file"),
                                              (_not_gzip, "not a readable IDX file"),
                                              (_short_payload, "not a readable IDX file"),
                                              (None, "holds no train-images-idx3-ubyte.gz")],
                         ids=["truncated", "not-gzip", "short-payload", "empty-env-folder"])
def test_damaged_fashion_mnist_is_one_line(damage, expected, tmp_path, capsys, monkeypatch):
    folder = _fashion_copy(tmp_path, damage) if damage else tmp_path / "empty"
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv("NNI_MRS_FASHION_MNIST", str(folder))
    monkeypatch.chdir(tmp_path)
    code, err = cli(["run", "--output", str(tmp_path / "run"), *TINY], capsys)
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert expected in err


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return {"logits": self.fc(x.flatten(1))}


def _api_cases():
    from nni_mrs_plugin import build_model, load_dataset
    from nni_mrs_plugin.attacks import build_attack
    from nni_mrs_plugin.checkpoint import load_pruned, save_pruned
    from nni_mrs_plugin.host.speedup import remove_channels
    from nni_mrs_plugin.evaluate import evaluate_robustness
    from nni_mrs_plugin.harp.pruner import HARPPruner
    from nni_mrs_plugin.mrs.allocator import MRSSparsityAllocator
    from nni_mrs_plugin.mrs.pruner import MRSPruner
    from nni_mrs_plugin.host.registry import get_pruner
    from nni_mrs_plugin.train.fit import fit
    from nni_mrs_plugin.train.trainer import AdversarialTrainer

    small = lambda: build_model("small_cnn", in_channels=1)  # noqa: E731
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    linear = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    select = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]
    return [
        ("labels-out-of-range", lambda: evaluate_robustness(linear, [(torch.rand(4, 4), torch.tensor([0, 1, 2, 7]))],
                                                            ["clean"]), "labels must be in [0, 2]"),
        ("model-returns-dict", lambda: evaluate_robustness(DictModel(), [(torch.rand(2, 4), torch.tensor([0, 1]))],
                                                           ["clean"]), "got dict"),
        ("eval-eps", lambda: evaluate_robustness(linear, [(torch.rand(2, 4), torch.tensor([0, 1]))], eps=3), "eps"),
        ("eval-attack", lambda: evaluate_robustness(linear, [], ["pgd0"]), "pgd0"),
        ("eval-empty", lambda: evaluate_robustness(linear, [], ["clean"]), "no samples"),
        ("load-not-checkpoint", lambda: load_pruned(Path(__file__)), "test_bad_inputs.py is not a model saved"),
        ("load-missing", lambda: load_pruned("/nonexistent/model.pt"), "does not exist"),
        ("load-whole-pickled-model", lambda: load_pruned(_pickled_model()), "a whole model from torch.save(model)"),
        ("save-unknown-name", lambda: save_pruned("/nonexistent/x.pt", small(), "my_cnn"), "unknown model 'my_cnn'"),
        ("save-other-architecture", lambda: save_pruned("/nonexistent/x.pt", small(), "resnet18"),
         "cannot rebuild SmallCNN as 'resnet18'"),
        ("model-misspelt-argument", lambda: build_model("resnet18", num_class=10),
         "unexpected argument 'num_class'; it takes num_classes, in_channels, mean, std, width"),
        ("remove-unknown-layer", lambda: remove_channels(small(), [{"op_names": ["classifier.9"], "sparse_ratio": 0.5}],
                                                         torch.rand(2, 1, 28, 28)), "op_names ['classifier.9'] are not"),
        ("model-name", lambda: build_model("resnet50"), "unknown model 'resnet50'"),
        ("model-width", lambda: build_model("vgg16_bn", width=0), "width must be a number > 0"),
        ("model-classes", lambda: build_model("small_cnn", num_classes=0), "got 0"),
        ("dataset", lambda: load_dataset("imagenet"), "unknown dataset 'imagenet'"),
        ("dataset-subset", lambda: load_dataset("fashion_mnist", subset=0), "got 0"),
        ("trainer-method", lambda: AdversarialTrainer("madry"), "unknown method 'madry'"),
        ("trainer-eps", lambda: AdversarialTrainer("pgd", eps=-1), "eps"),
        ("fit-epochs", lambda: fit(small(), [], epochs=0), "epochs must be an integer >= 1"),
        ("fit-labels-out-of-range", lambda: fit(small(), DataLoader(TensorDataset(x, y + 10), batch_size=4), epochs=1,
                                                progress=False),
         "labels must be in [0, 9] for a model with 10 outputs, got labels 1"),
        ("training-step-float-labels", lambda: AdversarialTrainer("pgd", eps=0.1, steps=1).training_step(
            (x, y.float()), small()), "labels must be integer class indices, got torch.float32"),
        ("fit-resume", lambda: fit(small(), [], epochs=1, resume=True), "resume=True needs checkpoint_dir"),
        ("attack-name", lambda: build_attack(small(), "deepfool9", 0.1), "deepfool9"),
        ("pruner-name", lambda: get_pruner("nope"), "nope"),
        ("allocator-rule", lambda: MRSSparsityAllocator(rule="greedy"), "unknown allocation rule 'greedy'"),
        ("allocator-curve-ratios", lambda: MRSSparsityAllocator(rule="budget", ratios=[0, 0.5]),
         "curve ratios must be"),
        ("allocator-tolerance", lambda: MRSSparsityAllocator(tolerance=0.7), "got 0.7"),
        ("allocator-budget", lambda: MRSSparsityAllocator(budget="latency"), "unknown budget 'latency'"),
        ("allocator-feature-without-clean", lambda: __import__(
            "nni_mrs_plugin.mrs.sensitivity", fromlist=["FeatureMRS"]).FeatureMRS(progress=False)(
            small(), [], x, y), "needs the clean calibration samples"),
        ("pruner-target", lambda: MRSPruner(small(), [{"op_types": ["Conv2d"], "sparse_ratio": 1.5}],
                                            calibration=(x, y)), "got 1.5"),
        ("pruner-no-data", lambda: MRSPruner(small(), select), "needs calibration data"),
        ("harp-normalised-inputs", lambda: HARPPruner(small(), select, train_data=(x * 4 - 2, y), trainer="pgd",
                                                      eps=0.1, attack_steps=1, steps=1, progress=False).compress(),
         "HARPPruner: inputs range over"),
        ("harp-labels-out-of-range", lambda: HARPPruner(small(), select, train_data=(x, y + 10), trainer="pgd",
                                                        eps=0.1, attack_steps=1, steps=1, progress=False).compress(),
         "HARPPruner: labels must be in [0, 9]"),
        ("pruner-float-labels", lambda: MRSPruner(small(), select, calibration=(x, y.float()), tau=1.0,
                                                  progress=False).compress(), "got torch.float32"),
        ("pruner-labels-out-of-range", lambda: MRSPruner(small(), select, calibration=(x, y + 10), tau=1.0,
                                                         progress=False).compress(),
         "calibration: labels must be in [0, 9] for a model with 10 outputs, got labels 10..17"),
        ("pruner-round-to", lambda: MRSPruner(small(), select, calibration=(x, y), round_to=0),
         "round_to must be an integer >= 1 (pruned units keep a multiple of it) or 'auto', got 0"),
        ("harp-round-to", lambda: HARPPruner(small(), select, train_data=(x, y), round_to=2.5),
         "round_to must be an integer >= 1 (pruned units keep a multiple of it) or 'auto', got 2.5"),
        ("pruner-layer", lambda: MRSPruner(small(), [{"op_names": ["nope"], "sparse_ratio": 0.5}],
                                           calibration=(x, y)), "'nope'"),
        ("allocator-granularity", lambda: _granularity(), "closest reachable fractions found are"),
        ("pruner-calibration-channels", lambda: MRSPruner(small(), select, calibration=(x.repeat(1, 3, 1, 1), y),
                                                          dummy_input=x[:1], progress=False).compress(),
         "calibration: the model cannot take inputs of shape (8, 3, 28, 28); its first layer features.0 (Conv2d) "
         "takes 1 channels"),
        ("pruner-layer-not-reached", lambda: MRSPruner(TwoBranches(), select, calibration=(x, y),
                                                       dummy_input=x[:1]).compress(),
         "selected layers ['cold'] never run on the dummy input"),
        ("pruner-estimator-option", lambda: MRSPruner(small(), select, calibration=(x, y), steps=1),
         "unknown option 'steps' for estimator 'feature' and rule 'power'; they take: tau"),
        ("pruner-unreachable", lambda: MRSPruner(small(), [{"op_names": ["features.0"], "sparse_ratio": 0.9}],
                                                 calibration=(x, y), progress=False, n_samples=8).compress(),
         "cannot remove 0.9000"),
    ]


class TwoBranches(nn.Module):
    """A forward that branches on the data: the dummy input (in [0, 1)) never reaches ``cold``."""

    def __init__(self):
        super().__init__()
        self.warm, self.cold, self.head = nn.Conv2d(1, 8, 3), nn.Conv2d(1, 8, 3), nn.Linear(8, 10)

    def forward(self, x):
        y = self.warm(x) if x.mean() >= 0 else self.cold(x)
        return self.head(y.mean((2, 3)))


def _pickled_model():
    """A whole model pickled by torch.save: torch's own error advises unpickling it, which must not be echoed."""
    import io

    buffer = io.BytesIO()
    torch.save(nn.Linear(2, 2), buffer)
    buffer.seek(0)
    return buffer


def _granularity():
    """NNI's quick start LeNet, convolutions only, 0.1 of the FLOPs: no channel count lands within ±0.01."""
    import sys

    from nni.compression.pruning import L1NormPruner
    from nni_mrs_plugin.budget.baselines import baseline_masks

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "nni_examples"))
    from quickstart_pruning import LeNet

    baseline_masks(LeNet().eval(), [{"op_types": ["Conv2d"], "sparse_ratio": 0.1}], torch.zeros(1, 1, 28, 28),
                   L1NormPruner)


API_CASES = _api_cases()


@pytest.mark.parametrize("name, thunk, expected", API_CASES, ids=[case[0] for case in API_CASES])
def test_api_bad_input_is_one_line(name, thunk, expected):
    with pytest.raises(ValueError) as info:
        thunk()
    message = str(info.value)
    assert "\n" not in message and expected in message, message


def test_the_table_is_big_enough():
    damaged, other_data = 4, 2
    assert len(CLI_CASES) + len(API_CASES) + damaged + other_data >= 60


@pytest.mark.parametrize("kwargs, expected", [({"name": "resnet18", "in_channels": 3}, "cannot take fashion_mnist inputs"),
                                              ({"name": "small_cnn", "in_channels": 1, "num_classes": 7},
                                               "the data has 10 classes")], ids=["channels", "classes"])
def test_eval_of_a_model_for_other_data_is_one_line(kwargs, expected, tmp_path, capsys):
    """Evaluating it anyway printed near-chance accuracy and exit code 0."""
    from nni_mrs_plugin.checkpoint import save_pruned
    from nni_mrs_plugin.models import build_model

    name = kwargs.pop("name")
    save_pruned(tmp_path / "m.pt", build_model(name, **kwargs), name, **kwargs)
    code, err = cli(["eval", str(tmp_path / "m.pt")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        if x.mean() > 0.5:  # data-dependent control flow: one traced graph cannot hold both paths
            return self.conv(x).flatten(1)
        return self.conv(x * 2).flatten(1)


def test_a_model_branching_on_data_traces_the_branch_its_dummy_input_takes():
    """NNI's concrete tracer follows the branch the dummy input takes. On Python 3.11+ it used to fail here with an
    IndexError in ConcreteProxy.__bool__ (a bytecode bug, fixed by the ``bytecode-offsets`` compat fix), which the
    error message then blamed on the model."""
    from nni_mrs_plugin.host.speedup import trace

    model = Branching().eval()
    for value in (0.9, 0.1):  # one branch each
        x = torch.full((1, 1, 8, 8), value)
        assert torch.allclose(trace(model, x)(x), model(x))
