"""A sweep's datasets: the per-process cache of loaded splits and their seeded subsets, and datasets pushed
into the artifact store, so that every node of a cluster loads the same checked copy.

    <store>/datasets/<dataset>/<file>...        the raw files, as sweeper.science.data loads them from a folder
    <store>/datasets/<dataset>/manifest.json    {"dataset", "files": {name: {"size", "sha256"}}}, written last

The manifest is the commit point: a push writes it after every file (and removes an old one before changing
any file), so a folder without it is not a dataset. A sweep file says ``data.root: store`` for "the copy in this
sweep's store"; the plan keeps that literal and keys the data by its manifest's checksums
(:mod:`sweeper.sweep.data_id`: the same files give the same keys in any store or folder), and the engines resolve it
(:func:`resolve_data_root`). On a node, :func:`local_root` copies the files into a node-local cache
(``$SWEEPER_CACHE`` or ``~/.cache/sweeper``, then ``datasets/<dataset>-<manifest digest>/``), checking every
file's sha256, and hands that folder to :func:`sweeper.science.data.load`. No Ray.

:func:`load_split` is how every node loads the sweep's data (cached per process), :func:`real_subset` and
:func:`test_set` the seeded subsets it works on.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Callable, Optional

from sweeper.science import data as data_mod
from sweeper.sweep.data_id import (CIFAR_FILES, CIFAR_FOLDER, FASHION_MNIST_SYSTEM_DIR, FMNIST_FILES, MANIFEST, STORE_ROOT,
                      content_sha256, is_pushed)
from sweeper.sweep.data_id import find_idx as _find_idx
from sweeper.errors import CorruptDataset, DataNotFoundError
from sweeper.sweep.schema import DataSpec, ToySpec
from sweeper.store.store import _MISSING, Store

__all__ = ["STORE_ROOT", "PUSHABLE", "CorruptDataset", "load_split", "real_subset", "test_set", "push", "list_pushed",
           "dataset_uri", "resolve_data_root", "is_pushed", "fetch", "local_root", "cache_dir"]

PUSHABLE = ("fashion_mnist", "cifar10")
_CHUNK = 1 << 20


# ------------------------------------------------------------------------------- the sweep's data
@functools.lru_cache(maxsize=8)
def _load_cached(dataset: str, root: str | None, split: str, toy: tuple) -> data_mod.Dataset:
    # a pushed dataset (a URI, or a folder with manifest.json) is first copied into the node-local cache, checked
    return data_mod.load(dataset, split, root=local_root(dataset, root), **dict(toy))


def load_split(data: DataSpec, split: str) -> data_mod.Dataset:
    """The sweep's dataset (train or test split), cached per process."""
    toy = (data.toy or ToySpec()).model_dump() if data.dataset == "toy" else {}
    return _load_cached(data.dataset, data.root, split, tuple(sorted(toy.items())))


def real_subset(data: DataSpec, split: str, n: int | None, seed: int):
    """(x, y, index): the first ``n`` images of a seeded permutation of a split (all when n is None)."""
    ds = load_split(data, split)
    idx = data_mod.subset_indices(len(ds.y), n, seed)
    return ds.x[idx], ds.y[idx], idx


def test_set(data: DataSpec, seed: int):
    """(x, y): the sweep's test subset (``data.test_size`` images; all when unset)."""
    x, y, _ = real_subset(data, "test", data.test_size, seed)
    return x, y


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ push
def _sources(dataset: str, src: Optional[str]) -> dict[str, Path]:
    """{name in the store: local file} for a push; DataNotFoundError (one line) when a file is missing."""
    if dataset not in PUSHABLE:
        raise ValueError(f"cannot push dataset {dataset!r}; pushable: {', '.join(PUSHABLE)}")
    if src is not None and not Path(src).expanduser().is_dir():
        raise DataNotFoundError(f"{dataset}: --from {src} is not a folder; expected "
                                + ("the folder holding the four Fashion-MNIST IDX files" if dataset == "fashion_mnist"
                                   else f"the folder holding `{CIFAR_FOLDER}` (or that folder itself)"))
    if dataset == "fashion_mnist":
        d = Path(src or FASHION_MNIST_SYSTEM_DIR).expanduser().absolute()
        found = {stem: _find_idx(d, stem) for stem in FMNIST_FILES}
        missing = [s for s, p in found.items() if p is None]
        if missing:
            raise DataNotFoundError(
                f"fashion_mnist: {d} has no {', '.join(m + '[.gz]' for m in missing)}; expected the four IDX "
                f"files (train/t10k images and labels) there"
                + (" (pass --from another folder)" if src
                   else " (apt-get install dataset-fashion-mnist, or --from DIR)"))
        return {p.name: p for p in found.values()}
    d = Path(src or "~/.cache/sweeper/data").expanduser().absolute()  # cifar10: where sweeper.science.data looks by default
    if (d / CIFAR_FOLDER).is_dir():
        folder = d / CIFAR_FOLDER
    elif d.name == CIFAR_FOLDER or (d / "batches.meta").is_file():
        folder = d  # --from the folder itself
    else:
        folder = d / CIFAR_FOLDER
    missing = [n for n in CIFAR_FILES if not (folder / n).is_file()]
    if missing:
        raise DataNotFoundError(
            f"cifar10: {folder} lacks {', '.join(missing)}; expected the extracted `{CIFAR_FOLDER}` folder "
            f"({', '.join(CIFAR_FILES)}); pass --from the folder holding it (or the folder itself)")
    return {f"{CIFAR_FOLDER}/{n}": folder / n for n in CIFAR_FILES}


