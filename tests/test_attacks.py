"""attacks.py: one place builds every attack, and normalised inputs (outside [0, 1]) are a one-line error wherever
an attack would run on them, never a silent clamp (torchattacks clamps to [0, 1] and so ignores ε)."""
import pytest
import torch
from conftest import make_model
from torch.utils.data import DataLoader, TensorDataset

from nni_mrs_plugin.attacks import build_attack, check_pixel_range
from nni_mrs_plugin.evaluate import evaluate_robustness
from nni_mrs_plugin.mrs.pruner import MRSPruner
from nni_mrs_plugin.train.fit import fit
from nni_mrs_plugin.train.trainer import AdversarialTrainer

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's, as NNI-style scripts normalise with


@pytest.fixture(scope="module")
def loaders(fashion):
    """The same 256 real images in [0, 1] and normalised as transforms.Normalize(MEAN, STD) would."""
    x, y = next(iter(DataLoader(fashion.dataset, batch_size=256)))
    pixels = DataLoader(TensorDataset(x, y), batch_size=64)
    normalised = DataLoader(TensorDataset((x - MEAN) / STD, y), batch_size=64)
    return pixels, normalised


def assert_one_line_range_error(info):
    message = str(info.value)
    assert "\n" not in message and "inputs range over [-0.81" in message and "Normalize(mean, std)" in message


def test_check_pixel_range_names_the_range_and_the_fix(loaders):
    pixels, normalised = loaders
    check_pixel_range(next(iter(pixels))[0], "here")
    with pytest.raises(ValueError, match=r"^here: inputs range over \[-0\.81, 2\.0\d\]") as info:
        check_pixel_range(next(iter(normalised))[0], "here")
    assert_one_line_range_error(info)


def test_raw_0_255_pixels_are_told_to_scale_not_to_denormalise(loaders):
    pixels, _ = loaders
    with pytest.raises(ValueError, match=r"^here: inputs range over \[0, 2\d\d\].*raw 0-255 values\. Scale them to "
                                         r"\[0, 1\] \(transforms\.ToTensor\(\) does; or divide by 255\)$"):
        check_pixel_range(next(iter(pixels))[0] * 255, "here")


def test_evaluation_refuses_normalised_inputs_but_clean_accuracy_does_not_care(loaders):
    pixels, normalised = loaders
    model = make_model("small_cnn")
    with pytest.raises(ValueError) as info:
        evaluate_robustness(model, normalised, ("clean", "pgd5"), eps=0.1)
    assert_one_line_range_error(info)
    assert evaluate_robustness(model, normalised, ("clean",))["clean"]["samples"] == 256
    assert evaluate_robustness(model, pixels, ("clean", "pgd5"), eps=0.1, max_samples=64)["pgd5"]["samples"] == 64


def test_adversarial_training_refuses_normalised_inputs(loaders, tmp_path):
    _, normalised = loaders
    trainer = AdversarialTrainer("pgd", eps=0.1, steps=2)
    with pytest.raises(ValueError) as info:
        trainer.training_step(next(iter(normalised)), make_model("small_cnn"))
    assert_one_line_range_error(info)
    with pytest.raises(ValueError) as info:
        fit(make_model("small_cnn"), normalised, None, 1, AdversarialTrainer("pgd", eps=0.1, steps=2),
            checkpoint_dir=tmp_path / "adv", progress=False)
    assert_one_line_range_error(info)
    # natural training runs no attack: normalised inputs are the user's business
    fit(make_model("small_cnn"), normalised, None, 1, AdversarialTrainer("natural"), checkpoint_dir=tmp_path / "nat",
        progress=False)


def test_mrs_calibration_refuses_normalised_inputs(loaders):
    _, normalised = loaders
    model = make_model("small_cnn")
    pruner = MRSPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], calibration=normalised,
                       estimator="taylor", n_samples=64, progress=False)
    with pytest.raises(ValueError) as info:
        pruner.compress()
    assert_one_line_range_error(info)


