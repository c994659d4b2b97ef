"""Synthesis throughput on the Ray actor pool: 2 actors against 1, in one run.

A small_cnn source model is trained once (1 epoch, 2,000 Fashion-MNIST images); then the same synthesis node
(targeted L2 PGD relabelling, deterministic targets, eps 2.0, 20 steps, N images in shards of S) is computed
from scratch under each configuration, in the order A B C C B A, and the mean of the two runs is reported:

  A  1 actor,  1 CPU, 1 torch thread
  B  2 actors, 1 CPU and 1 torch thread each
  C  1 actor,  2 CPUs, 2 torch threads  (what a user without Ray would run on this machine)

Wall time runs from the pool's creation (actor start and model load included) to the last shard written;
the shards written are checked to be identical across configurations.

    .venv/bin/python benchmarks/bench_shards.py [--n 2000] [--shard 100] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
import torch  # noqa: E402

from _results import record  # noqa: E402
from sweeper import kinds  # noqa: E402
from sweeper.sweep.plan import build_plan  # noqa: E402
from sweeper.run.shards import ShardPool, synthesize_on_pool  # noqa: E402
from sweeper.sweep.spec import loads  # noqa: E402
from sweeper.store.store import Store  # noqa: E402

SWEEP = """
name: bench_shards
seed: 0
data: {dataset: fashion_mnist, test_size: 200}
run: {store: STORE, robust_curve: {size: 0}}
stages:
  src: {kind: train, arch: small_cnn, train_size: 2000, train: {epochs: 1, batch_size: 128, lr: 0.05}}
  d_det: {kind: synthesize, from: src, method: relabel, size: N, targets: deterministic,
          attack: {norm: l2, eps: 2.0, steps: STEPS}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--shard", type=int, default=100)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="sweeper-bench-shards-")
    text = SWEEP.replace("STORE", root).replace("size: N", f"size: {args.n}").replace("STEPS", str(args.steps))
    plan = build_plan(loads(text))
    store = Store(root)
    ctx = kinds.Context(plan.sweep.data, int(plan.sweep.seed), store, shard_size=args.shard)
    src = next(n for n in plan.nodes.values() if n.kind == "train")
    synth = next(n for n in plan.nodes.values() if n.kind == "synthesize")
    torch.set_num_threads(2)
    kinds.run_train(src, ctx)

    configs = {"A": dict(actors=1, cpus_per_actor=1, threads=1), "B": dict(actors=2, cpus_per_actor=1, threads=1),
               "C": dict(actors=1, cpus_per_actor=2, threads=2)}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 << 20)
    walls: dict[str, list[float]] = {k: [] for k in configs}
    reference = None
    try:
        for name in "ABCCBA":
            store.delete(f"shards/{synth.key}")
            store.delete(f"nodes/{synth.key}")
            t0 = time.perf_counter()
            pool = ShardPool(store, ctx.data, ctx.seed, **configs[name])
            synthesize_on_pool(pool, synth, ctx)
            walls[name].append(time.perf_counter() - t0)
            pool.shutdown()
            x = store.load_tensors(synth.key)["x"]
            if reference is None:
                reference = x
            assert torch.equal(x, reference), f"config {name} synthesized different images"
            print(f"  {name}: {walls[name][-1]:.1f} s", flush=True)
    finally:
        ray.shutdown()
    rate = {k: args.n / (sum(v) / len(v)) for k, v in walls.items()}
    print(f"synthesis of {args.n} images (relabel, L2 PGD {args.steps} steps, shards of {args.shard}), "
          f"{os.cpu_count()} cores:")
    print(f"  A 1 actor  x 1 thread : {rate['A']:7.1f} img/s")
    print(f"  B 2 actors x 1 thread : {rate['B']:7.1f} img/s   B/A = {rate['B'] / rate['A']:.2f} (target >= 1.7)")
    print(f"  C 1 actor  x 2 threads: {rate['C']:7.1f} img/s   B/C = {rate['B'] / rate['C']:.2f}")
    labels = {"A": "A: 1 actor x 1 thread", "B": "B: 2 actors x 1 thread", "C": "C: 1 actor x 2 threads"}
    record("bench_shards", title="Synthesis on the Ray actor pool (targeted L2 PGD relabelling; wall time includes "
           "actor start and model load; order A B C C B A; the synthesized images were identical in every "
           "configuration). Target B/A >= 1.7.",
           figures={"B_over_A": round(rate["B"] / rate["A"], 3), "B_over_C": round(rate["B"] / rate["C"], 3)},
           params={"images": args.n, "shard": args.shard, "steps": args.steps},
           tables=[{"header": ["configuration", "img/s", "wall s (runs)"],
                    "rows": [[labels[k], round(rate[k], 1), ", ".join(f"{w:.1f}" for w in walls[k])]
                             for k in "ABC"]}])


if __name__ == "__main__":
    main()
