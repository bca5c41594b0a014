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


def _write_svhn(folder, n, seed=0):
    from scipy.io import savemat

    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (32, 32, 3, n), generator=generator, dtype=torch.uint8).numpy()
    labels = (torch.arange(n) % 10 + 1).view(-1, 1).numpy()  # SVHN writes the digit 0 as label 10
    savemat(str(folder / "train_32x32.mat"), {"X": images, "y": labels})
    return images, labels


def test_svhn_from_its_local_mat_files(tmp_path):
    images, labels = _write_svhn(tmp_path, 12)
    train = load_dataset("svhn", train=True, root=str(tmp_path))
    assert len(train) == 12
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x * 255, torch.from_numpy(images[:, :, :, 0].transpose(2, 0, 1)).float())
    assert [int(train[i][1]) for i in range(10)] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    with pytest.raises(DataNotFoundError, match="test_32x32.mat does not exist"):
        load_dataset("svhn", train=False, root=str(tmp_path))
    (tmp_path / "train_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataNotFoundError, match="is not an SVHN .mat file") as err:
        load_dataset("svhn", train=True, root=str(tmp_path))
    assert "\n" not in str(err.value)


def _write_tiny_imagenet(root, wnids=("n01", "n02", "n03"), per_class=2, val=4):
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for c, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(per_class):
            mode = "L" if i == 1 else "RGB"  # Tiny-ImageNet has a few grayscale JPEGs
            Image.new(mode, (64, 64), color=40 * c + i if mode == "L" else (40 * c, i, 0)).save(
                images / f"{wnid}_{i}.JPEG")
    lines = []
    for i in range(val):
        Image.new("RGB", (64, 64), color=(i, 0, 0)).save(folder / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnids[i % len(wnids)]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_tiny_imagenet_from_the_standard_folder(tmp_path):
    folder = _write_tiny_imagenet(tmp_path)
    train = load_dataset("tiny_imagenet", train=True, root=str(tmp_path))
    assert len(train) == 6 and [train[i][1] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    x, _ = train[1]
    assert x.shape == (3, 64, 64) and float(x.max()) <= 1.0  # grayscale JPEGs come as RGB
    val = load_dataset("tiny_imagenet", train=False, root=str(folder))  # the folder itself works too
    assert [val[i][1] for i in range(4)] == [0, 1, 2, 0]
    train_loader, test_loader = make_loaders("tiny_imagenet", root=str(tmp_path), batch_size=4)
    xb, yb = next(iter(test_loader))
    assert xb.shape == (4, 3, 64, 64) and yb.tolist() == [0, 1, 2, 0]


def test_tiny_imagenet_missing_or_malformed_is_one_clear_line(tmp_path):
    with pytest.raises(DataNotFoundError, match="expected tiny-imagenet-200/wnids.txt"):
        load_dataset("tiny_imagenet", root=str(tmp_path))
    with pytest.raises(DataNotFoundError, match="needs a data folder"):
        load_dataset("tiny_imagenet")
    folder = _write_tiny_imagenet(tmp_path)
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DataNotFoundError, match="line 1 is not") as err:
        load_dataset("tiny_imagenet", train=False, root=str(tmp_path))
    assert "\n" not in str(err.value)
    (folder / "wnids.txt").write_text("n01\nn02\nn03\nn04\n")
    with pytest.raises(DataNotFoundError, match="lacks images/ folders for 1 classes"):
        load_dataset("tiny_imagenet", train=True, root=str(tmp_path))