def _manifest_bytes(dataset: str, files: dict) -> bytes:
    # deterministic (no time, no source path): an identical push gives identical bytes, hence the same cache dir
    return json.dumps({"dataset": dataset, "files": files}, sort_keys=True, indent=1).encode()


def _read_manifest(store: Store, rel: str) -> Optional[dict]:
    try:
        m = json.loads(store.read_bytes(rel))
    except (*_MISSING, ValueError):  # not there; a store that fails (StoreIOError) ends the command
        return None
    return m if isinstance(m, dict) and isinstance(m.get("files"), dict) else None


def push(dataset: str, store: Store, src: Optional[str] = None, *, force: bool = False,
         log: Callable[[str], None] = print) -> dict:
    """Copy ``dataset``'s raw files into ``<store>/datasets/<dataset>/`` and commit them with a manifest.

    A file whose manifest entry already matches (same size and sha256) and that is in the store is not sent
    again (unless ``force``). Returns the manifest written.
    """
    sources = _sources(dataset, src)  # raises before anything is written
    files = {name: {"size": p.stat().st_size, "sha256": _sha_file(p)} for name, p in sorted(sources.items())}
    base = f"datasets/{dataset}"
    old = _read_manifest(store, f"{base}/{MANIFEST}")
    old_files = (old or {}).get("files", {})
    send = [n for n in files if force or old_files.get(n) != files[n] or not store.exists(f"{base}/{n}")]
    new_bytes = _manifest_bytes(dataset, files)
    store.claim()  # a new folder becomes a sweeper store; a folder of other things is refused
    if old is not None and (send or old_files != files):
        store.delete(f"{base}/{MANIFEST}")  # uncommit first: a reader never pairs the old manifest with new files
    for name in files:
        if name in send:
            with open(sources[name], "rb") as f:
                data = f.read()
            if hashlib.sha256(data).hexdigest() != files[name]["sha256"]:
                raise RuntimeError(f"{sources[name]} changed while it was being pushed; push again")
            store.write_bytes(f"{base}/{name}", data)  # byte for byte (no compression by extension)
        log(f"  {name:<34} {files[name]['size']:>12,} bytes  sha256 {files[name]['sha256'][:16]}  "
            f"{'sent' if name in send else 'unchanged'}")
    for name in set(old_files) - set(files):
        store.delete(f"{base}/{name}")  # left over from an earlier push of other files
    if old is None or send or old_files != files:
        store.write_bytes(f"{base}/{MANIFEST}", new_bytes)  # last: the commit point
    total = sum(f["size"] for f in files.values())
    log(f"{dataset}: {len(files)} files, {total:,} bytes ({sum(files[n]['size'] for n in send):,} sent) in "
        f"{dataset_uri(store, dataset)}; in a sweep file on this store: "
        f"data: {{dataset: {dataset}, root: {STORE_ROOT}}}")
    return {"dataset": dataset, "files": files}


def list_pushed(store: Store) -> list[dict]:
    """[{dataset, files, bytes, digest}] for each dataset committed in the store."""
    out = []
    for name in PUSHABLE:
        try:
            raw = store.read_bytes(f"datasets/{name}/{MANIFEST}")
            m = json.loads(raw)
        except (*_MISSING, ValueError):
            continue
        out.append({"dataset": name, "files": len(m["files"]), "bytes": sum(f["size"] for f in m["files"].values()),
                    "digest": hashlib.sha256(raw).hexdigest()[:16]})
    return out


