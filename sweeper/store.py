"""The artifact store: one directory per node, written atomically, checksummed, on any pyarrow filesystem.

Layout: ``<root>/nodes/<key>/{manifest.json, meta.json, tensors.safetensors, ...}``,
``<root>/shards/<key>/<index:05d>/...``, ``<root>/tmp/`` (writes in progress), ``tune/``, ``reports/``, ``wandb/``.
A node is done when its ``manifest.json`` exists: the manifest is written last, inside a temp directory
that is then moved into place, so a reader never sees a half-written artifact. No Ray, no W&B imports.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any, Optional

import pyarrow.fs as pafs

MANIFEST, META, TENSORS = "manifest.json", "meta.json", "tensors.safetensors"


class CorruptArtifact(RuntimeError):
    """A stored file whose sha256 does not match its manifest (or that is missing)."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Store:
    def __init__(self, uri: str):
        uri = str(uri)
        if "://" in uri:
            self.fs, root = pafs.FileSystem.from_uri(uri)
            self._local = isinstance(self.fs, pafs.LocalFileSystem)
            self.uri = root if self._local else uri.rstrip("/")
        else:
            self.fs, root, self._local = pafs.LocalFileSystem(), os.path.abspath(uri), True
            self.uri = root  # absolute: workers in other directories resolve the same place
        self.root = root.rstrip("/") or "/"

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    def __reduce__(self):  # picklable (Ray): rebuild from the URI
        return (Store, (self.uri,))

    # ------------------------------------------------------------ paths and plain files
    def _p(self, *parts: str) -> str:
        return "/".join([self.root, *[str(p).strip("/") for p in parts if p != ""]])

    def path(self, *parts: str) -> str:
        """A place under the store, as a local path or a URI (for Tune's storage_path, reports...)."""
        return "/".join([self.uri, *[str(p).strip("/") for p in parts]]) if parts else self.uri

    def local_path(self, *parts: str) -> Optional[str]:
        """The local filesystem path, or None for a remote store."""
        return self._p(*parts) if self._local else None

    def exists(self, relpath: str) -> bool:
        return self.fs.get_file_info(self._p(relpath)).type != pafs.FileType.NotFound

    def read_bytes(self, relpath: str) -> bytes:
        with self.fs.open_input_stream(self._p(relpath)) as f:
            return f.read()

    def _write(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Atomic: written under tmp/, then moved into place."""
        dest = self._p(relpath)
        self.fs.create_dir(self._p("tmp"), recursive=True)
        self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
        tmp = self._p("tmp", f"file-{uuid.uuid4().hex}")
        self._write(tmp, data)
        self.fs.move(tmp, dest)

    def write_text(self, relpath: str, text: str) -> None:
        self.write_bytes(relpath, text.encode())

    def read_text(self, relpath: str) -> str:
        return self.read_bytes(relpath).decode()

    def delete(self, relpath: str) -> None:
        """Remove a file or directory; missing is fine."""
        p = self._p(relpath)
        t = self.fs.get_file_info(p).type
        if t == pafs.FileType.Directory:
            self.fs.delete_dir(p)
        elif t == pafs.FileType.File:
            self.fs.delete_file(p)

    def clean_tmp(self) -> None:
        """Remove leftovers of interrupted writes (call when no writer is running)."""
        if self.exists("tmp"):
            self.fs.delete_dir_contents(self._p("tmp"))

    # ------------------------------------------------------------ artifacts
    def _save_dir(self, rel: str, key: str, meta: dict, tensors: Optional[dict], files: Optional[dict]) -> None:
        try:
            meta_json = json.dumps(meta, sort_keys=True, indent=1)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"meta of {key} is not JSON-serializable: {exc}") from None
        payload: dict[str, bytes] = {META: meta_json.encode()}
        if tensors is not None:
            payload[TENSORS] = _pack(key, tensors)
        for name, data in (files or {}).items():
            if "/" in name or name in (MANIFEST, META, TENSORS) or not name:
                raise ValueError(f"bad file name {name!r} for {key}")
            payload[name] = bytes(data)
        dest = self._p(rel)
        if self.fs.get_file_info(self._p(rel, MANIFEST)).type == pafs.FileType.File:
            return  # already there (another worker won the race): keep it
        tmp = self._p("tmp", f"{key}-{uuid.uuid4().hex}")
        self.fs.create_dir(tmp, recursive=True)
        for name, data in payload.items():
            self._write(f"{tmp}/{name}", data)
        manifest = {"key": key, "meta": meta, "created": _utc(),
                    "files": {n: {"size": len(d), "sha256": _sha(d)} for n, d in payload.items()}}
        self._write(f"{tmp}/{MANIFEST}", json.dumps(manifest, sort_keys=True, indent=1).encode())
        self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
        if self.fs.get_file_info(dest).type != pafs.FileType.NotFound:
            if self.fs.get_file_info(f"{dest}/{MANIFEST}").type == pafs.FileType.File:
                self.fs.delete_dir(tmp)
                return
            self.fs.delete_dir(dest)  # a leftover without manifest: not an artifact
        try:
            self.fs.move(tmp, dest)
        except OSError:
            if self.fs.get_file_info(f"{dest}/{MANIFEST}").type != pafs.FileType.File:
                raise
            self.fs.delete_dir(tmp)  # lost a race to an identical artifact

    def _manifest(self, rel: str) -> Optional[dict]:
        try:
            return json.loads(self.read_bytes(f"{rel}/{MANIFEST}"))
        except (FileNotFoundError, OSError, ValueError):
            return None

    def _verify(self, rel: str, manifest: dict) -> bool:
        for name, info in manifest["files"].items():
            try:
                if _sha(self.read_bytes(f"{rel}/{name}")) != info["sha256"]:
                    return False
            except (FileNotFoundError, OSError):
                return False
        return True

    def _read_checked(self, rel: str, key: str, name: str) -> bytes:
        manifest = self._manifest(rel)
        if manifest is None:
            raise FileNotFoundError(f"no artifact {key} in {self.uri} ({rel})")
        if name not in manifest["files"]:
            raise FileNotFoundError(f"artifact {key} has no file {name!r}")
        try:
            data = self.read_bytes(f"{rel}/{name}")
        except (FileNotFoundError, OSError):
            raise CorruptArtifact(f"artifact {key}: file {name} is missing") from None
        if _sha(data) != manifest["files"][name]["sha256"]:
            raise CorruptArtifact(f"artifact {key}: file {name} fails its sha256 check (store {self.uri})")
        return data

    def _load_tensors(self, rel: str, key: str) -> dict:
        from safetensors.torch import load
        return load(self._read_checked(rel, key, TENSORS))

    def save(self, key: str, *, meta: dict, tensors: Optional[dict] = None, files: Optional[dict] = None) -> None:
        """Write a node's artifact atomically into nodes/<key>; an existing one is kept."""
        self._save_dir(f"nodes/{key}", key, meta, tensors, files)

    def is_done(self, key: str, verify: bool = False) -> bool:
        m = self._manifest(f"nodes/{key}")
        return m is not None and (not verify or self._verify(f"nodes/{key}", m))

    def load_meta(self, key: str) -> dict:
        m = self._manifest(f"nodes/{key}")
        if m is None:
            raise FileNotFoundError(f"no artifact {key} in {self.uri}")
        return m["meta"]

    def load_tensors(self, key: str) -> dict:
        return self._load_tensors(f"nodes/{key}", key)

    def load_file(self, key: str, name: str) -> bytes:
        return self._read_checked(f"nodes/{key}", key, name)

    # ------------------------------------------------------------ shards
    def _shard(self, key: str, index: int) -> str:
        return f"shards/{key}/{int(index):05d}"

    def save_shard(self, key: str, index: int, tensors: dict, meta: dict) -> None:
        self._save_dir(self._shard(key, index), f"{key}/{int(index):05d}", meta, tensors, None)

    def has_shard(self, key: str, index: int) -> bool:
        return self._manifest(self._shard(key, index)) is not None

    def load_shard(self, key: str, index: int) -> tuple[dict, dict]:
        """(tensors, meta) of one shard, checksums verified."""
        rel = self._shard(key, index)
        tensors = self._load_tensors(rel, f"{key}/{int(index):05d}")
        return tensors, self._manifest(rel)["meta"]

    def shard_indices(self, key: str) -> set[int]:
        sel = pafs.FileSelector(self._p("shards", key), allow_not_found=True)
        return {int(i.base_name) for i in self.fs.get_file_info(sel)
                if i.base_name.isdigit() and self.has_shard(key, int(i.base_name))}


def _pack(key: str, tensors: dict) -> bytes:
    import torch
    from safetensors.torch import save
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{key}: tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
        if t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError(f"{key}: tensor {name!r} must be contiguous and on the CPU "
                             f"(got device {t.device}, contiguous={t.is_contiguous()})")
    return save(dict(tensors))


def _utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _git(*args: str) -> Optional[str]:
    repo = Path(__file__).resolve().parent.parent
    try:
        r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance() -> dict[str, Any]:
    """What produced an artifact: git sha + dirty flag, package versions, python, host, UTC time."""
    sha = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if _git("rev-parse", "--is-inside-work-tree") else None
    return {"git_sha": sha.strip() if sha else None,
            "git_dirty": None if status is None else bool(status.strip()),
            "versions": {d: _version(d) for d in ("sweeper", "torch", "numpy", "ray", "wandb", "pyarrow",
                                                   "safetensors", "pydantic")},
            "python": platform.python_version(), "hostname": socket.gethostname(), "utc": _utc()}
