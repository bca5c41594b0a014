import pytest
import torch

from conftest import MODEL_SHAPES
from nni_mrs_plugin.models import MODELS, Normalize, build_model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape_and_configurable_heads(name):
    channels, side = MODEL_SHAPES.get(name, (3, 32))  # MobileViT: CIFAR-sized
    model = build_model(name, num_classes=7, in_channels=channels).eval()
    assert model(torch.rand(3, channels, side, side)).shape == (3, 7)


@pytest.mark.parametrize("name", ["resnet18", "vgg16_bn", "mobilenet_v2"])
def test_cifar_models_take_grayscale_28x28_too(name):
    model = build_model(name, num_classes=10, in_channels=1).eval()
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_normalisation_is_the_first_layer():
    """Inputs stay in [0, 1] (what torchattacks expects); the model itself normalises."""
    model = build_model("resnet18", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    first = next(iter(model.children()))
    assert isinstance(first, Normalize)
    x = torch.full((1, 3, 4, 4), 0.75)
    assert torch.allclose(first(x), torch.ones_like(x))


def test_cifar_resnet_has_3x3_stem_and_no_maxpool():
    model = build_model("resnet18")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet50'.*resnet18"):
        build_model("resnet50")
    with pytest.raises(ValueError, match="num_classes and in_channels must be >= 1"):
        build_model("small_cnn", num_classes=0)
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize((0.5,), (0.0,))
    with pytest.raises(ValueError, match="mean has 1 values for in_channels=3"):
        build_model("resnet18", mean=(0.5,), std=(0.5,))


@pytest.mark.parametrize("name", ["vgg16_bn", "resnet18"])
def test_width_multiplier_scales_every_layer(name):
    from nni_mrs_plugin.models import build_model

    full, quarter = (build_model(name, in_channels=1, width=w) for w in (1.0, 0.25))
    convs = [(a.out_channels, b.out_channels) for a, b in zip(full.modules(), quarter.modules())
             if isinstance(a, torch.nn.Conv2d)]
    assert convs and all(q == f // 4 for f, q in convs), convs
    assert quarter(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="width must be a number > 0.*got -1"):
        build_model(name, width=-1)


@pytest.mark.parametrize("name, params", [("mobilevit_xxs", 954_234), ("mobilevit_xs", 1_936_698)])
def test_mobilevit_sizes_and_inputs(name, params):
    """MobileViT-XXS/XS as in the paper (1.27M/2.32M parameters with 1,000 classes; here 10), on 32- and 64-px
    inputs; a side that is not a multiple of 32 is a one-line error, not a reshape traceback."""
    model = build_model(name).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"multiples of 32; a MobileViT block got a 7x7 feature map") as info:
        build_model(name, in_channels=1)(torch.rand(2, 1, 28, 28))
    assert "\n" not in str(info.value)
