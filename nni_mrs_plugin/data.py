"""Datasets as tensors in [0, 1]: Fashion-MNIST from local IDX files, CIFAR-10/100 through torchvision from a local
folder, SVHN from its local ``.mat`` files, Tiny-ImageNet from the standard ``tiny-imagenet-200`` folder, and
scikit-learn's digits as a zero-install tiny set for fast tests.

Nothing is downloaded unless the caller asks (``download=True``): these machines often have no internet,
so missing data raises ``DataNotFoundError`` with a one-line message that says how to get it.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

__all__ = ["DataNotFoundError", "DatasetInfo", "DATASETS", "Normalized", "TinyImageNet", "load_dataset",
           "make_loaders", "fashion_mnist_root"]

FASHION_MNIST_ENV = "NNI_MRS_FASHION_MNIST"
VALIDATION_SEED = 1234  # the draw of make_loaders' held-out images: one for every seed and run
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist", ".data/fashion-mnist")


class DataNotFoundError(FileNotFoundError):
    """The data set is not on this machine; the message says how to get it."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    in_channels: int
    num_classes: int
    image_size: int


DATASETS = {
    "fashion_mnist": DatasetInfo("fashion_mnist", 1, 10, 28),
    "cifar10": DatasetInfo("cifar10", 3, 10, 32),
    "cifar100": DatasetInfo("cifar100", 3, 100, 32),
    "svhn": DatasetInfo("svhn", 3, 10, 32),
    "tiny_imagenet": DatasetInfo("tiny_imagenet", 3, 200, 64),
    "digits": DatasetInfo("digits", 1, 10, 8),
}


def fashion_mnist_root(root: Optional[str] = None) -> Path:
    """The first folder holding the Fashion-MNIST IDX files: ``root``, $NNI_MRS_FASHION_MNIST, then the defaults."""
    chosen = os.environ.get(FASHION_MNIST_ENV)
    if not root and chosen and not (Path(chosen) / "train-images-idx3-ubyte.gz").is_file():
        raise DataNotFoundError(f"${FASHION_MNIST_ENV}={chosen} holds no train-images-idx3-ubyte.gz: put the four "
                                f"*-idx?-ubyte.gz files there, or unset it to use the system copy")
    candidates = [root] if root else [chosen, *FASHION_MNIST_DIRS]
    for folder in filter(None, candidates):
        if (Path(folder) / "train-images-idx3-ubyte.gz").is_file():
            return Path(folder)
    where = root or " or ".join(filter(None, [os.environ.get(FASHION_MNIST_ENV), *FASHION_MNIST_DIRS]))
    raise DataNotFoundError(
        f"Fashion-MNIST not found in {where}: run 'apt-get install dataset-fashion-mnist' (Debian/Ubuntu) "
        f"or put the four *-idx?-ubyte.gz files in a folder and pass it as root (or set ${FASHION_MNIST_ENV})"
    )


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (the MNIST format: big-endian dims after a magic number whose last byte is the rank)."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
        rank = data[3]
        dims = np.frombuffer(data, dtype=">i4", count=rank, offset=4)
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(tuple(int(d) for d in dims))
    except (OSError, EOFError, IndexError, ValueError) as err:  # truncated, not gzip, short payload
        raise DataNotFoundError(f"{path} is not a readable IDX file ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else 'truncated'}); reinstall "
                                f"dataset-fashion-mnist or replace the file") from None


def _fashion_mnist(root: Optional[str], train: bool) -> TensorDataset:
    folder = fashion_mnist_root(root)
    prefix = "train" if train else "t10k"
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    x = torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1)
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


def _digits(train: bool, seed: int = 0) -> TensorDataset:
    """scikit-learn's 1,797 8x8 digits, split 80/20 with a fixed permutation."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(y))
    idx = order[:cut] if train else order[cut:]
    return TensorDataset(x[idx], y[idx])


def _svhn(root: Optional[str], train: bool) -> TensorDataset:
    """SVHN's ``train_32x32.mat``/``test_32x32.mat`` (X: 32x32x3xN uint8, y: N labels with 10 for the digit 0),
    read directly: torchvision's reader also demands the official files' MD5."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    if not root:
        raise DataNotFoundError("svhn needs a data folder: pass root=PATH holding train_32x32.mat and test_32x32.mat")
    path = Path(root) / ("train_32x32.mat" if train else "test_32x32.mat")
    if not path.is_file():
        raise DataNotFoundError(f"svhn not found: {path} does not exist (copy SVHN's cropped-digits .mat files there)")
    try:
        mat = loadmat(str(path))
        images, labels = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
        if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != len(labels):
            raise ValueError(f"X has shape {images.shape} for {len(labels)} labels, expected (32, 32, 3, N)")
    except (OSError, KeyError, ValueError, TypeError, MatReadError) as err:
        raise DataNotFoundError(f"{path} is not an SVHN .mat file ({type(err).__name__}: {err})") from None
    x = torch.from_numpy(images.transpose(3, 2, 0, 1).copy()).float().div_(255.0)
    return TensorDataset(x, torch.from_numpy(labels % 10))


