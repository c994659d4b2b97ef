"""The artifact store: one folder per node, checksummed, committed by a manifest written last, on local disk or
any pyarrow filesystem (S3 and S3-compatible servers, GCS, HDFS, ``file://``).

Layout under the store's root::

    sweeper-store.json                          marks the folder as a sweeper store (written on first use)
    nodes/<key>/manifest.json                   the commit point: meta, file sizes and sha256, its own digest
    nodes/<key>/<attempt>/tensors.safetensors   the files of one write attempt (a random id per save)
    shards/<key>/s<shard_size>/<index>/...      synthesis shards, same scheme; removed once the node is merged
    leases/<key>.json                           which driver computes the node now (sweeper.store.leases); removed when done
    datasets/<name>/..., checkpoints/, tune/, reports/, wandb/

Object stores have no directory rename, so a save never moves anything: it writes its files under a fresh
attempt folder, then the manifest, which names that folder. A single PUT is atomic on S3 (on local disk the
manifest goes through a temp file and ``os.replace``), so a reader sees either no manifest or a complete one,
and every file a manifest names was written before it. A crash leaves only an attempt folder that no manifest
names. Two writers of the same node each commit a self-consistent artifact; the last manifest wins and the
loser removes its own files, so every reader gets the files of exactly one write. A manifest that is not
valid JSON, fails its own digest, or names missing files does not count as done, and the next save replaces it
(the store heals). Every read checks the file's sha256 against the manifest.

Requests per node save on S3: one manifest read (exists?), three per file written (pyarrow uploads in parts:
create, part, complete) and three for the manifest, one manifest read to confirm; a load is two per file (HEAD,
GET) plus two for the manifest; a node's lease (take and release) nine more. No Ray, no W&B imports.

A read or write that fails for any reason but a missing file (no permission, a read-only or full disk, an S3
endpoint that cannot be reached, no such bucket) raises StoreIOError: one line naming the store, the place and
the cause. It is never taken for "not done" or "damaged", so a network failure cannot quarantine a good node.
"""
from __future__ import annotations

import datetime as _dt
import errno
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import pyarrow.fs as pafs

from sweeper.errors import CorruptArtifact, StoreError, StoreIOError

MANIFEST, META, TENSORS = "manifest.json", "meta.json", "tensors.safetensors"
MARKER = "sweeper-store.json"
FORMAT = 2  # 1: files beside the manifest, moved into place from tmp/; 2: attempt folders, manifest digest


# what a read of a missing thing raises: "not there" (not done, no lease), never a storage failure
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


def _cause(e: OSError) -> str:
    """One line: the OS's words for an errno (local disk), else pyarrow's message without the request id."""
    if e.errno and not str(e).startswith("When "):
        return f"{os.strerror(e.errno)} ({errno_name(e.errno)})"
    text = " ".join(str(e).split())
    if text.startswith("When ") and ": " in text:  # "When reading ... in bucket 'b': AWS Error X during ...: why"
        text = text.split(": ", 1)[1]
    return text.split(" (Request ID:")[0]


def errno_name(n: int) -> str:
    return errno.errorcode.get(n, str(n))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return _sha(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _split_uri(uri: str) -> tuple[str, str]:
    """``s3://b/p?x=1`` -> (``s3://b/p``, ``?x=1``): paths are joined before the query, which is kept."""
    base, sep, query = uri.partition("?")
    return base.rstrip("/"), (sep + query) if sep else ""


S3_MAX_ATTEMPTS = 3  # AWS's "standard" retry mode: a refused endpoint fails in ~1-2 s, a silent one in ~10 s


def _fail_fast(fs):
    """An S3 filesystem from a URI with AWS's standard retry mode (3 attempts) instead of pyarrow's default (an
    unreachable endpoint took 6 s per request, a silent one 99 s). A URI cannot carry retry settings (pyarrow
    refuses unknown query parameters); SWEEPER_S3_MAX_ATTEMPTS overrides the count."""
    if not isinstance(fs, pafs.S3FileSystem):
        return fs
    raw = os.environ.get("SWEEPER_S3_MAX_ATTEMPTS") or str(S3_MAX_ATTEMPTS)
    if not raw.isdigit() or int(raw) < 1:
        raise StoreError(f"SWEEPER_S3_MAX_ATTEMPTS={raw!r}: expected a whole number >= 1")
    try:  # every option from_uri parsed (endpoint, scheme, region, credentials...); pyarrow's pickle layout
        kwargs = dict(fs.__reduce__()[1][0])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):  # another pyarrow: keep its defaults
        return fs
    kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=int(raw))
    return pafs.S3FileSystem(**kwargs)


