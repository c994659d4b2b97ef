"""The identity of a sweep's data: what node keys hash about the data, instead of where it is read from.

:func:`identity` is the sweep's ``data:`` section with ``root`` left out (kept as null) and, for real data, the
``sha256`` of its files: a digest of {name: sha256 of the file's bytes} over exactly the files the loader reads,
named as ``sweeper data push`` names them in the store (``train-images-idx3-ubyte.gz``,
``cifar-10-batches-py/data_batch_1``...). So the same files give the same keys wherever they are: a local folder,
the system folder, a copy elsewhere, or ``data.root: store`` after a push (whose manifest already holds every
file's sha256: one small read, no download). Files with other bytes (one byte changed, another CIFAR-format set,
the same images gzipped again) give other keys. The toy is generated, not read: its identity is its parameters,
exactly as before (the keys of toy sweeps did not change).

Local files are hashed once per process and file (memoized by path, size and mtime). Data that cannot be found
raises :class:`~sweeper.errors.DataNotFoundError` (one line, saying where it looked and what to do).

This module imports neither torch nor Ray (``sweeper plan`` stays light); :mod:`sweeper.science.data` and
:mod:`sweeper.science.data_store` take the file layout from here, so the loader and the keys read the same files.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Union

from sweeper.errors import CorruptDataset, DataNotFoundError

FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist (`make data`)
DOWNLOAD_DIR = "~/.cache/sweeper/data"  # where the loaders look (and torchvision downloads) when root is unset
STORE_ROOT = "store"  # the data.root value meaning "the copy pushed into this sweep's store"
MANIFEST = "manifest.json"
FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")
# what torchvision.datasets.CIFAR10 reads under its root (base_folder, train_list, test_list, meta)
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
_CHUNK = 1 << 20


# ------------------------------------------------------------------------------ where the loaders look
def find_idx(directory: Path, stem: str) -> Optional[Path]:
    """The IDX file ``stem`` (gzipped first) in ``directory`` or its torchvision sub-folders, or None."""
    for sub in ("", "FashionMNIST/raw", "raw"):
        for suffix in (".gz", ""):
            p = directory / sub / f"{stem}{suffix}"
            if p.is_file():
                return p
    return None


def fmnist_dirs(root: Optional[str]) -> list[Path]:
    """The folders the Fashion-MNIST loader reads, in order: ``root``, the system folder, and without a root
    the download folder (torchvision puts it under ``FashionMNIST/raw`` there)."""
    if root:
        return [Path(root).expanduser(), Path(FASHION_MNIST_SYSTEM_DIR)]
    return [Path(FASHION_MNIST_SYSTEM_DIR), Path(DOWNLOAD_DIR).expanduser()]


def fmnist_split_files(root: Optional[str], prefix: str) -> Optional[tuple[Path, Path]]:
    """(images, labels) of split ``prefix`` ('train' | 't10k') from the first folder of :func:`fmnist_dirs`
    holding both, or None: what the loader reads."""
    for d in fmnist_dirs(root):
        img, lab = find_idx(d, f"{prefix}-images-idx3-ubyte"), find_idx(d, f"{prefix}-labels-idx1-ubyte")
        if img is not None and lab is not None:
            return img, lab
    return None


def cifar_folder(root: Optional[str]) -> Path:
    """The folder torchvision's CIFAR10 reads: ``<root>/cifar-10-batches-py`` (root default DOWNLOAD_DIR)."""
    return Path(root or DOWNLOAD_DIR).expanduser() / CIFAR_FOLDER