class TinyImageNet(Dataset):
    """The standard ``tiny-imagenet-200`` layout: ``wnids.txt``, ``train/<wnid>/images/*.JPEG`` and
    ``val/images`` with ``val/val_annotations.txt`` (file, wnid, box); classes in ``wnids.txt`` order."""

    def __init__(self, root: str, train: bool = True):
        folder = Path(root)
        if not (folder / "wnids.txt").is_file() and (folder / "tiny-imagenet-200" / "wnids.txt").is_file():
            folder = folder / "tiny-imagenet-200"
        if not (folder / "wnids.txt").is_file():
            raise DataNotFoundError(f"tiny_imagenet not found in {root}: expected tiny-imagenet-200/wnids.txt there "
                                    f"(unzip tiny-imagenet-200.zip into it)")
        wnids = [line.strip() for line in (folder / "wnids.txt").read_text().splitlines() if line.strip()]
        index = {wnid: i for i, wnid in enumerate(wnids)}
        if train:
            missing = [w for w in wnids if not (folder / "train" / w / "images").is_dir()]
            if missing:
                raise DataNotFoundError(f"{folder}/train lacks images/ folders for {len(missing)} classes of "
                                        f"wnids.txt (first: {missing[0]}): the folder is incomplete")
            self.samples = [(path, index[w]) for w in wnids
                            for path in sorted((folder / "train" / w / "images").glob("*.JPEG"))]
        else:
            notes = folder / "val" / "val_annotations.txt"
            if not notes.is_file():
                raise DataNotFoundError(f"{notes} does not exist: the folder is incomplete")
            self.samples = []
            for number, line in enumerate(notes.read_text().splitlines(), 1):
                fields = line.split("\t")
                if len(fields) < 2 or fields[1] not in index:
                    raise DataNotFoundError(f"{notes} line {number} is not 'file<TAB>wnid<TAB>box' with a wnid of "
                                            f"wnids.txt: {line[:80]!r}")
                self.samples.append((folder / "val" / "images" / fields[0], index[fields[1]]))
        if not self.samples:
            raise DataNotFoundError(f"{folder} holds no {'train' if train else 'val'} images")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image
        from torchvision.transforms.functional import to_tensor

        path, label = self.samples[i]
        try:
            with Image.open(path) as image:
                return to_tensor(image.convert("RGB")), label
        except OSError as err:
            raise DataNotFoundError(f"{path} is not a readable image ({err})") from None


def _torchvision(name: str, root: Optional[str], train: bool, download: bool) -> Dataset:
    import torchvision
    from torchvision import transforms

    if not root:
        raise DataNotFoundError(f"{name} needs a data folder: pass root=PATH (add download=True to fetch it there)")
    to_tensor = transforms.ToTensor()
    try:
        if name == "svhn":  # download only: reading goes through _svhn
            torchvision.datasets.SVHN(root, split="train" if train else "test", download=True)
            return _svhn(root, train)
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        return cls(root, train=train, transform=to_tensor, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise DataNotFoundError(
            f"{name} not found in {root}: copy torchvision's {name} files there, or pass download=True "
            f"on a machine with internet ({err})"
        ) from None


def load_dataset(name: str, train: bool = True, root: Optional[str] = None, download: bool = False,
                 subset: Optional[int] = None, seed: int = 0) -> Dataset:
    """One split of a data set, images as float tensors in [0, 1] with shape (C, H, W).

    ``subset`` keeps a random sample of that many items, drawn with ``seed``, so runs are reproducible.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be a positive number of samples, got {subset}")
    if name == "fashion_mnist":
        dataset: Dataset = _fashion_mnist(root, train)
    elif name == "digits":
        dataset = _digits(train)
    elif name == "svhn" and not download:
        dataset = _svhn(root, train)
    elif name == "tiny_imagenet":
        if not root or download:
            raise DataNotFoundError("tiny_imagenet needs a data folder (it is not downloaded here): pass root=PATH "
                                    "holding tiny-imagenet-200/")
        dataset = TinyImageNet(root, train)
    else:
        dataset = _torchvision(name, root, train, download)
    if subset is not None and subset < len(dataset):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        dataset = Subset(dataset, order[:subset].tolist())
    return dataset


class Normalized(Dataset):
    """``dataset`` with its images normalised by ``(mean, std)`` per channel, as a loader's ``Normalize`` does:
    what most PyTorch scripts feed their models (attacks then need ``normalization=(mean, std)``)."""

    def __init__(self, dataset: Dataset, mean: Sequence[float], std: Sequence[float]):
        self.dataset = dataset
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, y = self.dataset[index]
        return (x - self.mean) / self.std, y


def make_loaders(name: str, root: Optional[str] = None, batch_size: int = 128, train_subset: Optional[int] = None,
                 test_subset: Optional[int] = None, seed: int = 0, download: bool = False, num_workers: int = 0,
                 normalization: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
                 validation: Optional[int] = None, split: str = "test") -> Tuple[DataLoader, DataLoader]:
    """Train loader (shuffled with ``seed``) and evaluation loader for a named data set; with ``normalization``,
    both yield normalised images (``Normalized``) instead of pixels in [0, 1].

    ``validation`` holds that many training images out (one fixed draw, the same for every seed, so a choice made
    on them never sees the images it is tested on); ``train_subset`` is then drawn from the rest, and ``split``
    says whether the evaluation loader holds the test images or the held-out ones.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if split not in ("test", "validation") or split == "validation" and not validation:
        raise ValueError(f"split must be 'test', or 'validation' with validation > 0, got {split!r}")
    train = load_dataset(name, True, root, download)
    if validation:
        if validation >= len(train):
            raise ValueError(f"validation must hold out fewer than the {len(train)} training images, got {validation}")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(VALIDATION_SEED)).tolist()
        held_out, train = Subset(train, order[:validation]), Subset(train, order[validation:])
    if train_subset is not None and train_subset < len(train):
        train = Subset(train, torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[
            :train_subset].tolist())
    test = held_out if split == "validation" else load_dataset(name, False, root, download, test_subset, seed)
    if normalization is not None:
        train, test = Normalized(train, *normalization), Normalized(test, *normalization)
    generator = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator, num_workers=num_workers),
        DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=num_workers),
    )
