"""Sharded synthesis on a pool of Ray actors (an edge module: imports ray).

Each actor loads the source model once per node and writes finished shards straight to the store
(atomically, with checksums); only small metadata travels back through Ray. A shard's randomness comes from
(sweep seed, node key, shard index), so the synthesized set does not depend on the pool size or on the order
in which shards finish. A dead actor costs only its unfinished shard: the actor is replaced and the shard
retried, up to ``max_retries`` times; a shard that keeps failing fails the node with a clear error.
"""

from __future__ import annotations

import time
from typing import Callable

import ray

from . import kinds
from .errors import ShardFailed, StoreIOError
from .schema import DataSpec
from .store import Store


@ray.remote(max_restarts=0)
class SynthesisWorker:
    """Holds one source model at a time; ``run`` synthesizes one shard into the store (kinds.run_shard)."""

    def __init__(self, store_uri: str, data: DataSpec, sweep_seed: int, threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.store, self.data, self.seed = Store(store_uri), data, sweep_seed
        self._model_key = None
        self._model = None

    def run(self, node, index: int, start: int, stop: int, shard_size: int) -> dict:
        source = node.inputs["source"]
        if self._model_key != source:
            self._model = kinds.load_model(self.store, source, self.data)
            self._model_key = source
        ctx = kinds.Context(self.data, self.seed, self.store, shard_size)
        return kinds.run_shard(node, index, start, stop, self._model, ctx)

    def pid(self) -> int:
        import os

        return os.getpid()


class ShardPool:
    """A fixed number of synthesis actors; a dead one is replaced, and shards go only to actors that are up.

    A replacement that cannot be placed (its node is gone and no other node has room) simply never receives
    work: the surviving actors finish the node. Pool state lives across the synthesis nodes of one wave.
    """

    def __init__(self, store: Store, data: DataSpec, sweep_seed: int, *, actors: int = 2,
                 cpus_per_actor: float = 1, gpus_per_actor: float = 0, threads: int = 1, max_retries: int = 3,
                 log: Callable[[str], None] | None = None):
        self._make = lambda: SynthesisWorker.options(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor).remote(
            store.uri, data, sweep_seed, threads)
        self.actors = [self._make() for _ in range(max(1, actors))]
        self._starting = {a.__ray_ready__.remote(): slot for slot, a in enumerate(self.actors)}
        self._free: list[int] = []
        self.max_retries = max_retries
        self.replaced = 0
        self._log = log or (lambda msg: None)
        self._need = f"{cpus_per_actor:g} CPU" + (f" + {gpus_per_actor:g} GPU" if gpus_per_actor else "")

    def _replace(self, slot: int) -> None:
        self.actors[slot] = self._make()
        self._starting[self.actors[slot].__ray_ready__.remote()] = slot
        self.replaced += 1

    def run_node(self, node, n_images: int, shard_size: int,
                 on_shard: Callable[[dict], None] | None = None) -> list[dict]:
        """Every shard of ``node``; returns their metadata in index order."""
        todo = list(enumerate(kinds.shard_ranges(n_images, shard_size)))
        attempts = {i: 0 for i, _ in todo}
        results: dict[int, dict] = {}
        running: dict = {}  # object ref -> (actor slot, shard)
        waited = 0.0
        while todo or running:
            while todo and self._free:
                slot = self._free.pop()
                i, (a, b) = todo.pop(0)
                attempts[i] += 1
                running[self.actors[slot].run.remote(node, i, a, b, shard_size)] = (slot, (i, (a, b)))
            ready, _ = ray.wait(list(running) + list(self._starting), num_returns=1, timeout=30)
            if not ready:
                waited += 30
                if not running:
                    self._log(f"  {node.label}: no synthesis actor is up after {waited:.0f} s; waiting for "
                              f"a node with {self._need} free")
                continue
            ref = ready[0]
            if ref in self._starting:  # an actor came up (or failed to)
                slot = self._starting.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError:
                    self._replace(slot)
                else:
                    self._free.append(slot)
                continue
            slot, shard = running.pop(ref)
            try:
                meta = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.NodeDiedError) as e:
                self._replace(slot)  # the shard goes back in the queue; the new actor gets work once it is up
                self._retry(node, shard, attempts, todo, e)
                continue
            except ray.exceptions.RayTaskError as e:
                self._retry(node, shard, attempts, todo, e)
            else:
                results[shard[0]] = meta
                if on_shard is not None:
                    on_shard(meta)
            self._free.append(slot)
        return [results[i] for i in sorted(results)]

    def _retry(self, node, shard, attempts: dict, todo: list, err: Exception) -> None:
        i = shard[0]
        cause = getattr(err, "cause", None) or err  # a task's own exception, without Ray's remote frames
        if isinstance(cause, StoreIOError):  # the store failed (full, read-only, unreachable): retrying won't help
            raise cause from None
        if attempts[i] > self.max_retries:
            raise ShardFailed(f"{node.label}: shard {i} (images {shard[1][0]}-{shard[1][1]}) failed {attempts[i]} "
                              f"times; last error: {type(cause).__name__}: {cause}") from err
        todo.insert(0, shard)

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)


def synthesize_on_pool(pool: ShardPool, node, ctx: kinds.Context, progress: kinds.Progress | None = None) -> dict:
    """A synthesis node with its shards spread over ``pool``'s actors, then the merge (kinds.finish_synthesis);
    ``progress`` gets each finished shard's metrics. The same signature as a kind's run, for kinds.execute."""
    t0 = time.time()
    n = len(kinds.synth_inputs(node, ctx)[1])
    on_shard = None if progress is None else (lambda m: progress(kinds.shard_metrics(m)))
    metas = pool.run_node(node, n, ctx.shard_size, on_shard)
    return kinds.finish_synthesis(node, len(metas), ctx, t0)