def test_build_attack_defaults_and_bad_kwargs():
    model = make_model("small_cnn")
    pgd = build_attack(model, None, eps=0.1)
    assert type(pgd).__name__ == "PGD" and pgd.alpha == pytest.approx(0.025) and pgd.steps == 10
    assert build_attack(model, "FGSM", eps=0.1).eps == 0.1  # FGSM takes no alpha/steps: they are not passed
    with pytest.raises(ValueError, match="torchattacks.PGD rejected"):
        build_attack(model, "PGD", eps=0.1, radius=3)
    with pytest.raises(ValueError, match=r"eps must be an L-inf radius in \(0, 1\]"):
        build_attack(model, None, eps=0.0)


NORMALIZATION = ([MEAN], [STD])


def with_layer(model):
    """The same weights behind a Normalize layer: the [0, 1]-loader equivalent of a normalising loader."""
    from nni_mrs_plugin.models import Normalize

    return torch.nn.Sequential(Normalize([MEAN], [STD]), model)


def test_normalization_option_attacks_pixels_within_eps(loaders):
    from nni_mrs_plugin.attacks import PixelSpace

    _, normalised = loaders
    x, y = next(iter(normalised))
    space = PixelSpace(NORMALIZATION)
    model = make_model("small_cnn")
    for method in ("pgd", "trades", "fast"):
        trainer = AdversarialTrainer(method, eps=0.1, steps=3, normalization=NORMALIZATION)
        trainer.training_step((x, y), model)  # accepted: its pixels are in [0, 1]
        moved = space.pixels(trainer.adversarial_examples(model, x, y)) - space.pixels(x)
        pixels = space.pixels(trainer.adversarial_examples(model, x, y))
        assert moved.abs().max() <= 0.1 + 1e-5, method
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5, method


def test_normalised_loader_with_the_option_equals_pixel_loader_with_a_normalize_layer(loaders):
    pixels, normalised = loaders
    model = make_model("small_cnn")
    plain = evaluate_robustness(with_layer(model), pixels, ("clean", "fgsm", "pgd5"), eps=0.1, seed=3)
    option = evaluate_robustness(model, normalised, ("clean", "fgsm", "pgd5"), eps=0.1, seed=3,
                                 normalization=NORMALIZATION)
    assert option["settings"]["normalization"] == [[MEAN], [STD]]
    for name in ("clean", "fgsm", "pgd5"):  # the same attack on the same pixels; float rounding may flip one
        assert abs(option[name]["correct"] - plain[name]["correct"]) <= 1, name
    assert option["pgd5"]["correct"] < option["clean"]["correct"]


def test_mrs_calibration_with_the_option(loaders):
    from nni_mrs_plugin.attacks import PixelSpace
    from nni_mrs_plugin.mrs.allocator import MRSSparsityAllocator

    _, normalised = loaders
    model = make_model("small_cnn")
    allocator = MRSSparsityAllocator("taylor", tau=1.0, eps=0.1, n_samples=64,
                                     normalization=NORMALIZATION, progress=False)
    result = allocator.allocate(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], normalised)
    assert abs(result.achieved - 0.5) <= 0.01
    x_adv, _ = allocator.adversarial_data
    x = next(iter(normalised))[0][:64]
    space = PixelSpace(NORMALIZATION)
    assert (space.pixels(x_adv) - space.pixels(x)).abs().max() <= 0.1 + 1e-5
    with pytest.raises(ValueError, match="normalization must be \\(mean, std\\)"):
        MRSSparsityAllocator("taylor", normalization=[0.5])


def test_normalised_fit_trains_in_train_mode_and_keeps_the_attack_in_sync(loaders, tmp_path):
    """The attack wraps the model once; the model's mode changes between training and validation, and each
    attack must find (and restore) the current one."""
    pixels, normalised = loaders
    model = make_model("small_cnn")
    trainer = AdversarialTrainer("pgd", eps=0.1, steps=2, normalization=NORMALIZATION)
    x, y = next(iter(normalised))
    model.eval()
    trainer.adversarial_examples(model, x, y)
    model.train()
    trainer.adversarial_examples(model, x, y)
    assert model.training  # pgd attacks in train mode and gives it back
    model.eval()
    trainer.adversarial_examples(model, x, y)
    assert not model.training
    result = fit(model, normalised, normalised, 1, trainer, checkpoint_dir=tmp_path, progress=False, val_steps=2)
    assert result.history and trainer.config()["normalization"] == [[MEAN], [STD]]
