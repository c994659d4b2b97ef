"""Datasets as in-memory tensors (torch only): Fashion-MNIST, CIFAR-10 and the theory toy.

Images are float32 in [0,1], shape (N,C,H,W), on the CPU; labels int64. The toy is (N, d+1) float32 with
no box (``bounds=None``).
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sweeper.sweep.data_id import DOWNLOAD_DIR, FASHION_MNIST_SYSTEM_DIR, fmnist_dirs, fmnist_split_files
from sweeper.sweep.data_id import find_idx as _find_idx  # noqa: F401 (the name data_store and older callers import)
from sweeper.errors import DataNotFoundError

__all__ = ["Dataset", "DataNotFoundError", "load", "subset_indices", "augment_batch", "toy_eta",
           "FASHION_MNIST_SYSTEM_DIR"]

FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass
class Dataset:
    x: Tensor
    y: Tensor
    num_classes: int
    mean: tuple
    std: tuple
    bounds: tuple | None
    name: str

    def __len__(self) -> int:
        return int(self.y.shape[0])


def _check_split(split: str) -> bool:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split == "train"


# ----------------------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise ValueError(f"{path}: expected {math.prod(dims)} values, found {data.size}")
    return data.reshape(dims).copy()  # writable


def _fmnist_arrays(root: str | None, train: bool):
    """(images, labels) as arrays from the files :func:`sweeper.sweep.data_id.fmnist_split_files` picks (the files
    node keys hash), or None."""
    pair = fmnist_split_files(root, "train" if train else "t10k")
    return None if pair is None else (_read_idx(pair[0]), _read_idx(pair[1]))


def _load_fashion_mnist(split: str, root: str | None) -> Dataset:
    train = _check_split(split)
    dirs = fmnist_dirs(root)
    arrays = _fmnist_arrays(root, train)
    download_err = None
    if arrays is None:
        dl_root = Path(root).expanduser() if root else Path(DOWNLOAD_DIR).expanduser()
        try:
            from torchvision.datasets import FashionMNIST

            ds = FashionMNIST(str(dl_root), train=train, download=True)
            arrays = ds.data.numpy(), ds.targets.numpy()
        except Exception as e:  # no network, no torchvision...
            download_err = e
    if arrays is None:
        looked = ", ".join(str(d) for d in dirs)
        raise DataNotFoundError(
            f"Fashion-MNIST ({split}) not found (looked in {looked}; download failed: "
            f"{(str(download_err).splitlines() or [type(download_err).__name__])[0]}). "
            f"Install it with `apt-get install dataset-fashion-mnist`, put the gzipped IDX files in `root`, "
            f"or allow torchvision to download them.")
    images, labels = arrays
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0).unsqueeze(1)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return Dataset(x=x, y=y, num_classes=10, mean=FMNIST_MEAN, std=FMNIST_STD, bounds=(0.0, 1.0),
                   name="fashion_mnist")


# ------------------------------------------------------------------------------------------ CIFAR-10
def _load_cifar10(split: str, root: str | None) -> Dataset:
    train = _check_split(split)
    root_p = Path(root).expanduser() if root else Path(DOWNLOAD_DIR).expanduser()
    try:
        from torchvision.datasets import CIFAR10

        ds = CIFAR10(str(root_p), train=train, download=False)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted..."
        raise DataNotFoundError(
            f"CIFAR-10 ({split}) not found under {root_p} ({e}). Put the extracted `cifar-10-batches-py` "
            f"folder (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) under `root`.") from e
    x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    x = x.to(torch.float32).div_(255.0)
    y = torch.as_tensor(np.asarray(ds.targets, dtype=np.int64))
    return Dataset(x=x, y=y, num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD, bounds=(0.0, 1.0), name="cifar10")


# ----------------------------------------------------------------------------------------------- toy
def toy_eta(d: int) -> float:
    """The weak features' mean shift in the theory toy: eta = 2 / sqrt(d)."""
    return 2.0 / math.sqrt(d)


def _load_toy(split: str, *, d: int = 100, p: float = 0.95, n_train: int = 5000, n_test: int = 2000,
              seed: int = 0) -> Dataset:
    """PAPER.md section 5: y in {0,1} (s = 2y-1 in {-1,+1}); x0 = s w.p. p else -s (robust feature);
    x1..xd ~ N(eta*s, 1), eta = 2/sqrt(d) (non-robust features). Train and test use different streams."""
    train = _check_split(split)
    d, n = int(d), int(n_train if train else n_test)
    if d < 1 or n < 1 or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"toy needs d >= 1, n >= 1, 0 <= p <= 1 (got d={d}, n={n}, p={p})")
    g = torch.Generator().manual_seed(int(seed) * 2 + (0 if train else 1))
    y = (torch.rand(n, generator=g) < 0.5).to(torch.int64)
    s = (2 * y - 1).to(torch.float32)
    agree = torch.rand(n, generator=g) < float(p)
    x0 = torch.where(agree, s, -s)
    weak = torch.randn(n, d, generator=g) + toy_eta(d) * s[:, None]
    x = torch.cat([x0[:, None], weak], 1).contiguous()
    return Dataset(x=x, y=y, num_classes=2, mean=(0.0,), std=(1.0,), bounds=None, name="toy")


_TOY_KEYS = {"d", "p", "n_train", "n_test", "seed"}


def load(name: str, split: str, *, root: str | None = None, **toy) -> Dataset:
    """Load ``name`` ('fashion_mnist' | 'cifar10' | 'toy') split ('train' | 'test') into memory."""
    if name == "toy":
        unknown = set(toy) - _TOY_KEYS
        if unknown:
            raise ValueError(f"unknown toy options {sorted(unknown)}; valid: {sorted(_TOY_KEYS)}")
        return _load_toy(split, **toy)
    if toy:
        raise ValueError(f"toy options {sorted(toy)} given for dataset {name!r}")
    if name == "fashion_mnist":
        return _load_fashion_mnist(split, root)
    if name == "cifar10":
        return _load_cifar10(split, root)
    raise ValueError(f"unknown dataset {name!r}; available: fashion_mnist, cifar10, toy")


def subset_indices(n_total: int, n: int | None, seed: int) -> Tensor:
    """The first ``n`` indices of a seeded permutation of range(n_total) (all of it when n is None)."""
    if n is not None and (n < 0 or n > n_total):
        raise ValueError(f"subset size {n} out of range for {n_total} examples")
    perm = torch.randperm(int(n_total), generator=torch.Generator().manual_seed(int(seed)))
    return perm if n is None else perm[: int(n)]


def augment_batch(x: Tensor, generator: torch.Generator | None = None, *, crop_pad: int = 4,
                  flip: bool = True) -> Tensor:
    """Random crop (zero padding ``crop_pad``, per-example offsets) and random horizontal flip, batched,
    on x's device. ``generator`` may live on the CPU or on x's device."""
    if x.dim() != 4:
        raise ValueError(f"augment_batch needs images (N,C,H,W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    dev = generator.device if generator is not None else torch.device("cpu")
    out = x
    if crop_pad > 0:
        p = int(crop_pad)
        xp = torch.nn.functional.pad(x, (p, p, p, p))
        off = torch.randint(0, 2 * p + 1, (2, n), generator=generator, device=dev).to(x.device)
        rows = (off[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (off[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        out = xp[torch.arange(n, device=x.device)[:, None, None, None],
                 torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator, device=dev) < 0.5).to(x.device)
        out = torch.where(mask[:, None, None, None], out.flip(3), out)
    return out
