"""Sharded synthesis on an elastic pool of Ray actors (an edge module: imports ray).

Each actor loads a source model once and writes finished shards straight to the store (atomically, with
checksums); only small metadata travels back through Ray. A shard's randomness comes from (sweep seed, node
key, shard index), so the synthesized set does not depend on the pool size or on the order in which shards
finish. The shards of every synthesis node that is running share one queue, so two nodes of 2 shards keep 4
actors busy; a free actor takes a shard of the node with the fewest waiting, preferring among equals the
source model it already holds.

The pool follows the work and the cluster: it starts actors while shards wait (up to ``actors``, a number or a
function re-read every few seconds, e.g. the cluster's current CPUs or GPUs, so nodes that join are used) and
stops idle ones as soon as no shard waits, giving their CPUs/GPUs back to Tune trials. On a cluster with an
autoscaler it asks (``ray.autoscaler.sdk.request_resources``) for what the waiting shards need. A dead actor
costs only its unfinished shard: the shard is retried, up to ``max_retries`` times; a shard that keeps failing
fails its node with a clear error, and the other nodes go on.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Union

import ray

from sweeper.run import kinds
from sweeper.errors import ShardFailed, StoreIOError
from sweeper.sweep.plan import ensemble_keys
from sweeper.sweep.schema import DataSpec
from sweeper.store.store import Store


@ray.remote(max_restarts=0)
class SynthesisWorker:
    """Holds one source model (with its node's ensemble models, if any) at a time; ``run`` synthesizes one shard
    into the store (kinds.run_shard)."""

    def __init__(self, store_uri: str, data: DataSpec, sweep_seed: int, threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.store, self.data, self.seed = Store(store_uri), data, sweep_seed
        self._model_key = None
        self._model = None
        self._ensemble = []
        import os

        self.where = {"pid": os.getpid(), "ray_node": ray.get_runtime_context().get_node_id()}

    def run(self, node, index: int, start: int, stop: int, shard_size: int) -> dict:
        models = _models(node)
        if self._model_key != models:
            self._model = kinds.load_model(self.store, node.inputs["source"], self.data)
            self._ensemble = kinds.load_ensemble(self.store, node, self.data)
            self._model_key = models
        ctx = kinds.Context(self.data, self.seed, self.store, shard_size)
        return kinds.run_shard(node, index, start, stop, self._model, ctx, worker=self.where,
                               ensemble=self._ensemble)

    def pid(self) -> int:
        import os

        return os.getpid()


def _models(node) -> tuple[str, ...]:
    """The keys of the models a synthesis node's shards read: its source, then its ensemble (if any)."""
    return (node.inputs["source"], *ensemble_keys(node))


class _Job:
    """One node's shards: those waiting, their attempts, the results, and who waits for them."""

    def __init__(self, node, n_images: int, shard_size: int, on_shard):
        self.node, self.shard_size, self.on_shard = node, shard_size, on_shard
        self.source = _models(node)  # what an actor must hold to run its shards
        self.todo = deque(enumerate(kinds.shard_ranges(n_images, shard_size)))
        self.total = len(self.todo)
        self.attempts = {i: 0 for i, _ in self.todo}
        self.results: dict[int, dict] = {}
        self.error: BaseException | None = None
        self.done = threading.Event()


class _Slot:
    def __init__(self, actor):
        self.actor, self.state, self.source = actor, "starting", None
        self.ready = actor.__ray_ready__.remote()


class ShardPool:
    """Synthesis actors shared by every running synthesis node; thread-safe (``run_node`` from many threads).

    ``actors``: the most actors at once (a number, or a function of nothing, re-read every ``refresh`` s).
    A replacement that cannot be placed (its node is gone and no other has room) just never gets work."""

    def __init__(self, store: Store, data: DataSpec, sweep_seed: int, *, actors: Union[int, Callable[[], int]] = 2,
                 cpus_per_actor: float = 1, gpus_per_actor: float = 0, threads: int = 1, max_retries: int = 3,
                 log: Callable[[str], None] | None = None, autoscale: bool = False, refresh: float = 5.0):
        self._make = lambda: SynthesisWorker.options(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor).remote(
            store.uri, data, sweep_seed, threads)
        self._limit = actors if callable(actors) else (lambda: int(actors))
        self._cap, self._cap_at, self.refresh = max(1, int(self._limit())), time.time(), refresh
        self.bundle = {"CPU": cpus_per_actor, **({"GPU": gpus_per_actor} if gpus_per_actor else {})}
        self.autoscale, self._asked = autoscale, 0
        self.max_retries = max_retries
        self.replaced = 0  # actors lost while they held work or were starting, and their shards retried
        self._log = log or (lambda msg: None)
        self._need = f"{cpus_per_actor:g} CPU" + (f" + {gpus_per_actor:g} GPU" if gpus_per_actor else "")
        self._slots: list[_Slot] = []
        self._running: dict = {}  # object ref -> (slot, job, (index, (start, stop)))
        self._jobs: list[_Job] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None  # what stopped the dispatcher, if it failed
        self._waited = 0.0
        self._expected: dict[str, int] = {}  # node key -> shards announced by expect(), not submitted yet
        self._thread = threading.Thread(target=self._loop, name="sweeper-shards", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------------------- public
    @property
    def actors(self) -> list:
        """The live actor handles."""
        return [s.actor for s in self._slots]

    def capacity(self) -> int:
        """How many actors the pool may run now."""
        if time.time() - self._cap_at > self.refresh:
            self._cap, self._cap_at = max(1, int(self._limit())), time.time()
        return self._cap

    def backlog(self) -> int:
        """Shards waiting for an actor, and those announced with ``expect`` but not submitted yet."""
        with self._lock:
            return sum(len(j.todo) for j in self._jobs) + sum(self._expected.values())

    def starved(self) -> bool:
        """Shards wait and fewer actors are up than the pool would run (they wait for room on the cluster)."""
        waiting, busy = self.backlog(), len(self._running)
        up = sum(1 for s in list(self._slots) if s.state != "starting")
        return waiting > 0 and up < min(self.capacity(), waiting + busy)

    def expect(self, node, shard_size: int) -> None:
        """``node``'s shards are on their way (it will call run_node soon): counted in the backlog until it does
        or ``forget`` says it will not, so that a caller admitting nodes while the backlog is short does not
        admit too many at once."""
        with self._lock:
            size = getattr(node.spec, "size", None)  # None: the whole training split, known once it is loaded
            self._expected[node.key] = len(kinds.shard_ranges(size, shard_size)) if size else self._cap

    def forget(self, node) -> None:
        with self._lock:
            self._expected.pop(node.key, None)

    def run_node(self, node, n_images: int, shard_size: int,
                 on_shard: Callable[[dict], None] | None = None) -> list[dict]:
        """Every shard of ``node`` (others' shards run meanwhile); returns their metadata in index order."""
        job = _Job(node, n_images, shard_size, on_shard)
        self.forget(node)
        if job.total == 0:
            return []
        if self._stop.is_set():
            raise self._error or RuntimeError("the synthesis pool was shut down")
        with self._lock:
            self._jobs.append(job)
        self._wake.set()
        while not job.done.wait(0.5):
            if self._stop.is_set():
                raise self._error or RuntimeError("the synthesis pool was shut down")
        if job.error is not None:
            raise job.error
        return [job.results[i] for i in sorted(job.results)]

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        for s in list(self._slots):
            ray.kill(s.actor)
        self._slots.clear()
        if self._asked:
            self._request(0)

    # ------------------------------------------------------------------------------------------ loop
    def _add(self) -> None:
        self._slots.append(_Slot(self._make()))

    def _drop(self, slot: _Slot) -> None:
        self._slots.remove(slot)
        ray.kill(slot.actor)

    def _request(self, n: int) -> None:
        """Ask the autoscaler for ``n`` actor-sized bundles (0: withdraw the request)."""
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[dict(self.bundle)] * n)
        self._asked = n

    def _size(self) -> None:
        """Start actors while shards wait (up to the capacity); stop free or starting ones nobody needs."""
        waiting = self.backlog()
        busy = len(self._running)
        want = min(self.capacity(), waiting + busy)
        while len(self._slots) < want and not self._stop.is_set():
            self._add()
        idle = [s for s in self._slots if s.state != "busy"]
        for s in sorted(idle, key=lambda s: s.state != "starting")[:max(0, len(self._slots) - want)]:
            self._drop(s)
        if self.autoscale:
            need = waiting + busy
            if need > len([s for s in self._slots if s.state != "starting"]) and need != self._asked:
                self._request(need)
            elif need == 0 and self._asked:
                self._request(0)

    def _next_shard(self, slot: _Slot):
        """A waiting shard for ``slot``: of the node with the fewest shards waiting (a short set is not queued
        behind a long one: it finishes, and its trainings start, sooner), among equals of the model the actor
        holds, then the oldest node's."""
        with self._lock:
            jobs = [j for j in self._jobs if j.todo and j.error is None]
            if not jobs:
                return None
            job = min(jobs, key=lambda j: (len(j.todo), j.source != slot.source))  # min: the first of equals
            return job, job.todo.popleft()

    def _assign(self) -> None:
        for slot in self._slots:
            if slot.state != "free":
                continue
            got = self._next_shard(slot)
            if got is None:
                return
            job, (i, (a, b)) = got
            job.attempts[i] += 1
            slot.state, slot.source = "busy", job.source
            self._running[slot.actor.run.remote(job.node, i, a, b, job.shard_size)] = (slot, job, (i, (a, b)))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except BaseException as e:  # fail every waiting node with it (and every later one), rather than hang
                self._error = e
                self._stop.set()
                with self._lock:
                    for j in self._jobs:
                        j.error = e
                        j.done.set()
                    self._jobs.clear()
                return

    def _step(self) -> None:
        self._size()
        self._assign()
        starting = {s.ready: s for s in self._slots if s.state == "starting"}
        refs = list(self._running) + list(starting)
        if not refs:
            self._wake.wait(0.5)
            self._wake.clear()
            return
        ready, _ = ray.wait(refs, num_returns=1, timeout=0.5)
        if not ready:
            self._waited += 0.5
            if not self._running and self.backlog() and self._waited >= 60 and self._waited % 60 < 0.5:
                self._log(f"  synthesis: {self.backlog()} shard(s) have waited {self._waited:.0f} s for room for an "
                          f"actor ({self._need}): the cluster is busy with other work or has no such room")
            return
        self._waited = 0.0
        ref = ready[0]
        if ref in starting:  # an actor came up (or failed to)
            slot = starting[ref]
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:
                self._slots.remove(slot)
                self.replaced += 1
            else:
                slot.state = "free"
            return
        slot, job, shard = self._running.pop(ref)
        try:
            meta = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as e:
            if slot in self._slots:
                self._slots.remove(slot)  # a new actor starts in _size if shards still wait
            self.replaced += 1
            self._retry(job, shard, e)
            return
        except ray.exceptions.RayTaskError as e:
            self._retry(job, shard, e)
        else:
            job.results[shard[0]] = meta
            if job.on_shard is not None and job.error is None:
                try:
                    job.on_shard(meta)
                except BaseException as e:  # the node's own callback failed: that node fails, not the pool
                    self._fail(job, e)
            if len(job.results) == job.total and job.error is None:
                self._end(job)
        slot.state = "free"

    def _end(self, job: _Job) -> None:
        with self._lock:
            if job in self._jobs:
                self._jobs.remove(job)
        job.done.set()

    def _fail(self, job: _Job, err: BaseException) -> None:
        job.error = err
        self._end(job)

    def _retry(self, job: _Job, shard, err: Exception) -> None:
        i = shard[0]
        cause = getattr(err, "cause", None) or err  # a task's own exception, without Ray's remote frames
        if job.error is not None:
            return
        if isinstance(cause, StoreIOError):  # the store failed (full, read-only, unreachable): retrying won't help
            self._fail(job, cause)
            return
        if job.attempts[i] > self.max_retries:
            try:
                raise ShardFailed(f"{job.node.label}: shard {i} (images {shard[1][0]}-{shard[1][1]}) failed "
                                  f"{job.attempts[i]} times; last error: {type(cause).__name__}: {cause}") from err
            except ShardFailed as e:
                self._fail(job, e)
            return
        with self._lock:
            job.todo.appendleft(shard)


def synthesize_on_pool(pool: ShardPool, node, ctx: kinds.Context, progress: kinds.Progress | None = None) -> dict:
    """A synthesis node with its shards spread over ``pool``'s actors, then the merge (kinds.finish_synthesis);
    ``progress`` gets each finished shard's metrics. The same signature as a kind's run, for kinds.execute."""
    t0 = time.time()
    n = len(kinds.synth_inputs(node, ctx)[1])
    on_shard = None if progress is None else (lambda m: progress(kinds.shard_metrics(m)))
    metas = pool.run_node(node, n, ctx.shard_size, on_shard)
    return kinds.finish_synthesis(node, len(metas), ctx, t0)