# ------------------------------------------------------------------------------------- data.root: store
def dataset_uri(store: Store, dataset: str) -> str:
    """Where ``dataset`` is pushed in ``store``, always as a URI (``file://`` for a local store; a URI keeps its
    query string at the end), so a node that lacks the folder says so instead of looking in other places."""
    uri = store.path("datasets", dataset)
    return uri if "://" in uri else Path(uri).as_uri()


def resolve_data_root(plan, store: Store):
    """The plan with ``data.root: store`` replaced by the store's pushed copy (other plans: unchanged).

    Planning keeps the literal ``store`` (its keys hash the pushed manifest's checksums, not the store's place);
    the engines call this before running, so every worker gets a root it can load. Raises DataNotFoundError (one
    line) when the dataset was not pushed into this store, or when the copy there is not the data the plan's keys
    name (pushed again since, or the plan was made with another store).
    """
    d = plan.sweep.data
    if d.root != STORE_ROOT:
        return plan
    digest = content_sha256(d.dataset, STORE_ROOT, store)  # one manifest read; raises when not pushed
    keyed = plan.data.get("sha256")
    if keyed and keyed != digest:
        raise DataNotFoundError(
            f"{d.dataset} in {store.uri} (files' sha256 {digest[:16]}) is not the data this plan's keys name "
            f"({keyed[:16]}): it was pushed again since, or the plan was made for another store; plan again")
    data = d.model_copy(update={"root": dataset_uri(store, d.dataset)})
    return dataclasses.replace(plan, sweep=dataclasses.replace(plan.sweep, data=data))


# ---------------------------------------------------------------------------------- loading on a node
def cache_dir() -> Path:
    return Path(os.environ.get("SWEEPER_CACHE") or "~/.cache/sweeper").expanduser()


def _check_name(name: str, where: str) -> None:
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise CorruptDataset(f"{where}: manifest.json names a file {name!r} outside the dataset folder")


def _cached_ok(path: Path, info: dict) -> bool:
    try:
        return path.stat().st_size == info["size"] and _sha_file(path) == info["sha256"]
    except OSError:
        return False


def fetch(root: str, dataset: str, cache: Optional[Path] = None) -> Path:
    """Copy a pushed dataset (a URI or folder with manifest.json) into the node-local cache; return that folder.

    Cached files are checked (size and sha256) and reused; a missing or failing one is downloaded again, written
    under a temp name and renamed into place (several processes on one node may fetch at once). A downloaded
    file that does not match the manifest raises CorruptDataset naming it: a damaged store copy is never used.
    """
    src = Store(root)
    try:
        raw = src.read_bytes(MANIFEST)
    except _MISSING as e:
        raise DataNotFoundError(f"{dataset}: no pushed dataset at {root} ({MANIFEST} unreadable: {e}); push it "
                                f"with `sweeper data push {dataset} --store STORE`") from None
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        ds_name = manifest["dataset"]
    except (ValueError, KeyError, TypeError):
        raise CorruptDataset(f"{dataset}: {root}/{MANIFEST} is not a dataset manifest") from None
    if ds_name != dataset:
        raise DataNotFoundError(f"{root} holds {ds_name}, not {dataset}")
    dest = (cache or cache_dir()) / "datasets" / f"{dataset}-{hashlib.sha256(raw).hexdigest()[:16]}"
    for name, info in sorted(files.items()):
        _check_name(name, root)
        target = dest / name
        if _cached_ok(target, info):
            continue
        try:
            data = src.read_bytes(name)
        except _MISSING as e:
            raise CorruptDataset(f"{dataset}: file {name} of the pushed dataset at {root} is missing or unreadable "
                                 f"({e}); push it again (`sweeper data push {dataset} --store STORE --force`)"
                                 ) from None
        got = hashlib.sha256(data).hexdigest()
        if len(data) != info["size"] or got != info["sha256"]:
            raise CorruptDataset(
                f"{dataset}: file {name} of the pushed dataset at {root} fails its check ({len(data)} bytes, "
                f"sha256 {got[:16]}; manifest: {info['size']} bytes, {info['sha256'][:16]}); push it again "
                f"(`sweeper data push {dataset} --store STORE --force`)")
        _write_atomic(target, data)  # several processes of a node may do this at once: each renames a whole file
    return dest


def local_root(dataset: str, root: Optional[str]) -> Optional[str]:
    """The folder :func:`sweeper.science.data.load` should read: ``root`` itself, or the local copy of a pushed one."""
    if root is None or dataset == "toy":
        return root
    if root == STORE_ROOT:
        raise ValueError(f"data.root `{STORE_ROOT}` was not resolved to a store; call "
                         f"sweeper.science.data_store.resolve_data_root(plan, store) first (the engines do)")
    return str(fetch(root, dataset)) if is_pushed(root) else root
