"""sweeper at scale, measured on this machine (issue: no wave barrier, busy workers, small per-trial cost, big plans).

Four measurements, each in one run of this script (ratios and shares, so the machine's speed cancels):

  utilisation  a wide DAG of small real Fashion-MNIST nodes (8 relabelling nodes of 2 shards each -> 16
               trainings (small CNN and MLP) -> 16 evaluations, the source model trained beforehand) through
               ``run_plan_ray`` on a local Ray with 2 CPUs: worker-seconds spent inside nodes (shard and node
               wall times from the stored metadata) over (2 workers x wall). Streaming (what `sweeper run` does)
               against the same engine held to wave order (``barrier=True``: nothing starts before every
               shallower node is done), in the order S B B S, each on a fresh store.
  trials       N tiny training trials (toy data, 1 epoch of 200 points) through the whole `sweeper run`
               (a fresh process: Ray start, Tune, store, W&B offline) against the same nodes' function in a loop
               (kinds.run_train), N = 50, 200, 1000: the fixed cost per trial, and how it grows with N.
  planning     load + plan of generated sweeps of ~10,000 and ~100,000 nodes (benchmarks/_scale_plan.py).
  report       `sweeper report` on a store of ~10,000 evaluation rows (benchmarks/_scale_plan.py).

    .venv/bin/python benchmarks/bench_scale.py [--only utilisation,trials,plan] [--trials 50,200,1000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _results import record  # noqa: E402

WIDE = """
name: bench_wide
seed: 0
data: {dataset: fashion_mnist, test_size: 1000}
run: {store: STORE, shard_size: 300, synthesis_actors: 2, cpus_per_trial: 1, max_concurrent_trials: 2,
      robust_curve: {size: 0}}
stages:
  std:
    kind: train
    arch: small_cnn
    train_size: 2000
    train: {epochs: 2, batch_size: 128, optimizer: sgd, lr: 0.05, schedule: cosine}
  d:
    kind: synthesize
    from: std
    method: relabel
    size: 600
    targets: random
    seed: {grid: [0, 1]}
    attack: {norm: l2, eps: {grid: [1.0, 2.0, 3.0, 4.0]}, steps: 10, step_size: 0.5}
  cnn: {kind: train, from: d, arch: small_cnn, train: {epochs: 6, batch_size: 128, optimizer: sgd, lr: 0.05}}
  mlp: {kind: train, from: d, arch: mlp, train: {epochs: 15, batch_size: 128, optimizer: sgd, lr: 0.05}}
  eval: {kind: evaluate, from: [cnn, mlp], attacks: [{norm: l2, eps: 1.0, steps: 10}]}
"""

TINY = """
name: bench_tiny
seed: 0
data: {dataset: toy, toy: {d: 10, p: 0.95, n_train: 200, n_test: 100}}
run: {store: STORE, cpus_per_trial: 1, max_concurrent_trials: 2, robust_curve: {size: 0}}
stages:
  t:
    kind: train
    arch: linear
    seed: {grid: SEEDS}
    train: {epochs: 1, batch_size: 100, optimizer: sgd, lr: 0.1, schedule: constant, weight_decay: 0.0}
