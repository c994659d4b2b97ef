"""Every error sweeper reports to a user, with its exit code, and the signals that stop a run (no Ray, no torch).

The CLI prints ``err.line()`` (one line, no traceback) and exits with ``err.exit_code``:
2 a bad sweep file, --set or store; 3 data not found or damaged; 4 a cluster or job problem; 5 work failed after
its retries (run the same command again to resume); 128 + signal number when interrupted (130 Ctrl-C, 143 SIGTERM).
"""
from __future__ import annotations

import contextlib
import signal
import threading

RESUME = "finished work is kept in the store; run the same command again to resume"


class SweeperError(Exception):
    """Base class: a problem sweeper explains in one line."""

    exit_code = 1

    def line(self) -> str:
        return str(self)


class SpecError(SweeperError):
    """A sweep file problem: ``FILE: key.path: message``."""

    exit_code = 2

    def __init__(self, file: str, key_path: str, message: str):
        self.file, self.key_path, self.message = str(file), key_path, message
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.file}: {self.key_path}: {self.message}" if self.key_path else f"{self.file}: {self.message}"

    def __reduce__(self):  # picklable across processes (Ray)
        return (SpecError, (self.file, self.key_path, self.message))

    def line(self) -> str:
        return f"invalid sweep file: {self}"


class StoreError(SweeperError, RuntimeError):
    """A store that cannot be used as asked (not a sweeper store, not writable...); the message says why."""

    exit_code = 2


class StoreIOError(StoreError, OSError):
    """A read or write of the store failed for a reason other than a missing file (no permission, read-only or
    full disk, an S3 endpoint that cannot be reached, no such bucket): one line naming the store, the place and
    the cause. Still an OSError, so code that cleans up after a failed write keeps doing so."""


class DataNotFoundError(SweeperError, RuntimeError):
    """The dataset's files are missing; the message says how to get them."""

    exit_code = 3


class CorruptDataset(DataNotFoundError):
    """A pushed file whose size or sha256 does not match the dataset's manifest (or that is missing)."""


class ClusterError(SweeperError):
    """A problem with the cluster or a job (address, token, submission)."""

    exit_code = 4


class WorkFailed(SweeperError, RuntimeError):
    """Work that failed after its retries; what finished is in the store and a re-run resumes."""

    exit_code = 5

    def line(self) -> str:
        return f"{self}\nsweeper: {RESUME}"


class CorruptArtifact(WorkFailed):
    """A stored file whose sha256 does not match its manifest (or that is missing)."""


class ShardFailed(WorkFailed):
    """A synthesis shard failed on every try."""


class TrialsFailed(WorkFailed):
    """Tune trials failed after their retries."""


class Incomplete(WorkFailed):
    """The run ended but some node it was asked for is not done in the store."""


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP: the run stops where it is; what finished is in the store."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


RECEIVED: list[int] = []  # the signals stop_on_signals() turned into Interrupted, in order


def interrupt_code(err: BaseException) -> tuple[int, str]:
    """(exit code, signal name) of a KeyboardInterrupt: its own signal, else the last one received, else SIGINT.
    (Ray's wait loops re-raise an exception from a signal handler as a bare KeyboardInterrupt.)"""
    signum = getattr(err, "signum", None) or (RECEIVED[-1] if RECEIVED else signal.SIGINT)
    return 128 + int(signum), signal.Signals(signum).name


@contextlib.contextmanager
def stop_on_signals():
    """While running: SIGINT, SIGTERM and SIGHUP (a closed terminal) raise :class:`Interrupted` in the main thread
    (Ray's driver turns SIGTERM into a bare exit, and Ray Tune would catch SIGINT and end "gracefully"); the old
    handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        RECEIVED.append(signum)
        raise Interrupted(signum)

    RECEIVED.clear()
    sigs = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    old = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