class Store:
    def __init__(self, uri: str):
        uri = str(uri)
        if "://" in uri:
            try:
                self.fs, root = pafs.FileSystem.from_uri(uri)
            except (ValueError, OSError) as e:  # pyarrow.ArrowInvalid: an unknown scheme or query parameter
                raise StoreError(f"store {uri}: not a usable store URI ({' '.join(str(e).split())})") from None
            self.fs = _fail_fast(self.fs)
            self._local = isinstance(self.fs, pafs.LocalFileSystem)
            base, query = _split_uri(uri)
            self.uri = root if self._local else base + query
        else:
            self.fs, root, self._local = pafs.LocalFileSystem(), os.path.abspath(uri), True
            self.uri = root  # absolute: workers in other directories resolve the same place
        self.root = root.rstrip("/") or "/"
        # object stores have no folders to create (pyarrow would write marker objects: extra requests)
        self._dirs = self.fs.type_name not in ("s3", "gcs")
        self.requests = 0  # filesystem calls made through this Store (a benchmark reads it; not pickled)

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    def __reduce__(self):  # picklable (Ray): rebuild from the URI
        return (Store, (self.uri,))

    @property
    def is_local(self) -> bool:
        return self._local

    # ------------------------------------------------------------ paths and plain files
    def _p(self, *parts: str) -> str:
        return "/".join([self.root, *[str(p).strip("/") for p in parts if p != ""]])

    def path(self, *parts: str) -> str:
        """A place under the store, as a local path or a URI with the store's query kept (for messages)."""
        if not parts:
            return self.uri
        base, query = _split_uri(self.uri)
        return "/".join([base, *[str(p).strip("/") for p in parts]]) + query

    def fs_path(self, *parts: str) -> str:
        """A place under the store as a path on ``self.fs`` (no scheme, no query): Tune's storage_path etc."""
        return self._p(*parts)

    def local_path(self, *parts: str) -> Optional[str]:
        """The local filesystem path, or None for a remote store."""
        return self._p(*parts) if self._local else None

    @contextmanager
    def _io(self, what: str, path: str, write: bool = False):
        """Turn a storage failure into a StoreIOError naming the store, the place and the cause. On reads a
        missing file stays FileNotFoundError (callers treat it as "not there"); on writes every OSError counts."""
        self.requests += 1
        try:
            yield
        except StoreError:
            raise
        except OSError as e:
            if not write and isinstance(e, _MISSING):
                raise
            where = path[len(self.root):].lstrip("/") if path.startswith(self.root) else path
            hint = ""
            if e.errno == errno.ENOSPC:
                hint = "; free some space (finished nodes are kept; run again to resume)"
            elif isinstance(e, PermissionError) or e.errno == errno.EROFS:
                hint = "; pick a writable --store"
            elif "NETWORK_CONNECTION" in str(e):
                hint = "; is the endpoint up and reachable?"
            elif "NO_SUCH_BUCKET" in str(e):
                hint = "; create the bucket first, or fix the URI"
            raise StoreIOError(f"store {self.uri}: cannot {what} {where or 'the store'}: {_cause(e)}"
                               f"{hint}") from None

    def check(self) -> None:
        """Fail early, with one StoreError line, when the store cannot be used at all: an object store that
        cannot be reached or whose bucket does not exist (one listing request; a missing prefix is a new, empty
        store), or a local path under a file."""
        if self._local:
            p = self.root
            while p and not os.path.exists(p):
                p = os.path.dirname(p) if os.path.dirname(p) != p else ""
            if p and not os.path.isdir(p):
                raise StoreError(f"store {self.uri}: cannot use it: {p} is a file, not a folder; pick another "
                                 "--store")
            return
        try:
            with self._io("list", self.root):
                self.fs.get_file_info(pafs.FileSelector(self.root))
        except FileNotFoundError:
            pass  # nothing under that prefix yet: a new store

    def exists(self, relpath: str) -> bool:
        p = self._p(relpath)
        with self._io("read", p):
            return self.fs.get_file_info(p).type != pafs.FileType.NotFound

    def read_bytes(self, relpath: str) -> bytes:
        p = self._p(relpath)
        with self._io("read", p):
            with self.fs.open_input_stream(p, compression=None) as f:  # bytes as stored, even .gz
                return f.read()

    def _mkdirs(self, path: str) -> None:
        if self._dirs:
            self.requests += 1
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)

    def _write(self, path: str, data: bytes, show: Optional[str] = None) -> None:
        """Write one file (its folders first); a failure names ``show`` (the file the caller means) or path."""
        with self._io("write", show or path, write=True):
            self._mkdirs(path)
            with self.fs.open_output_stream(path, compression=None) as f:
                f.write(data)

    def _put_atomic(self, path: str, data: bytes) -> None:
        """One object appears whole or not at all: a single PUT on object stores, temp file + rename elsewhere."""
        if not self._dirs:
            self._write(path, data)
            return
        head, name = path.rsplit("/", 1)
        tmp = f"{head}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            self._write(tmp, data, show=path)
            with self._io("write", path, write=True):
                self.fs.move(tmp, path)
        except BaseException:  # a full disk mid-write, a failed rename, Ctrl-C: leave no partial temp file behind
            try:
                self.fs.delete_file(tmp)
            except OSError:
                pass
            raise

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Atomic: readers see the old content or the new, never part of it."""
        self._put_atomic(self._p(relpath), bytes(data))

    _CHECKED = b"sweeper-checked-v1 "

    def write_checked(self, relpath: str, data: bytes) -> None:
        """Atomic, with its sha256 in a one-line header: read_checked() tells a damaged file from a good one."""
        self.write_bytes(relpath, self._CHECKED + _sha(data).encode() + b"\n" + bytes(data))

    def read_checked(self, relpath: str) -> bytes:
        """The payload of a write_checked() file; CorruptArtifact when its header or checksum is wrong."""
        raw = self.read_bytes(relpath)
        head, sep, data = raw.partition(b"\n")
        if not sep or not head.startswith(self._CHECKED) or head[len(self._CHECKED):].decode(errors="replace") != _sha(data):
            raise CorruptArtifact(f"{relpath} fails its sha256 check (store {self.uri})")
        return data

    def write_text(self, relpath: str, text: str) -> None:
        self.write_bytes(relpath, text.encode())

    def read_text(self, relpath: str) -> str:
        return self.read_bytes(relpath).decode()

    def delete(self, relpath: str) -> None:
        """Remove a file or directory; missing is fine."""
        p = self._p(relpath)
        with self._io("delete", p, write=True):
            t = self.fs.get_file_info(p).type
            self.requests += t in (pafs.FileType.Directory, pafs.FileType.File)
            try:
                if t == pafs.FileType.Directory:
                    self.fs.delete_dir(p)
                elif t == pafs.FileType.File:
                    self.fs.delete_file(p)
            except FileNotFoundError:
                pass  # removed by another process in between (two drivers dropping old checkpoints)

    def listdir(self, relpath: str) -> list[pafs.FileInfo]:
        p = self._p(relpath)
        try:
            with self._io("list", p):
                return self.fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
        except _MISSING:  # a path under a file
            return []

    # ------------------------------------------------------------ the store's own folder
    def claim(self) -> None:
        """Before writing: make sure this folder is a sweeper store, marking a new (empty) one as such.

        A folder that holds other things and no marker is refused, so that a mistyped ``--store ~`` never has
        sweeper write or clean anything among a user's files. A store written before the marker existed (it
        has ``nodes/`` or ``shards/`` and nothing foreign) is adopted.
        """
        if self.exists(MARKER):
            return
        entries = {i.base_name for i in self.listdir("")}
        if MARKER in entries:  # another driver marked it a moment ago
            return
        entries = {e for e in entries if not (e.startswith(".") and e.endswith(".tmp"))}  # writes in progress
        ours = {"nodes", "shards", "checkpoints", "tune", "reports", "wandb", "datasets", "quarantine", "tmp",
                "leases"}
        if (entries - ours or (entries and not entries & {"nodes", "shards"})) and not self.exists(MARKER):
            foreign = sorted(entries - ours) or sorted(entries)
            raise StoreError(f"store {self.uri} is not empty and is not a sweeper store (no {MARKER}; it holds "
                             f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}); give --store an "
                             "empty or new folder, or an existing sweeper store")
        self.write_text(MARKER, json.dumps({"sweeper_store": FORMAT, "created": _utc()}) + "\n")

    def clean_tmp(self) -> None:
        """Remove the ``tmp/`` of stores written before format 2 (only in a marked sweeper store)."""
        if self.exists(MARKER) and self.exists("tmp"):
            with self._io("clean", self._p("tmp"), write=True):
                self.fs.delete_dir_contents(self._p("tmp"))

    # ------------------------------------------------------------ artifacts
    def _save_dir(self, rel: str, key: str, meta: dict, tensors: Optional[dict], files: Optional[dict]) -> bool:
        """Commit one artifact under ``rel``; False when a valid one was already there (it is kept)."""
        try:
            json.dumps(meta, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"meta of {key} is not JSON-serializable: {exc}") from None
        payload: dict[str, bytes] = {}
        if tensors is not None:
            payload[TENSORS] = _pack(key, tensors)
        for name, data in (files or {}).items():
            if "/" in name or name in (MANIFEST, META, TENSORS) or not name or name.startswith("."):
                raise ValueError(f"bad file name {name!r} for {key}")
            payload[name] = bytes(data)
        old = self._manifest(rel)
        if old is not None:
            return False  # already there (another worker or an earlier run won): keep it
        attempt = uuid.uuid4().hex[:12]
        for name, data in payload.items():
            self._write(self._p(rel, attempt, name), data)
        self._commit(rel, key, meta, attempt, {n: {"size": len(d), "sha256": _sha(d)} for n, d in payload.items()})
        return True

    def _commit(self, rel: str, key: str, meta: dict, attempt: str, files: dict, **extra) -> None:
        """Write the manifest naming ``attempt``'s ``files`` (already written): the commit point. When a
        concurrent writer's manifest won, our attempt's files are removed."""
        manifest = {"format": FORMAT, "key": key, "meta": meta, "created": _utc(), "attempt": attempt,
                    "files": files, **extra}
        manifest["digest"] = _digest(manifest)
        self._put_atomic(self._p(rel, MANIFEST), json.dumps(manifest, sort_keys=True, indent=1).encode())
        final = self._manifest(rel, check_files=False)
        if final is None or final.get("attempt") != attempt:  # a concurrent writer committed after us: theirs
            self._delete_attempt(rel, attempt)

    def copy_node(self, src: str, dst: str, meta: dict, **extra) -> bool:
        """Commit node ``src``'s files as node ``dst``, with ``meta`` and ``extra`` manifest fields: each file is
        copied (server-side on object stores, never moved) into a fresh attempt folder of ``dst``, keeping its
        size and sha256 from ``src``'s manifest, and the manifest is written last. False when ``dst`` is done
        already (kept); FileNotFoundError when ``src`` is not done. ``src`` is left as it is."""
        old = self._manifest(f"nodes/{src}")
        if old is None:
            raise FileNotFoundError(f"no artifact {src} in {self.uri}")
        rel = f"nodes/{dst}"
        if self._manifest(rel) is not None:
            return False
        attempt, base = uuid.uuid4().hex[:12], self._files_rel(f"nodes/{src}", old)
        for name in old["files"]:
            target = self._p(rel, attempt, name)
            with self._io("copy", target, write=True):
                self._mkdirs(target)
                self.fs.copy_file(self._p(base, name), target)
        self._commit(rel, dst, meta, attempt, old["files"], **extra)
        return True

    def _delete_attempt(self, rel: str, attempt: str) -> None:
        self.requests += 1
        try:
            self.fs.delete_dir(self._p(rel, attempt))
        except (FileNotFoundError, OSError):
            pass  # nothing written there, or already gone: no manifest names it either way

    def _manifest(self, rel: str, check_files: bool = True) -> Optional[dict]:
        """The committed manifest of ``rel``, or None when there is none or it is not a complete, intact one
        (not JSON, a wrong digest, or, with ``check_files``, a named file missing or of the wrong size)."""
        try:
            m = json.loads(self.read_bytes(f"{rel}/{MANIFEST}"))
        except (*_MISSING, ValueError):  # a storage failure (StoreIOError) is raised, never taken for "not done"
            return None
        if not isinstance(m, dict) or not isinstance(m.get("files"), dict) or "meta" not in m:
            return None
        if "digest" in m:
            if m["digest"] != _digest(m):
                return None
        elif m.get("format", 1) != 1:
            return None
        if check_files:
            sizes = {i.base_name: i.size for i in self.listdir(self._files_rel(rel, m))
                     if i.type == pafs.FileType.File}
            if any(sizes.get(n) != f.get("size") for n, f in m["files"].items()):
                return None
        return m

    @staticmethod
    def _files_rel(rel: str, manifest: dict) -> str:
        return f"{rel}/{manifest['attempt']}" if manifest.get("attempt") else rel

    def _damage_of(self, rel: str, manifest: dict) -> Optional[str]:
        """None when every file the manifest names reads back with its sha256, else what is wrong."""
        base = self._files_rel(rel, manifest)
        for name, info in manifest["files"].items():
            try:
                if _sha(self.read_bytes(f"{base}/{name}")) != info["sha256"]:
                    return f"file {name} fails its sha256 check"
            except _MISSING:
                return f"file {name} is missing"
        return None

    def _verify(self, rel: str, manifest: dict) -> bool:
        return self._damage_of(rel, manifest) is None

    def _read_checked(self, rel: str, key: str, name: str) -> bytes:
        return self._read_file(rel, key, name)[0]

    def _read_file(self, rel: str, key: str, name: str, manifest: Optional[dict] = None) -> tuple[bytes, dict]:
        """(file ``name`` of ``rel``, sha256 checked; the manifest that names it). ``manifest``: one just read
        (saves reading it again); a file it names that has gone is looked up in a fresh read of the manifest."""
        for retry in (False, True):
            if manifest is None or retry:
                manifest = self._manifest(rel, check_files=False)
            if manifest is None:
                raise FileNotFoundError(f"no artifact {key} in {self.uri} ({rel})")
            if name not in manifest["files"]:
                raise FileNotFoundError(f"artifact {key} has no file {name!r}")
            try:
                data = self.read_bytes(f"{self._files_rel(rel, manifest)}/{name}")
            except _MISSING:
                if not retry:  # a concurrent writer may have just replaced the manifest: read it again
                    continue
                raise CorruptArtifact(f"artifact {key}: file {name} is missing (store {self.uri})") from None
            if _sha(data) != manifest["files"][name]["sha256"]:
                raise CorruptArtifact(f"artifact {key}: file {name} fails its sha256 check (store {self.uri})")
            return data, manifest
        raise AssertionError("unreachable")

    def _load_tensors(self, rel: str, key: str) -> dict:
        from safetensors.torch import load
        return load(self._read_checked(rel, key, TENSORS))

    def save(self, key: str, *, meta: dict, tensors: Optional[dict] = None, files: Optional[dict] = None) -> bool:
        """Commit a node's artifact under nodes/<key>; an existing intact one is kept (returns False)."""
        return self._save_dir(f"nodes/{key}", key, meta, tensors, files)

    def is_done(self, key: str, verify: bool = False) -> bool:
        """An intact manifest whose files exist with their sizes; ``verify`` also checks every sha256."""
        m = self._manifest(f"nodes/{key}")
        return m is not None and (not verify or self._verify(f"nodes/{key}", m))

    def load_meta(self, key: str) -> dict:
        m = self._manifest(f"nodes/{key}", check_files=False)
        if m is None:
            raise FileNotFoundError(f"no artifact {key} in {self.uri}")
        return self._meta_of(key, m)

    def _meta_of(self, key: str, m: dict) -> dict:
        if "digest" not in m and META in m["files"]:  # format 1: the manifest's meta is checked against meta.json
            if json.loads(self._read_file(f"nodes/{key}", key, META, m)[0]) != m["meta"]:
                raise CorruptArtifact(f"artifact {key}: manifest meta differs from meta.json (store {self.uri})")
        return m["meta"]

    def done_meta(self, key: str) -> Optional[dict]:
        """The meta of node ``key`` if it is done (as ``is_done``), else None: ``is_done`` then ``load_meta``
        in one read of the manifest."""
        m = self._manifest(f"nodes/{key}")
        return None if m is None else self._meta_of(key, m)

    def load(self, key: str) -> tuple[dict, dict]:
        """(meta, tensors) of node ``key``, both of the one write its manifest names: ``load_meta`` and
        ``load_tensors`` in one read of the manifest."""
        from safetensors.torch import load
        data, m = self._read_file(f"nodes/{key}", key, TENSORS)
        return self._meta_of(key, m), load(data)

    def load_tensors(self, key: str) -> dict:
        return self._load_tensors(f"nodes/{key}", key)

    def damage(self, key: str) -> Optional[str]:
        """None when node ``key`` reads back intact (every file's sha256), else what is wrong with it."""
        rel = f"nodes/{key}"
        m = self._manifest(rel)
        if m is None:
            return "its manifest is missing, not valid JSON, fails its digest, or names missing files"
        return self._damage_of(rel, m)

    def quarantine(self, key: str, reason: str) -> Optional[str]:
        """Move a damaged node aside so that it counts as not done and is computed again: its manifest and the
        reason go to ``quarantine/<key>-<time>-<id>.json``, then the manifest and the attempt folder it names are
        removed, only if the manifest is still the one judged damaged (another driver may be replacing it).
        Returns that record's path, or None when there was nothing (any more) to move."""
        try:
            old = self.read_bytes(f"nodes/{key}/{MANIFEST}")
        except _MISSING:
            return None
        rel = f"quarantine/{key}-{_utc().replace(':', '')}-{uuid.uuid4().hex[:6]}.json"
        self.write_text(rel, json.dumps({"key": key, "reason": reason, "moved": _utc(),
                                         "manifest": old.decode(errors="replace")}, indent=1))
        try:
            now = self.read_bytes(f"nodes/{key}/{MANIFEST}")
        except _MISSING:
            return rel
        if now != old:
            return rel  # replaced meanwhile by a fresh commit: that one is not judged here
        self.delete(f"nodes/{key}/{MANIFEST}")
        try:
            attempt = json.loads(old).get("attempt")
        except (ValueError, AttributeError):
            attempt = None
        if isinstance(attempt, str) and attempt and "/" not in attempt and not attempt.startswith("."):
            self.delete(f"nodes/{key}/{attempt}")
        return rel

    def load_file(self, key: str, name: str) -> bytes:
        return self._read_checked(f"nodes/{key}", key, name)

    # ------------------------------------------------------------ shards
    # A shard is identified by the shard size of its partition and its index: a resumed node whose shard size
    # changed starts a new partition instead of mixing two.
    def _shard(self, key: str, index: int, size: int) -> str:
        return f"shards/{key}/s{int(size)}/{int(index):05d}"

    def save_shard(self, key: str, index: int, tensors: dict, meta: dict, *, size: int) -> bool:
        return self._save_dir(self._shard(key, index, size), f"{key}/s{int(size)}/{int(index):05d}", meta,
                              tensors, None)

    def has_shard(self, key: str, index: int, *, size: int) -> bool:
        return self._manifest(self._shard(key, index, size)) is not None

    def load_shard(self, key: str, index: int, *, size: int) -> tuple[dict, dict]:
        """(tensors, meta) of one shard, checksums verified; meta gains the shard's ``attempt`` id."""
        rel = self._shard(key, index, size)
        tensors = self._load_tensors(rel, f"{key}/s{int(size)}/{int(index):05d}")
        m = self._manifest(rel, check_files=False)
        return tensors, {**m["meta"], "attempt": m.get("attempt")}

    def shard_indices(self, key: str, *, size: int) -> set[int]:
        return {int(i.base_name) for i in self.listdir(f"shards/{key}/s{int(size)}")
                if i.base_name.isdigit() and self.has_shard(key, int(i.base_name), size=size)}

    def drop_shards(self, key: str) -> None:
        """Remove every shard of a node (all partitions): call once the merged artifact is verified."""
        self.delete(f"shards/{key}")

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
    repo = Path(__file__).resolve().parents[2]
    try:
        r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def _git_state() -> tuple[Optional[str], Optional[bool]]:
    """(HEAD's sha, whether the work tree is dirty) of the package's repository; (None, None) outside one.

    One ``git status`` (porcelain v2 names HEAD in its header) instead of three git processes per save; read
    at every call, so a save records the tree as it is then. Without a commit yet the sha is None. Should that
    call fail inside a repository (a git without porcelain v2), the three separate calls are used."""
    out = _git("status", "--porcelain=v2", "--branch", "--no-ahead-behind")
    if out is not None:
        lines = out.splitlines()
        oid = next((ln.split()[2] for ln in lines if ln.startswith("# branch.oid ") and len(ln.split()) > 2), None)
        return (oid if oid and oid != "(initial)" else None,
                any(ln.strip() and not ln.startswith("#") for ln in lines))
    sha = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if _git("rev-parse", "--is-inside-work-tree") else None
    return sha.strip() if sha else None, None if status is None else bool(status.strip())


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


_DISTS = ("sweeper", "torch", "numpy", "ray", "wandb", "pyarrow", "safetensors", "pydantic")


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, Optional[str]], ...]:
    # read once per process: the packages a process has imported do not change while it runs (reading their
    # metadata scans sys.path, a few ms per save)
    return tuple((d, _version(d)) for d in _DISTS)


def provenance() -> dict[str, Any]:
    """What produced an artifact: git sha + dirty flag, package versions, python, host, UTC time."""
    sha, dirty = _git_state()
    return {"git_sha": sha, "git_dirty": dirty, "versions": dict(_versions()),
            "python": platform.python_version(), "hostname": socket.gethostname(), "utc": _utc()}
