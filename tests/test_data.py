import torch

import pytest

from nni_mrs_plugin.data import DataNotFoundError, load_dataset, make_loaders


def test_fashion_mnist_from_the_debian_package():
    train = load_dataset("fashion_mnist", train=True)
    test = load_dataset("fashion_mnist", train=False)
    assert len(train) == 60000 and len(test) == 10000
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    labels = torch.stack([test[i][1] for i in range(0, 10000, 10)])
    assert set(labels.tolist()) == set(range(10))


def test_subset_is_seeded():
    a = load_dataset("fashion_mnist", subset=100, seed=1)
    b = load_dataset("fashion_mnist", subset=100, seed=1)
    c = load_dataset("fashion_mnist", subset=100, seed=2)
    assert len(a) == 100
    assert a.indices == b.indices and a.indices != c.indices


def test_digits_is_a_tiny_zero_install_set():
    train, test = load_dataset("digits", True), load_dataset("digits", False)
    assert len(train) + len(test) == 1797
    x, _ = train[0]
    assert x.shape == (1, 8, 8) and 0 <= x.min() and x.max() <= 1


def test_loaders_batch_and_shuffle_reproducibly():
    first, _ = make_loaders("digits", batch_size=32, seed=3)
    second, _ = make_loaders("digits", batch_size=32, seed=3)
    xa, ya = next(iter(first))
    xb, yb = next(iter(second))
    assert xa.shape == (32, 1, 8, 8) and torch.equal(ya, yb) and torch.equal(xa, xb)


def test_missing_data_is_one_clear_line(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("fashion_mnist", root=str(tmp_path))
    message = str(info.value)
    assert "\n" not in message and "apt-get install dataset-fashion-mnist" in message
    with pytest.raises(DataNotFoundError, match="cifar10 not found in .*download=True"):
        load_dataset("cifar10", root=str(tmp_path))
    with pytest.raises(DataNotFoundError, match="svhn needs a data folder"):
        load_dataset("svhn")


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="subset must be a positive number of samples, got 0"):
        load_dataset("digits", subset=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        make_loaders("digits", batch_size=0)
