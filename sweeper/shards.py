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

from . import stages
from .store import Store


class ShardFailed(RuntimeError):
    pass


@ray.remote(max_restarts=0)
class SynthesisWorker:
    """Holds one source model at a time; ``run`` synthesizes one shard into the store."""

    def __init__(self, store_uri: str, data_spec: dict, sweep_seed: int, threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.store = Store(store_uri)
        self.data_spec = data_spec
        self.seed = sweep_seed
        self._model_key = None
        self._model = None

    def run(self, node, index: int, start: int, stop: int) -> dict:
        source = node.inputs["source"]
        if self._model_key != source:
            self._model = stages.load_model(self.store, source, self.data_spec)
            self._model_key = source
        return stages.run_shard(node, index, start, stop, self._model, self.data_spec, self.seed, self.store)

    def pid(self) -> int:
        import os

        return os.getpid()


class ShardPool:
    """A fixed number of synthesis actors, replaced when they die."""

    def __init__(self, store: Store, data_spec: dict, sweep_seed: int, *, actors: int = 2,
                 cpus_per_actor: float = 1, gpus_per_actor: float = 0, threads: int = 1, max_retries: int = 3):
        self._make = lambda: SynthesisWorker.options(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor).remote(
            store.uri, data_spec, sweep_seed, threads)
        self.actors = [self._make() for _ in range(max(1, actors))]
        self.max_retries = max_retries

    def run_node(self, node, n_images: int, shard_size: int,
                 on_shard: Callable[[dict], None] | None = None) -> list[dict]:
        """Every shard of ``node``; returns their metadata in index order."""
        todo = list(enumerate(stages.shard_ranges(n_images, shard_size)))
        attempts = {i: 0 for i, _ in todo}
        results: dict[int, dict] = {}
        running: dict = {}  # object ref -> (actor slot, shard)
        free = list(range(len(self.actors)))
        while todo or running:
            while todo and free:
                slot = free.pop()
                i, (a, b) = todo.pop(0)
                attempts[i] += 1
                running[self.actors[slot].run.remote(node, i, a, b)] = (slot, (i, (a, b)))
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            slot, shard = running.pop(ref)
            try:
                meta = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.NodeDiedError) as e:
                self.actors[slot] = self._make()  # replace the dead actor; the shard goes back in the queue
                self._retry(shard, attempts, todo, e)
            except ray.exceptions.RayTaskError as e:
                self._retry(shard, attempts, todo, e)
            else:
                results[shard[0]] = meta
                if on_shard is not None:
                    on_shard(meta)
            free.append(slot)
        return [results[i] for i in sorted(results)]

    def _retry(self, shard, attempts: dict, todo: list, err: Exception) -> None:
        i = shard[0]
        if attempts[i] > self.max_retries:
            raise ShardFailed(f"shard {i} failed {attempts[i]} times; last error: {err}") from err
        todo.insert(0, shard)

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)


def synthesize_on_pool(pool: ShardPool, node, data_spec: dict, sweep_seed: int, store: Store, shard_size: int,
                       on_shard: Callable[[dict], None] | None = None) -> dict:
    t0 = time.time()
    n = len(stages.synth_inputs(node, data_spec, sweep_seed)[1])
    metas = pool.run_node(node, n, shard_size, on_shard)
    return stages.finish_synthesis(node, len(metas), store, time.time() - t0)