"""


def _plan(text: str, root: str):
    from sweeper.sweep.plan import build_plan
    from sweeper.sweep.spec import loads

    return build_plan(loads(text.replace("STORE", root)))


# ------------------------------------------------------------------------------------------ utilisation
def busy_seconds(nodes: dict, store) -> float:
    """Worker-seconds inside nodes: every synthesis shard's wall time, every training/evaluation node's."""
    busy = 0.0
    for key, node in nodes.items():
        meta = store.load_meta(key)
        if node.kind == "synthesize":
            busy += sum(m.get("wall_s", 0.0) for m in meta["shard_meta"])
        elif node.kind in ("train", "evaluate"):
            busy += meta["wall_s"]
    return busy


def utilisation_run(barrier: bool, source_store: str) -> dict:
    from sweeper.run.engines import run_plan_ray
    from sweeper.store.store import Store

    root = tempfile.mkdtemp(prefix="sweeper-bench-wide-")
    plan, store = _plan(WIDE, root), Store(root)
    src = Store(source_store)
    std = next(n for n in plan.nodes.values() if n.stage == "std")
    store.claim()
    store.save(std.key, meta=src.load_meta(std.key), tensors=src.load_tensors(std.key))  # not timed
    t0 = time.perf_counter()
    counts = run_plan_ray(plan, store, wandb_mode="disabled", barrier=barrier, log=lambda m: None)
    wall = time.perf_counter() - t0
    busy = busy_seconds({k: n for k, n in plan.nodes.items() if k != std.key}, store)
    return {"wall_s": wall, "busy_s": busy, "share": busy / (2 * wall), "ran": counts["ran"]}


def bench_utilisation() -> dict:
    import ray

    from sweeper.run import kinds
    from sweeper.store.store import Store

    src = tempfile.mkdtemp(prefix="sweeper-bench-wide-src-")
    plan, store = _plan(WIDE, src), Store(src)
    store.claim()
    std = next(n for n in plan.nodes.values() if n.stage == "std")
    kinds.run_train(std, kinds.Context.of(plan, store))
    print(f"utilisation: {len(plan.nodes) - 1} nodes ({sum(n.kind == 'synthesize' for n in plan.nodes.values())} "
          "synthesis) on a local Ray with 2 CPUs", flush=True)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=256 << 20)
    runs: dict[str, list[dict]] = {"stream": [], "waves": []}
    try:
        for name in ("stream", "waves", "waves", "stream"):
            r = utilisation_run(name == "waves", src)
            runs[name].append(r)
            print(f"  {name}: wall {r['wall_s']:.1f} s, busy {r['busy_s']:.1f} worker-s, share {r['share']:.3f}",
                  flush=True)
    finally:
        ray.shutdown()
    mean = {k: {m: sum(r[m] for r in v) / len(v) for m in ("wall_s", "busy_s", "share")} for k, v in runs.items()}
    return {"runs": runs, "mean": mean}


# ---------------------------------------------------------------------------------------------- trials
def tiny_loop(n: int) -> float:
    import torch

    from sweeper.run import kinds
    from sweeper.store.store import Store

    root = tempfile.mkdtemp(prefix="sweeper-bench-tiny-loop-")
    plan = _plan(TINY.replace("SEEDS", str(list(range(n)))), root)
    store = Store(root)
    store.claim()
    torch.set_num_threads(1)
    ctx = kinds.Context.of(plan, store)
    t0 = time.perf_counter()
    for node in plan.nodes.values():
        kinds.run_train(node, ctx)
    return time.perf_counter() - t0


def tiny_sweeper(n: int) -> tuple[float, float]:
    """(wall of `sweeper run` in a fresh process, its own 'Ray: ...' start-up seconds)."""
    root = tempfile.mkdtemp(prefix="sweeper-bench-tiny-run-")
    path = os.path.join(root, "tiny.yaml")
    with open(path, "w") as f:
        f.write(TINY.replace("STORE", os.path.join(root, "store")).replace("SEEDS", str(list(range(n)))))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "sweeper.cli", "run", path, "--no-report"], capture_output=True,
                       text=True, env=env, cwd=root)
    wall = time.perf_counter() - t0
    if r.returncode != 0 or f"ran {n} nodes" not in r.stdout:
        raise SystemExit(f"sweeper run of {n} tiny trials failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return wall


def bench_trials(ns: list[int]) -> dict:
    out = {}
    base = tiny_sweeper(1)  # the fixed cost of one `sweeper run` (imports, Ray start, Tune start, one trial)
    print(f"trials: `sweeper run` of 1 tiny trial: {base:.1f} s (start-up, paid once per run)", flush=True)
    for n in ns:
        loop = tiny_loop(n)
        wall = tiny_sweeper(n)
        per = (wall - base - loop) / max(n - 1, 1)
        out[n] = {"loop_s": loop, "sweeper_s": wall, "startup_s": base, "fixed_s_per_trial": per}
        print(f"  N={n}: loop {loop:.1f} s, sweeper run {wall:.1f} s -> {per:.3f} s per trial beyond its work "
              "(start-up subtracted)", flush=True)
    return out


TITLES = {
    "utilisation": "Scale, utilisation: worker-seconds inside nodes over (2 workers x wall) for a wide DAG of small "
                   "real nodes, streaming vs wave order (order S B B S, fresh store each). Target >= 0.85.",
    "trials": "Scale, per-trial cost: N tiny training trials through `sweeper run` (a fresh process, W&B offline) "
              "against the same nodes in a loop; start-up (a 1-trial run) subtracted. Target <= 0.3 s, flat in N.",
    "plan": "Scale, planning and report: load + plan of generated sweeps of ~10k and ~100k nodes (targets < 2 s, "
            "< 20 s); `sweeper report` on ~10k evaluation rows (target < 10 s).",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="utilisation,trials,plan")
    ap.add_argument("--trials", default="50,200,1000")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if "utilisation" in only:
        u = bench_utilisation()
        m = u["mean"]
        record("bench_scale_utilisation", title=TITLES["utilisation"],
               figures={"busy_share_stream": round(m["stream"]["share"], 3),
                        "busy_share_waves": round(m["waves"]["share"], 3),
                        "wall_waves_over_stream": round(m["waves"]["wall_s"] / m["stream"]["wall_s"], 3)},
               params={"dag": "8 synthesize (2 shards) -> 16 train -> 16 evaluate, Fashion-MNIST", "cpus": 2},
               tables=[{"header": ["order", "wall s (runs)", "busy worker-s (mean)", "busy share (mean)"],
                        "rows": [[k, ", ".join(f"{r['wall_s']:.1f}" for r in u["runs"][k]),
                                  round(m[k]["busy_s"], 1), round(m[k]["share"], 3)] for k in ("stream", "waves")]}])
    if "trials" in only:
        ns = [int(x) for x in args.trials.split(",")]
        t = bench_trials(ns)
        record("bench_scale_trials", title=TITLES["trials"],
               figures={f"fixed_s_per_trial_n{n}": round(r["fixed_s_per_trial"], 3) for n, r in t.items()},
               params={"trials": args.trials, "concurrent": 2},
               tables=[{"header": ["N tiny trials", "loop s", "sweeper run s", "start-up s (N=1 run)",
                                   "fixed s per trial"],
                        "rows": [[n, round(r["loop_s"], 2), round(r["sweeper_s"], 1), round(r["startup_s"], 1),
                                  round(r["fixed_s_per_trial"], 3)] for n, r in t.items()]}])
    if "plan" in only:
        import _scale_plan

        rows, figures = [], {}
        for n in (10_000, 100_000):
            secs, nodes = _scale_plan.time_planning(n)
            figures[f"plan_s_{nodes}_nodes"] = round(secs, 2)
            rows.append([f"load + plan, {nodes:,} nodes", round(secs, 2)])
            print(f"planning: {nodes} nodes in {secs:.2f} s", flush=True)
        secs, n_rows = _scale_plan.time_report(10_000)
        figures[f"report_s_{n_rows}_rows"] = round(secs, 2)
        rows.append([f"sweeper report, {n_rows:,} evaluation rows", round(secs, 2)])
        print(f"report: {n_rows} rows in {secs:.2f} s", flush=True)
        record("bench_scale_plan", title=TITLES["plan"], figures=figures, params={},
               tables=[{"header": ["what", "seconds"], "rows": rows}])


if __name__ == "__main__":
    main()
