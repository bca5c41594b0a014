"""The convolutional models: CIFAR-style ResNet18, VGG16-bn, MobileNetV2, and a small 28x28 CNN."""
from __future__ import annotations

from typing import Optional, Sequence, Type

import torch
from torch import nn

__all__ = ["Normalize", "Zeros", "ResNet18", "VGG16BN", "InvertedResidual", "MobileNetV2", "SmallCNN"]

# Mean/std per dataset family, used when the caller gives none.
_DEFAULT_STATS = {
    1: ((0.2860,), (0.3530,)),  # Fashion-MNIST
    3: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),  # CIFAR-10
}


class Normalize(nn.Module):
    """(x - mean) / std as a layer, so the model's input space stays [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values but std has {len(std)}; give one per input channel")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Zeros(nn.Module):
    """The branch of a residual block that layer pruning removed: zeros shaped like the input, or with
    ``channels`` channels and the spatial size a ``stride`` gives (a block whose shortcut downsamples)."""

    def __init__(self, channels: Optional[int] = None, stride: int = 1):
        super().__init__()
        self.channels, self.stride = channels, stride

    def shape(self, shape: Sequence[int]) -> tuple:
        if self.channels is None and self.stride == 1:
            return tuple(shape)
        return (shape[0], self.channels or shape[1], *(-(-size // self.stride) for size in shape[2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels is None and self.stride == 1:
            return torch.zeros_like(x)
        return x.new_zeros(self.shape(x.shape))

    def extra_repr(self) -> str:
        return "" if self.channels is None and self.stride == 1 else f"channels={self.channels}, stride={self.stride}"


def _normalize(in_channels: int, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> Normalize:
    default_mean, default_std = _DEFAULT_STATS.get(in_channels, ((0.5,) * in_channels, (0.5,) * in_channels))
    mean = tuple(mean) if mean is not None else default_mean
    std = tuple(std) if std is not None else default_std
    if len(mean) != in_channels:
        raise ValueError(f"mean has {len(mean)} values for in_channels={in_channels}")
    return Normalize(mean, std)


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = _conv_bn(cin, cout, kernel=1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def _scaled(channels: int, width: float) -> int:
    """Channels under a width multiplier (at least 1); a clear error for a multiplier that is not > 0."""
    if not (isinstance(width, (int, float)) and width > 0):
        raise ValueError(f"width must be a number > 0 (1.0 = the published widths), got {width!r}")
    return max(1, int(round(channels * width)))


class ResNet18(nn.Module):
    """CIFAR-style ResNet18: 3x3 stride-1 stem, no max-pool (He et al. 2016, as used in robust-pruning work).
    ``width`` scales every layer's channels (0.25 -> 16 ... 128), so the architecture fits a small CPU."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, mean=None, std=None, width: float = 1.0):
        super().__init__()
        self.normalize = _normalize(in_channels, mean, std)
        stem = _scaled(64, width)
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        layers, cin = [], stem
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            cout = _scaled(cout, width)
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class VGG16BN(nn.Module):
    """VGG16 with BatchNorm, CIFAR head (one linear layer). Pools use ceil_mode so 28x28 inputs also work.
    ``width`` scales every conv's channels (0.25 -> 16 ... 128)."""

    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, num_classes: int = 10, in_channels: int = 3, mean=None, std=None, width: float = 1.0):
        super().__init__()
        self.normalize = _normalize(in_channels, mean, std)
        layers, cin = [], in_channels
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                v = _scaled(v, width)
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))
        return self.classifier(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, depthwise 3x3, 1x1 projection; residual when the shape allows."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, act: Type[nn.Module] = nn.ReLU6):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            act(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 with CIFAR strides: stride-1 stem and stride 1 in the second stage (32x32 inputs)."""

    CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 10, in_channels: int = 3, mean=None, std=None):
        super().__init__()
        self.normalize = _normalize(in_channels, mean, std)
        layers = [nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)]
        cin = 32
        for expand, cout, repeats, stride in self.CFG:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))
        return self.classifier(torch.flatten(self.pool(x), 1))


class SmallCNN(nn.Module):
    """Four conv layers and two linear layers for 28x28 grayscale images (Fashion-MNIST); trains on a CPU."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, mean=None, std=None, image_size: int = 28):
        super().__init__()
        self.normalize = _normalize(in_channels, mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * side * side, 256), nn.ReLU(inplace=True), nn.Linear(256, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))
