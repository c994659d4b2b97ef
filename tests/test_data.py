import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sweeper.science import data


def _have_fmnist():
    return Path(data.FASHION_MNIST_SYSTEM_DIR, "train-images-idx3-ubyte.gz").is_file()


FMNIST = Path(data.FASHION_MNIST_SYSTEM_DIR)
# for the tests of other files that read the real Fashion-MNIST
need_fmnist = pytest.mark.skipif(not _have_fmnist(), reason="apt-get install dataset-fashion-mnist")


@pytest.mark.skipif(not _have_fmnist(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_loads():
    tr = data.load("fashion_mnist", "train")
    te = data.load("fashion_mnist", "test")
    assert tr.x.shape == (60000, 1, 28, 28) and te.x.shape == (10000, 1, 28, 28)
    assert tr.x.dtype == torch.float32 and tr.y.dtype == torch.int64
    assert float(tr.x.min()) >= 0.0 and float(tr.x.max()) <= 1.0 and float(tr.x.max()) > 0.99
    assert set(tr.y.unique().tolist()) == set(range(10)) and tr.num_classes == 10
    assert tr.bounds == (0.0, 1.0) and tr.mean == (0.2860,) and tr.std == (0.3530,)
    assert abs(float(tr.x.mean()) - 0.2860) < 0.002 and abs(float(tr.x.std()) - 0.3530) < 0.002


def test_fashion_mnist_from_root(tmp_path):
    import gzip
    imgs = np.arange(3 * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(3, 28, 28)
    labs = np.array([1, 2, 3], dtype=np.uint8)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (3).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + imgs.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + labs.tobytes())
    ds = data.load("fashion_mnist", "test", root=str(tmp_path))
    assert ds.x.shape == (3, 1, 28, 28) and ds.y.tolist() == [1, 2, 3]
    assert torch.allclose(ds.x[0, 0], torch.from_numpy(imgs[0]).float() / 255)


def _write_cifar(root: Path, n_per_batch=4):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"]
    written = {}
    for name in names:
        arr = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        with open(d / name, "wb") as f:
            pickle.dump({"data": arr, "labels": labels, "batch_label": name}, f)
        written[name] = (arr, labels)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["c%d" % i for i in range(10)], "num_cases_per_batch": n_per_batch}, f)
    return written


def test_cifar10_loader_on_written_files(tmp_path, monkeypatch):
    written = _write_cifar(tmp_path)
    # torchvision checks md5 sums of the real files; ours are small stand-ins in the same format
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    tr = data.load("cifar10", "train", root=str(tmp_path))
    te = data.load("cifar10", "test", root=str(tmp_path))
    assert tr.x.shape == (20, 3, 32, 32) and te.x.shape == (4, 3, 32, 32)
    assert tr.x.dtype == torch.float32 and float(tr.x.max()) <= 1.0 and float(tr.x.min()) >= 0.0
    arr, labels = written["test_batch"]
    assert te.y.tolist() == labels
    # CHW layout: the pickle stores 1024 red, then 1024 green, then 1024 blue values per image
    assert torch.allclose(te.x[1], torch.from_numpy(arr[1].reshape(3, 32, 32)).float() / 255)
    assert tr.mean == (0.4914, 0.4822, 0.4465) and tr.bounds == (0.0, 1.0) and tr.num_classes == 10


def test_cifar10_missing_raises(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="cifar-10-batches-py"):
        data.load("cifar10", "train", root=str(tmp_path))


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("mnist", "train")
    with pytest.raises(ValueError, match="split"):
        data.load("toy", "val")


def test_toy_statistics():
    ds = data.load("toy", "train", d=100, p=0.95, n_train=20000, seed=0)
    eta = data.toy_eta(100)
    assert eta == pytest.approx(0.2)
    assert ds.x.shape == (20000, 101) and ds.x.dtype == torch.float32 and ds.bounds is None
    assert ds.num_classes == 2 and set(ds.y.unique().tolist()) == {0, 1}
    s = (2 * ds.y - 1).float()
    assert set(ds.x[:, 0].unique().tolist()) == {-1.0, 1.0}
    assert float((ds.x[:, 0] == s).float().mean()) == pytest.approx(0.95, abs=0.01)
    weak = ds.x[:, 1:] * s[:, None]
    assert float(weak.mean()) == pytest.approx(eta, abs=0.01)
    assert float((ds.x[:, 1:] - eta * s[:, None]).std()) == pytest.approx(1.0, abs=0.02)
    assert float(ds.y.float().mean()) == pytest.approx(0.5, abs=0.02)
    te = data.load("toy", "test", d=100, n_test=300)
    assert te.x.shape == (300, 101)
    assert not torch.equal(te.x[:10], ds.x[:10])
    again = data.load("toy", "train", d=100, p=0.95, n_train=20000, seed=0)
    assert torch.equal(again.x, ds.x) and torch.equal(again.y, ds.y)
    # mean/std broadcast against (N, d+1)
    assert (ds.x - torch.tensor(ds.mean)).shape == ds.x.shape


def test_subset_indices_deterministic():
    a = data.subset_indices(1000, 100, seed=3)
    b = data.subset_indices(1000, 100, seed=3)
    c = data.subset_indices(1000, 100, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(a.unique()) == 100 and int(a.max()) < 1000
    full = data.subset_indices(1000, None, seed=3)
    assert torch.equal(full[:100], a) and sorted(full.tolist()) == list(range(1000))
    with pytest.raises(ValueError):
        data.subset_indices(10, 11, seed=0)


def test_augment_batch():
    x = torch.rand(64, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    out = data.augment_batch(x, g)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, x)
    out2 = data.augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, out2)
    # no crop, no flip: identity
    assert torch.equal(data.augment_batch(x, g, crop_pad=0, flip=False), x)
    # flip only: each image is itself or its mirror
    f = data.augment_batch(x, g, crop_pad=0)
    same = (f == x).flatten(1).all(1)
    mirrored = (f == x.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and same.any() and mirrored.any()
    # crop only: each image is a shifted copy (with zero padding) of the original
    ones = torch.ones(32, 1, 8, 8)
    c = data.augment_batch(ones, g, crop_pad=2, flip=False)
    assert c.shape == ones.shape and set(c.unique().tolist()) <= {0.0, 1.0}
    assert int(c.sum()) >= 32 * 6 * 6
    with pytest.raises(ValueError):
        data.augment_batch(torch.rand(4, 10))
