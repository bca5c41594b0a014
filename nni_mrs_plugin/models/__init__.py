"""Models for robust pruning experiments: CIFAR-style ResNet18, VGG16-bn, MobileNetV2, a small 28x28 CNN, and
MobileViT-XXS/XS.

Every model takes inputs in [0, 1] and normalises them in its first layer, because torchattacks bounds its
perturbations to [0, 1]: normalisation outside the model would make epsilon mean something else.
"""
from __future__ import annotations

import inspect
from functools import partial
from typing import Callable, Dict

from torch import nn

from .cnn import InvertedResidual, MobileNetV2, Normalize, ResNet18, SmallCNN, VGG16BN, Zeros
from .mobilevit import MobileViT

__all__ = ["Normalize", "Zeros", "ResNet18", "VGG16BN", "InvertedResidual", "MobileNetV2", "SmallCNN", "MobileViT",
           "MODELS", "build_model"]

MODELS: Dict[str, Callable[..., nn.Module]] = {
    "resnet18": ResNet18,
    "vgg16_bn": VGG16BN,
    "mobilenet_v2": MobileNetV2,
    "small_cnn": SmallCNN,
    "mobilevit_xxs": partial(MobileViT, "xxs"),
    "mobilevit_xs": partial(MobileViT, "xs"),
}


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a model by name (see ``MODELS``); unknown names raise a ValueError listing the known ones."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}")
    try:
        return factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as err:  # a misspelt keyword: name what the model takes
        if "unexpected keyword argument" not in str(err):
            raise
        takes = [n for n, p in inspect.signature(factory).parameters.items() if p.kind is p.KEYWORD_ONLY
                 or p.kind is p.POSITIONAL_OR_KEYWORD]
        raise ValueError(f"build_model({name!r}): unexpected argument {str(err).split('argument ')[-1]}; it takes "
                         f"{', '.join(takes)}") from None
