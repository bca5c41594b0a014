"""NNI pruners that train do so adversarially through AdversarialTrainer's training_func/training_step."""
import nni
import pytest
import torch
from nni.compression import TorchEvaluator
from nni.compression.pruning import SlimPruner, TaylorPruner
from torch.utils.data import DataLoader

from nni_mrs_plugin.train.trainer import AdversarialTrainer
from nni_mrs_plugin.data import load_dataset
from nni_mrs_plugin.models import build_model
from nni_mrs_plugin.host.speedup import output_channel_keep

# NNI patches optimizer.step after the traced scheduler exists; PyTorch then warns about call order, wrongly.
pytestmark = pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")


def setup(method: str):
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1)
    loader = DataLoader(load_dataset("fashion_mnist", True, subset=96, seed=1), batch_size=32)
    trainer = AdversarialTrainer(method, eps=0.1, steps=2)
    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01, momentum=0.9)
    schedule = nni.trace(torch.optim.lr_scheduler.CosineAnnealingLR)(optimizer, T_max=10)
    evaluator = TorchEvaluator(trainer.training_func(loader), optimizer, trainer.training_step,
                               lr_schedulers=schedule, dummy_input=torch.rand(1, 1, 28, 28))
    return model, trainer, evaluator


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_taylor_pruner_trains_on_adversarial_examples(method):
    model, trainer, evaluator = setup(method)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = TaylorPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], evaluator, training_steps=4)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    # 4 steps over a 3-batch loader: the step limit from the pruner crosses an epoch boundary
    assert trainer.adversarial_batches == 4
    assert set(masks) == {f"features.{i}" for i in (0, 3, 7, 10)}
    for layer_masks in masks.values():
        assert output_channel_keep(layer_masks["weight"]).float().mean().item() == pytest.approx(0.5)
    moved = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert "classifier.3.weight" in moved, "the optimizer NNI rebuilt never stepped"


def test_slim_pruner_trains_adversarially_through_its_patched_loss():
    model, trainer, evaluator = setup("mart")
    pruner = SlimPruner(model, [{"op_types": ["BatchNorm2d"], "sparse_ratio": 0.25}], evaluator, training_steps=2)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    assert trainer.adversarial_batches == 2
    assert masks and all(output_channel_keep(m["weight"]).float().mean().item() == pytest.approx(0.75)
                         for m in masks.values())


def test_mrs_pruner_draws_calibration_from_adversarial_evaluator_training():
    from nni.compression.speedup import ModelSpeedup

    from nni_mrs_plugin.evaluate import count_flops
    from nni_mrs_plugin.mrs.pruner import MRSPruner

    model, trainer, evaluator = setup("pgd")
    x = torch.rand(1, 1, 28, 28)
    dense = count_flops(model, x)
    pruner = MRSPruner(model, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}], evaluator,
                       estimator="taylor", training_steps=3, n_samples=96, progress=False)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    assert trainer.adversarial_batches == 3  # it trained adversarially, and those batches calibrated MRS
    ModelSpeedup(model, x, masks).speedup_model()
    assert abs(1 - count_flops(model, x) / dense - 0.5) <= 0.01
