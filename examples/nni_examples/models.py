"""Helpers in the shape of NNI's ``examples/compression/models.py``, offline: a ResNet18 (width 0.25, one input
channel) on Fashion-MNIST instead of torchvision's on CIFAR-10. The scripts next to this file mirror NNI 3.0's
pruning examples; each ``*_mrs.py`` is its twin with MRS and adversarial training, and differs from it only in
imports, the pruner line and the training step (``tests/test_examples.py`` checks the diff).

Sizes are tiny so the tests run them; set ``NNI_EXAMPLES_TRAIN``, ``NNI_EXAMPLES_TEST`` and
``NNI_EXAMPLES_EPOCHS`` for a real run.
"""
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from nni_mrs_plugin import build_model, load_dataset

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TRAIN = int(os.environ.get("NNI_EXAMPLES_TRAIN", 1000))
TEST = int(os.environ.get("NNI_EXAMPLES_TEST", 500))
EPOCHS = int(os.environ.get("NNI_EXAMPLES_EPOCHS", 1))


def build_resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=10, in_channels=1, width=0.25).to(device)


def prepare_dataloader():
    train = load_dataset("fashion_mnist", train=True, subset=TRAIN, seed=0)
    test = load_dataset("fashion_mnist", train=False, subset=TEST, seed=0)
    generator = torch.Generator().manual_seed(0)
    return (DataLoader(train, batch_size=100, shuffle=True, generator=generator),
            DataLoader(test, batch_size=250, shuffle=False))


def prepare_optimizer(model: torch.nn.Module):
    import nni

    return nni.trace(torch.optim.SGD)(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def training_step(batch, model) -> torch.Tensor:
    x, y = batch[0].to(device), batch[1].to(device)
    return F.cross_entropy(model(x), y)


def train(model, optimizer, training_step, lr_scheduler=None, max_steps=None, max_epochs=None):
    """NNI's training function shape: ``max_steps`` (from a pruner) or ``max_epochs`` bounds the loop."""
    train_loader, _ = prepare_dataloader()
    step, epochs = 0, max_epochs if max_steps is None else 10 ** 6
    model.train()
    for _ in range(epochs):
        for batch in train_loader:
            if max_steps is not None and step >= max_steps:
                return
            loss = training_step(batch, model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if lr_scheduler is not None:
                lr_scheduler.step()
            step += 1


def evaluate(model, test_loader) -> float:
    """Clean top-1 accuracy in %."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
    return 100.0 * correct / len(test_loader.dataset)


def robust_accuracy(model, test_loader, eps: float = 0.1) -> float:
    """PGD-20 accuracy in % (torchattacks), printed by every script so the twins can be compared."""
    from nni_mrs_plugin import evaluate_robustness

    return 100.0 * evaluate_robustness(model, test_loader, ["pgd20"], eps=eps, progress=False)["pgd20"]["accuracy"]