def local_files(dataset: str, root: Optional[str]) -> dict[str, Path]:
    """{name as pushed into a store: local file} of every file the loader reads for ``dataset`` at ``root``;
    DataNotFoundError (one line) when one is missing."""
    if dataset == "fashion_mnist":
        out: dict[str, Path] = {}
        for prefix in ("train", "t10k"):
            pair = fmnist_split_files(root, prefix)
            if pair is None:
                looked = ", ".join(str(d) for d in fmnist_dirs(root))
                raise DataNotFoundError(
                    f"fashion_mnist: no {prefix}-images/labels-idx*-ubyte[.gz] files in {looked}; node keys hash "
                    f"the data's files, so plan and run need them: `make data` (apt-get install "
                    f"dataset-fashion-mnist), set data.root to their folder, or push them (`sweeper data push "
                    f"fashion_mnist --store STORE --from DIR`) and set data.root: store")
            out.update({p.name: p for p in pair})
        return out
    if dataset == "cifar10":
        folder = cifar_folder(root)
        missing = [n for n in CIFAR_FILES if not (folder / n).is_file()]
        if missing:
            lacks = "has none of the CIFAR-10 files" if len(missing) == len(CIFAR_FILES) else \
                f"lacks {', '.join(missing)}"
            raise DataNotFoundError(
                f"cifar10: {folder.absolute()} {lacks}; node keys hash the data's files, so plan and run "
                f"need them: put the extracted `{CIFAR_FOLDER}` folder under data.root, or push it (`sweeper data "
                f"push cifar10 --store STORE --from DIR`) and set data.root: store")
        return {f"{CIFAR_FOLDER}/{n}": folder / n for n in CIFAR_FILES}
    raise ValueError(f"dataset {dataset!r} has no files")


# --------------------------------------------------------------------------------------------- digests
def sha_file(path: Path) -> str:
    """The sha256 (hex) of a file's bytes; memoized per process by (real path, size, mtime)."""
    st = os.stat(path)
    return _sha_file(os.path.realpath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha_file(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def files_digest(shas: dict[str, str]) -> str:
    """The data's checksum: sha256 of canonical JSON {file name: sha256 of its bytes}."""
    return hashlib.sha256(json.dumps(shas, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def is_pushed(root: str) -> bool:
    """A URI (``s3://...``, ``file://...``) or a local folder holding a pushed dataset's manifest.json."""
    return "://" in root or Path(root, MANIFEST).expanduser().is_file()


def pushed_shas(store, rel: str, dataset: str, where: str) -> dict[str, str]:
    """{name: sha256} of the pushed dataset whose manifest is ``rel`` in ``store`` (one read); DataNotFoundError
    when it is not there, CorruptDataset when it is not a manifest of ``dataset``."""
    try:
        raw = store.read_bytes(rel)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):  # as Store reads a missing file
        raise DataNotFoundError(
            f"{dataset} was never pushed into {where} (no {rel}): run `sweeper data push {dataset} --store "
            f"{store.uri}` first") from None
    try:
        m = json.loads(raw)
        files, name = m["files"], m["dataset"]
        shas = {str(n): str(info["sha256"]) for n, info in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptDataset(f"{dataset}: {store.path(rel)} is not a dataset manifest") from None
    if name != dataset:
        raise DataNotFoundError(f"{where} holds {name}, not {dataset}")
    return shas


def content_sha256(dataset: str, root: Optional[str], store: Union[str, "Store", None]) -> str:  # noqa: F821
    """The checksum of the data ``dataset`` at ``root`` (:func:`files_digest`): read from the pushed manifest
    for ``root: store`` (in ``store``) and for a pushed URI or folder, else hashed from the local files."""
    from sweeper.store.store import Store

    if root == STORE_ROOT:
        if store is None:
            raise ValueError("data.root: store needs the store the dataset was pushed into")
        st = store if isinstance(store, Store) else Store(store)
        if dataset not in ("fashion_mnist", "cifar10"):
            raise DataNotFoundError(f"data.root: {STORE_ROOT} needs a pushed dataset (fashion_mnist, cifar10), "
                                    f"not {dataset}")
        return files_digest(pushed_shas(st, f"datasets/{dataset}/{MANIFEST}", dataset,
                                        f"the store {st.uri} (data.root is `{STORE_ROOT}`)"))
    if root is not None and is_pushed(root):
        return files_digest(pushed_shas(Store(root), MANIFEST, dataset, root))
    return files_digest({name: sha_file(p) for name, p in local_files(dataset, root).items()})


def identity(data, store=None) -> dict:
    """What node keys hash about ``data`` (a :class:`~sweeper.sweep.schema.DataSpec`): its fields with ``root``
    null, plus ``sha256`` (:func:`content_sha256`) for real data. ``store``: the sweep's store (a Store or
    URI), read only for ``root: store``."""
    out = {**data.model_dump(), "root": None}
    if data.dataset != "toy":
        out["sha256"] = content_sha256(data.dataset, data.root, store)
    return out


def legacy_identity(data) -> dict:
    """What node keys hashed about the data before they hashed its content (sweeper 0.1.0 up to this module):
    the ``data:`` section as written, ``root`` included. Kept for ``sweeper migrate-keys``."""
    return data.model_dump()
