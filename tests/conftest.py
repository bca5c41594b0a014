import os
import subprocess
import sys

import pytest
import torch

from nni_mrs_plugin.data import load_dataset
from nni_mrs_plugin.models import build_model

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                            pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine")])]

# (model name, input channels, image side) for the four supported architectures
MODEL_SHAPES = {
    "resnet18": (3, 32),
    "vgg16_bn": (3, 32),
    "mobilenet_v2": (3, 32),
    "small_cnn": (1, 28),
}


def make_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A model with non-trivial BatchNorm statistics: at default init beta = 0 would hide masking mistakes."""
    torch.manual_seed(seed)
    channels, _ = MODEL_SHAPES[name]
    model = build_model(name, num_classes=10, in_channels=channels)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def dummy_input(name: str, batch: int = 2, device: str = "cpu") -> torch.Tensor:
    channels, side = MODEL_SHAPES[name]
    return torch.rand(batch, channels, side, side, device=device)


def run_python(code_or_args, env_extra=None, timeout=600):
    """Run a fresh interpreter (so import-time hooks and fixes start from scratch)."""
    env = dict(os.environ)
    env.update(env_extra or {})
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else list(code_or_args)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def fashion():
    """2,000 real Fashion-MNIST training images in batches of 100 (MRS calibration and short training)."""
    train = load_dataset("fashion_mnist", train=True, subset=2000, seed=0)
    return torch.utils.data.DataLoader(train, batch_size=100, shuffle=False)


@pytest.fixture(scope="module")
def calibration(fashion):
    """The first 128 of those images as one (x, y) pair."""
    return next(iter(torch.utils.data.DataLoader(fashion.dataset, batch_size=128)))
