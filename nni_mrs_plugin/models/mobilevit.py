"""MobileViT-XXS and -XS (Mehta & Rastegari, ICLR 2022), an architecture of the MRPF paper, for 32- and 64-px inputs.

MobileNetV2 blocks, then MobileViT blocks: a local 3x3 conv, a 1x1 conv into the transformer width d, the feature
map unfolded into 2x2 patches (each of the 4 pixel positions attends over the patches), L transformer layers,
folded back, a 1x1 conv out and a 3x3 conv fusing it with the block's input. The stem has stride 1 (CIFAR-style,
as this package's ResNet18), so a 32-px input ends at 2x2 and a 64-px one at 4x4: sides must be multiples of 32.

Attention is written with Linear layers and matmuls rather than ``nn.MultiheadAttention``, which NNI's
ModelSpeedup cannot replace. Pruning reaches the MobileNetV2 blocks' hidden channels, the local convs, and the
transformer MLPs' hidden units; the transformer width and the attention stay whole (their channels go through the
unfolding reshape and residual LayerNorms, which removal cannot follow).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .cnn import InvertedResidual, _normalize

__all__ = ["MobileViT", "CONFIGS"]

# channels of the stem and the five stages, transformer widths d of stages 3-5, last 1x1 conv, MV2 expansion
CONFIGS = {
    "xxs": {"channels": (16, 16, 24, 48, 64, 80), "dims": (64, 80, 96), "last": 320, "expand": 2},
    "xs": {"channels": (16, 32, 48, 64, 80, 96), "dims": (96, 120, 144), "last": 384, "expand": 4},
}
DEPTHS = (2, 4, 3)  # transformer layers per MobileViT block
PATCH = 2


def _conv(cin: int, cout: int, kernel: int, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.SiLU(inplace=True)) if act else nn.Sequential(*layers)


class Attention(nn.Module):
    """Multi-head self-attention over (B, N, d) with a qkv Linear and an output Linear."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attention = (qkv[0] @ qkv[1].transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.proj((attention @ qkv[2]).transpose(1, 2).reshape(b, n, d))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer; the MLP's hidden width is 2d, as in MobileViT."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(dim), Attention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MobileViTBlock(nn.Module):
    def __init__(self, channels: int, dim: int, depth: int):
        super().__init__()
        self.local = _conv(channels, channels, 3)
        self.into = nn.Conv2d(channels, dim, 1, bias=False)
        self.transformer = nn.Sequential(*[TransformerLayer(dim) for _ in range(depth)], nn.LayerNorm(dim))
        self.out = _conv(dim, channels, 1)
        self.fuse = _conv(2 * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.into(self.local(x))
        b, d, h, w = y.shape
        try:  # (B, d, H, W) -> (B * 4, H * W / 4, d): each pixel position of a 2x2 patch attends over the patches
            y = y.reshape(b, d, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 3, 5, 2, 4, 1)
        except RuntimeError as err:
            raise ValueError(f"MobileViT needs inputs whose height and width are multiples of 32; a MobileViT "
                             f"block got a {h}x{w} feature map") from err
        y = self.transformer(y.reshape(b * PATCH * PATCH, (h // PATCH) * (w // PATCH), d))
        y = y.reshape(b, PATCH, PATCH, h // PATCH, w // PATCH, d).permute(0, 5, 3, 1, 4, 2).reshape(b, d, h, w)
        return self.fuse(torch.cat([x, self.out(y)], dim=1))


class MobileViT(nn.Module):
    """MobileViT ``variant`` ("xxs" or "xs") with a stride-1 stem: 32x32 inputs end at 2x2, 64x64 at 4x4."""

    def __init__(self, variant: str = "xxs", num_classes: int = 10, in_channels: int = 3,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
        super().__init__()
        if variant not in CONFIGS:
            raise ValueError(f"unknown MobileViT variant {variant!r}; choose one of {sorted(CONFIGS)}")
        config = CONFIGS[variant]
        c0, c1, c2, c3, c4, c5 = config["channels"]
        expand = config["expand"]
        self.normalize = _normalize(in_channels, mean, std)
        self.stem = _conv(in_channels, c0, 3)
        self.stage1 = InvertedResidual(c0, c1, 1, expand, nn.SiLU)
        self.stage2 = nn.Sequential(InvertedResidual(c1, c2, 2, expand, nn.SiLU),
                                    *[InvertedResidual(c2, c2, 1, expand, nn.SiLU) for _ in range(2)])
        stages = []
        for cin, cout, dim, depth in zip((c2, c3, c4), (c3, c4, c5), config["dims"], DEPTHS):
            stages.append(nn.Sequential(InvertedResidual(cin, cout, 2, expand, nn.SiLU),
                                        MobileViTBlock(cout, dim, depth)))
        self.stage3, self.stage4, self.stage5 = stages
        self.head = _conv(c5, config["last"], 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(config["last"], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(self.normalize(x))))
        x = self.head(self.stage5(self.stage4(self.stage3(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))
