"""Leases on nodes, so that several drivers on one store compute each node once (local disk or S3).

A lease is ``leases/<key>.json`` in the store (owner, host, pid, expiry). S3 has no create-if-absent through
pyarrow, so a driver writes its lease, waits a settle delay and reads it back: the last writer wins and every
driver agrees on one owner. A heartbeat renews held leases; a lease of a dead driver on this machine (its pid is
gone) or an expired one is taken over. No Ray, no W&B imports.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING, Optional

from sweeper.store.store import _MISSING, StoreError, _cause, _utc

if TYPE_CHECKING:
    from sweeper.store.store import Store

LEASE_TTL = 180.0     # seconds a lease lasts unless renewed; the heartbeat renews it every third of that
LEASE_SETTLE = 1.0    # seconds between writing a lease and reading it back (see Leases), on an object store
LEASE_SETTLE_LOCAL = 0.25  # the same on local disk, where a read and the write after it are microseconds apart
LEASE_POLL = 5.0      # seconds between looks at a node leased by another driver (is it done? expired?)


def _env_float(name: str, default: float) -> float:
    v = os.environ.get(name)
    try:
        return float(v) if v else default
    except ValueError:
        raise StoreError(f"{name}={v!r} is not a number of seconds") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


class Leases:
    """Per-node leases, so that drivers sharing a store never compute the same node twice.

    A lease is ``leases/<key>.json`` = {owner, host, pid, expires (unix time), ttl}. Object stores have no
    create-if-absent, so taking one is: read it; if another owner's lease is there and not expired, leave the
    node; else write ours, wait ``settle`` seconds, read it back, and own the node only if the copy read back
    is ours. The last writer wins, so every contender reads back the same owner provided each wrote within
    ``settle`` of its own read (milliseconds in practice; settle is 1 s on object stores, 0.25 s on local
    disk). A heartbeat thread renews every held lease each ttl/3 (read, then write only if it is still ours: a
    lease that expired and was taken over is given up with a warning, never stolen back), and ``release``
    deletes it. A driver that dies leaves a lease that expires after ``ttl``; then another driver takes the
    node over. Expiry compares the owner's clock with the reader's: clocks must agree to well within the ttl.

    Requests on S3 for a node taken and released without contention: 1 (HEAD: no lease yet) + 3 (write:
    pyarrow's create/part/complete) + 2 (read back) + 3 (delete: HEAD, DELETE, and the folder marker pyarrow
    re-creates) = 9; each renewal 5; each look at a node leased elsewhere 2 (plus its is_done check).
    """

    def __init__(self, store: "Store", ttl: Optional[float] = None, *, settle: Optional[float] = None,
                 poll: Optional[float] = None, log=None):
        self.store = store
        self.ttl = _env_float("SWEEPER_LEASE_TTL", ttl if ttl is not None else LEASE_TTL)
        default_settle = LEASE_SETTLE if not store.is_local else LEASE_SETTLE_LOCAL
        self.settle = _env_float("SWEEPER_LEASE_SETTLE", settle if settle is not None else default_settle)
        self.poll = _env_float("SWEEPER_LEASE_POLL", poll if poll is not None else min(LEASE_POLL, self.ttl / 3))
        if self.ttl <= 3 * self.settle:
            raise StoreError(f"lease ttl {self.ttl:g} s is too short for a settle delay of {self.settle:g} s")
        self.owner = uuid.uuid4().hex
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.held: set[str] = set()
        self.others: dict[str, dict] = {}  # key -> another owner's lease, as last read by acquire()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    @staticmethod
    def _rel(key: str) -> str:
        return f"leases/{key}.json"

    def read(self, key: str) -> Optional[dict]:
        """The lease on ``key``, or None when there is none (an unreadable one counts as none)."""
        try:
            doc = json.loads(self.store.read_bytes(self._rel(key)))
        except (*_MISSING, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def _live_other(self, doc: Optional[dict]) -> bool:
        if not doc or doc.get("owner") == self.owner:
            return False
        try:
            if float(doc.get("expires", 0)) <= time.time():
                return False
        except (TypeError, ValueError):
            return False
        if doc.get("host") == self.host and isinstance(doc.get("pid"), int) and doc.get("pid") != self.pid:
            return _pid_alive(doc["pid"])  # a driver of this machine that died (SIGKILL, OOM) holds nothing
        return True

    def _write(self, key: str) -> None:
        doc = {"owner": self.owner, "host": self.host, "pid": self.pid, "ttl": self.ttl,
               "expires": time.time() + self.ttl, "renewed": _utc()}
        self.store.write_bytes(self._rel(key), json.dumps(doc).encode())

    def acquire(self, keys) -> list[str]:
        """Take the lease of every key in ``keys`` that no other live owner holds; returns the keys now held,
        in the order given. One settle delay for the whole batch."""
        written = []
        for key in keys:
            cur = self.read(key)
            if self._live_other(cur):
                self.others[key] = cur
                continue
            with self._lock:
                self.held.add(key)  # released by close() even if Ctrl-C comes during the settle delay
            try:
                self._write(key)
            except BaseException:
                with self._lock:
                    self.held.discard(key)  # never written: nothing to release
                raise
            written.append(key)
        if not written:
            return []
        time.sleep(self.settle)
        got = []
        for key in written:
            cur = self.read(key)
            if cur is not None and cur.get("owner") == self.owner:
                got.append(key)
                self.others.pop(key, None)
            else:
                with self._lock:
                    self.held.discard(key)
                if cur is not None:
                    self.others[key] = cur  # another driver wrote after us: the node is theirs
        if got and self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="sweeper-leases", daemon=True)
            self._thread.start()
        return got

    def holder(self, key: str) -> str:
        """Who holds ``key``, as last seen by acquire(), for messages: ``host pid N``."""
        doc = self.others.get(key) or {}
        return f"{doc.get('host', '?')} pid {doc.get('pid', '?')}"

    def release(self, key: str) -> None:
        """Give up ``key`` (its node is done, or failed here): delete the lease if this driver holds it."""
        with self._lock:  # not while the heartbeat renews it (that would write it back)
            if key not in self.held:
                return
            self.held.discard(key)
            try:
                self.store.fs.delete_file(self.store.fs_path(self._rel(key)))
            except _MISSING:
                pass
            except OSError as e:  # it expires by itself; the node's own state is its manifest
                self._log(f"sweeper: warning: could not remove the lease {self.store.path(self._rel(key))} "
                          f"({_cause(e)}); it expires in {self.ttl:g} s")

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                keys = sorted(self.held)
            for key in keys:
                if self._stop.is_set():
                    return
                try:
                    with self._lock:
                        if key not in self.held:
                            continue  # released meanwhile
                        cur = self.read(key)
                        if cur is not None and cur.get("owner") != self.owner:
                            self.held.discard(key)
                            self._log(f"sweeper: warning: the lease on node {key} expired and was taken over by "
                                      f"{cur.get('host')} pid {cur.get('pid')}; both may compute it (the store "
                                      "keeps one result)")
                            continue
                        self._write(key)
                except Exception as e:  # a network blip: the next beat tries again (the ttl leaves two more)
                    self._log(f"sweeper: warning: could not renew the lease on node {key} ({e})")

    def close(self) -> None:
        """Stop the heartbeat and release every lease still held (an interrupted or failed run)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for key in sorted(self.held):
            self.release(key)
