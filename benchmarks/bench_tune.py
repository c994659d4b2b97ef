"""sweeper's Ray Tune overhead: N training trials through Tune against the same training function in a loop.

Each trial trains small_cnn on M Fashion-MNIST images for E epochs (robust curve off, so only training is
timed). Measured in one run, every configuration on a fresh store, in the order A B C D D C B A (the mean of
the two runs of each is reported, so a machine that slows down or speeds up during the run is evened out):

  A loop-1   kinds.run_train N times in this process, 1 torch thread
  B tune-1   the same N nodes as one Tune experiment, 1 trial at a time, 1 CPU and 1 thread per trial
  C tune-2   2 concurrent trials, 1 CPU and 1 thread each (what `sweeper run` does on this 2-core machine)
  D loop-2   the loop with 2 torch threads (what one would run without Ray)
  tiny       N one-epoch, 200-image trials, Tune vs loop: the per-trial fixed cost

`ray.init` is timed on its own (sweeper pays it once per `sweeper run`).

    .venv/bin/python benchmarks/bench_tune.py [--trials 4] [--images 4000] [--epochs 3]
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
from sweeper.science import data_store
from sweeper import kinds  # noqa: E402
from sweeper.sweep.plan import build_plan  # noqa: E402
from sweeper.sweep.schema import DataSpec  # noqa: E402
from sweeper.sweep.spec import loads  # noqa: E402
from sweeper.store.store import Store  # noqa: E402
from sweeper.run.tuning import run_trials  # noqa: E402


def plan_for(root: str, trials: int, images: int, epochs: int, concurrent: int):
    lines = ["name: bench_tune", "seed: 0", "data: {dataset: fashion_mnist, test_size: 200}",
             f"run: {{store: {root}, max_concurrent_trials: {concurrent}, cpus_per_trial: 1, "
             "robust_curve: {size: 0}}", "stages:"]
    for i in range(trials):
        lines.append(f"  t{i}: {{kind: train, arch: small_cnn, train_size: {images}, seed: {i}, "
                     f"train: {{epochs: {epochs}, batch_size: 128, lr: 0.05}}}}")
    return build_plan(loads("\n".join(lines)))


def run_loop(trials, images, epochs, threads) -> float:
    root = tempfile.mkdtemp(prefix="sweeper-bench-tune-")
    plan, store = plan_for(root, trials, images, epochs, 1), Store(root)
    torch.set_num_threads(threads)
    ctx = kinds.Context.of(plan, store)
    t0 = time.perf_counter()
    for node in plan.nodes.values():
        kinds.run_train(node, ctx)
    return time.perf_counter() - t0


def run_tune(trials, images, epochs, concurrent) -> float:
    root = tempfile.mkdtemp(prefix="sweeper-bench-tune-")
    plan, store = plan_for(root, trials, images, epochs, concurrent), Store(root)
    t0 = time.perf_counter()
    run_trials(list(plan.nodes.values()), plan=plan, store=store, run_spec=plan.sweep.run, wandb_mode="disabled",
               log=lambda m: None)
    wall = time.perf_counter() - t0
    assert all(store.is_done(k) for k in plan.nodes)
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    n, m, e = args.trials, args.images, args.epochs
    # the loop's data load is not timed; Tune's is
    data_store.load_split(DataSpec(dataset="fashion_mnist"), "train")
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=256 << 20)
    init_s = time.perf_counter() - t0
    try:
        runs = {"loop-1": lambda: run_loop(n, m, e, 1), "tune-1": lambda: run_tune(n, m, e, 1),
                "tune-2": lambda: run_tune(n, m, e, 2), "loop-2": lambda: run_loop(n, m, e, 2)}
        walls: dict[str, list[float]] = {k: [] for k in runs}
        for k in ["loop-1", "tune-1", "tune-2", "loop-2", "loop-2", "tune-2", "tune-1", "loop-1"]:  # drift cancels
            walls[k].append(runs[k]())
            print(f"  {k}: {walls[k][-1]:.1f} s", flush=True)
        w = {k: sum(v) / len(v) for k, v in walls.items()}
        w["tiny-loop"] = run_loop(n, 200, 1, 1)
        w["tiny-tune"] = run_tune(n, 200, 1, 1)
    finally:
        ray.shutdown()
    print(f"{n} trials of small_cnn on {m} images x {e} epochs, {os.cpu_count()} cores:")
    for k in ("loop-1", "tune-1", "tune-2", "loop-2"):
        print(f"  {k:7s} {w[k]:7.1f} s   ({w[k] / n:.1f} s per trial)")
    print(f"  Tune overhead, 1 trial at a time: tune-1 / loop-1 = {w['tune-1'] / w['loop-1']:.3f} "
          f"(+{(w['tune-1'] - w['loop-1']) / n:.1f} s per trial; target <= 1.10)")
    print(f"  2 concurrent 1-thread trials vs a 2-thread loop: tune-2 / loop-2 = {w['tune-2'] / w['loop-2']:.3f}")
    print(f"  fixed cost per trial (1-epoch, 200-image trials): tune {w['tiny-tune'] / n:.1f} s vs loop "
          f"{w['tiny-loop'] / n:.2f} s -> {(w['tiny-tune'] - w['tiny-loop']) / n:.1f} s per trial")
    print(f"  ray.init (local, once per sweeper run): {init_s:.1f} s")
    labels = {"loop-1": "A: loop, 1 thread", "tune-1": "B: Tune, 1 trial at a time, 1 thread",
              "tune-2": "C: Tune, 2 concurrent trials x 1 thread", "loop-2": "D: loop, 2 threads"}
    record("bench_tune", title="N training trials through Ray Tune against the same function in a loop "
           "(order A B C D D C B A, mean of 2); the fixed costs. Target B/A <= 1.10.",
           figures={"tune1_over_loop1": round(w["tune-1"] / w["loop-1"], 3),
                    "tune_overhead_s_per_trial": round((w["tune-1"] - w["loop-1"]) / n, 2),
                    "tune2_over_loop2": round(w["tune-2"] / w["loop-2"], 3),
                    "fixed_cost_s_per_trial_tiny": round((w["tiny-tune"] - w["tiny-loop"]) / n, 2),
                    "ray_init_s": round(init_s, 2)},
           params={"trials": n, "images": m, "epochs": e},
           tables=[{"header": ["configuration", "wall s (mean of 2)", "runs", "s per trial"],
                    "rows": [[labels[k], round(w[k], 1), ", ".join(f"{x:.1f}" for x in walls[k]), round(w[k] / n, 1)]
                             for k in labels]
                    + [[f"tiny: {n} x (1 epoch, 200 images), {how}", round(w[k], 2), "", round(w[k] / n, 2)]
                       for how, k in (("loop", "tiny-loop"), ("Tune", "tiny-tune"))]}])


if __name__ == "__main__":
    main()
