"""Where a Tune trial's fixed cost goes: sweeper's per-trial path, step by step, in one process (no Ray).

For each node of a plan of N tiny nodes (N/2 one-epoch trainings and one evaluate node per trained model) this
runs exactly what ``sweeper.run.tuning._trial`` does (the same calls in the same order, ``tune.report`` replaced by
a no-op), plus what the driver does per trial (``tuning.Progress.on_trial_result`` per report and
``on_trial_complete``), timing every step and counting the store's filesystem calls (``Store.requests``); before
that, the same nodes' kind functions in a plain loop (``kinds.run_train`` / ``kinds.run_evaluate`` on a fresh
store). Pure compute is ``training.train`` / ``evaluation.evaluate`` (timed inside the kind functions); the
fixed cost per trial is the trial path minus the pure compute (for evaluate nodes it includes run_evaluate's own
second forward pass over the test set, for the shifted-label accuracy: noticeable on Fashion-MNIST, not on toy).

A warm-up pass (its own store, its own nodes) runs first, so the timed passes see what a reused Tune actor sees:
modules imported, the dataset cached, W&B's service started. ``--cold`` also runs, in a fresh interpreter, the
first four trials of a new trial actor, step by step (its imports, first dataset load, torch's lazy imports on
the first optimizer, the first ``wandb.init``, which starts W&B's service). ``--profile`` prints the
cProfile of the timed trial path. ``--plan-nodes`` pads the plan (more evaluate nodes that are not run) to show
how the per-trial plan unpickling (``tune.with_parameters`` does ``ray.get(plan)`` per trial) grows with it.

    .venv/bin/python benchmarks/_trial_overhead.py [--nodes 8] [--dataset toy|fashion_mnist]
        [--wandb disabled offline] [--repeat 3] [--profile] [--cold]

``TRIAL_OVERHEAD_SRC=/path/to/checkout`` runs that checkout's sweeper instead of the installed one (compare
two versions by alternating runs: the machine's load drifts).
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pickle
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

_T0 = time.perf_counter()  # --first-trial: the imports below are part of a fresh actor's cost

if os.environ.get("TRIAL_OVERHEAD_SRC"):  # another checkout's sweeper (a before/after comparison)
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")
                        and "editable" not in type(f).__module__ and "editable" not in repr(f)]
    sys.path.insert(0, os.environ["TRIAL_OVERHEAD_SRC"])

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_SILENT", "true")

import torch  # noqa: E402

from sweeper.store import checkpoints, store as store_mod

from sweeper.science import data_store

from sweeper.run import kinds

from sweeper import tracking  # noqa: E402
from sweeper.sweep.plan import build_plan  # noqa: E402
from sweeper.sweep.spec import loads  # noqa: E402
from sweeper.store.store import Store  # noqa: E402

SWEEPS = {
    "toy": ("data: {dataset: toy, toy: {d: 10, p: 0.95, n_train: 200, n_test: 100}}", "linear",
            "train: {epochs: 1, batch_size: 100, optimizer: sgd, lr: 0.1, schedule: constant}"),
    "fashion_mnist": ("data: {dataset: fashion_mnist, test_size: 200}", "small_cnn",
                      "train_size: 200, train: {epochs: 1, batch_size: 100, optimizer: sgd, lr: 0.05}"),
}


def sweep_text(root: str, dataset: str, trains: int, pad: int = 0, tag: str = "") -> str:
    data, arch, train = SWEEPS[dataset]
    lines = [f"name: trialcost{tag}", "seed: 0", data,
             f"run: {{store: {root}, cpus_per_trial: 1, max_concurrent_trials: 1, robust_curve: {{size: 0}}}}",
             "stages:"]
    for i in range(trains):
        lines.append(f"  t{i}: {{kind: train, arch: {arch}, seed: {i}, {train}}}")
    models = ", ".join(f"t{i}" for i in range(trains))
    lines.append(f"  ev: {{kind: evaluate, from: [{models}], attacks: [{{norm: linf, eps: 0.1, steps: 2}}]}}")
    for j in range(pad):  # nodes that are planned but not run: a bigger plan to unpickle per trial
        lines.append(f"  pad{j}: {{kind: evaluate, from: [{models}], attacks: [{{norm: l2, eps: {j + 1}, steps: 2}}]}}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- instrumentation
class Timers:
    """Inclusive wall time and call counts of the functions patched in (nested ones are counted in both)."""

    def __init__(self):
        self.t: dict[str, float] = defaultdict(float)
        self.n: dict[str, int] = defaultdict(int)
        self._undo: list = []

    @contextlib.contextmanager
    def step(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[name] += time.perf_counter() - t0
            self.n[name] += 1

    def patch(self, owner, attr: str, name: str) -> None:
        orig = getattr(owner, attr)

        def wrapped(*a, **k):
            with self.step(name):
                return orig(*a, **k)

        setattr(owner, attr, wrapped)
        self._undo.append((owner, attr, orig))

    def unpatch(self) -> None:
        for owner, attr, orig in reversed(self._undo):
            setattr(owner, attr, orig)
        self._undo.clear()

    def reset(self) -> None:
        self.t.clear()
        self.n.clear()


def instrument(tm: Timers) -> None:
    # what the kind functions call (looked up as module globals of kinds / tracking at call time)
    tm.patch(kinds, "provenance", "  provenance() [kinds._meta]")
    tm.patch(store_mod, "provenance", "  provenance() [W&B config]")  # tracking imports it from .store per call
    tm.patch(kinds, "train", "  compute: training.train (incl. per-epoch hook)")
    tm.patch(kinds, "evaluate", "  compute: evaluation.evaluate")
    tm.patch(kinds, "load_model", "  load_model (meta+tensors+build)")
    tm.patch(checkpoints, "save", "  checkpoints.save")
    tm.patch(checkpoints, "load", "  checkpoints.load")
    tm.patch(checkpoints, "drop", "  checkpoints.drop")
    tm.patch(Store, "save", "  Store.save (node artifact)")
    tm.patch(data_store, "load_split", "  data_store.load_split")
    tm.patch(data_store, "real_subset", "  data_store.real_subset")
    tm.patch(data_store, "test_set", "  data_store.test_set")
    tm.patch(tracking, "node_config", "  W&B node_config")
    tm.patch(tracking.NodeRun, "log", "  W&B log")
    tm.patch(tracking.NodeRun, "summary", "  W&B summary")
    tm.patch(tracking.NodeRun, "finish", "  W&B finish")


def driver_progress(plan, nodes, root):
    """The driver's Tune callback (``tuning.Progress``), or, should its signature have changed, a stand-in that
    does what it did per trial: a result is counted; a finished trial's node is read back from the store."""
    try:
        from sweeper.run.tuning import Progress

        return Progress(plan, nodes, Store(root), lambda line: None, quiet=True)
    except Exception as e:  # noqa: BLE001
        print(f"(tuning.Progress unusable here: {e!r}; a stand-in replays its store reads)")

    class StandIn:
        store = Store(root)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            pass

        def on_trial_complete(self, iteration, trials, trial, **info):
            key = trial.config["key"]
            node = plan.nodes[key]
            if self.store.is_done(key):
                kinds.KINDS[node.kind].summary(self.store.load_meta(key))

        def close(self):
            pass

    return StandIn()


class FakeTrial:
    def __init__(self, key):
        self.config = {"key": key}


def trial_path(plan, node, store_uri: str, wandb_mode: str, tm: Timers, progress, requests: list) -> None:
    """``tuning._trial`` step by step (tune.report -> the driver's Progress.on_trial_result), then the driver's
    on_trial_complete. Keep in step with tuning._trial."""
    import ray.tune  # noqa: F401  (imported by tuning anyway)

    with tm.step("plan ray.get per trial (unpickle; with_parameters)"):
        pickle.loads(PLAN_BLOB)
    with tm.step("torch.set_num_threads"):
        torch.set_num_threads(1)
    with tm.step("Store(store_uri)"):
        store = Store(store_uri)
    with tm.step("store.is_done (trial start)"):
        if store.is_done(node.key):
            return
    warnings: list[str] = []
    with tm.step("kinds.Context.of"):
        ctx = kinds.Context.of(plan, store, warn=warnings.append)
    reported = []
    trial = FakeTrial(node.key)
    with tm.step("tracking.tracked: open (wandb.init)"):
        cm = tracking.tracked(plan, node, store, wandb_mode)
        wb = cm.__enter__()
    try:
        def report(metrics: dict) -> None:
            extra = {"wandb_error": wb.error} if wb.error else {}
            if warnings:
                extra["warning"] = "; ".join(warnings)
                warnings.clear()
            result = {**{k: v for k, v in metrics.items() if isinstance(v, (int, float))}, **extra}
            reported.append(1)
            with tm.step("driver: Progress.on_trial_result"):
                progress.on_trial_result(0, [], trial, result)

        with tm.step("kinds.execute"):
            meta = kinds.execute(node, ctx, wb, progress=report)
        if not reported:
            report(kinds.KINDS[node.kind].metrics(meta))
        with tm.step("print summary"):
            print(f"{node.kind} {node.label}: {kinds.KINDS[node.kind].summary(meta)}", file=io.StringIO())
    finally:
        with tm.step("tracking.tracked: close (finish)"):
            cm.__exit__(None, None, None)
    requests.append(getattr(store, "requests", None))
    before = getattr(progress.store, "requests", None)
    with tm.step("driver: Progress.on_trial_complete"):
        progress.on_trial_complete(0, [], trial)
    if before is not None:
        requests.append(("driver", progress.store.requests - before))


PLAN_BLOB = b""


def run_pass(dataset, n_nodes, wandb_mode, tm: Timers, tag: str, pad: int = 0, profile=None):
    global PLAN_BLOB
    root = tempfile.mkdtemp(prefix="sweeper-trialcost-")
    try:
        plan = build_plan(loads(sweep_text(root, dataset, max(1, n_nodes // 2), pad, tag)))
        PLAN_BLOB = pickle.dumps(plan)
        store = Store(root)
        store.claim()
        nodes = [n for n in plan.nodes.values() if not n.stage.startswith("pad")][:n_nodes]
        progress = driver_progress(plan, nodes, root)
        tm.reset()
        requests: list = []
        t0 = time.perf_counter()
        if profile is not None:
            profile.enable()
        for node in nodes:
            trial_path(plan, node, store.uri, wandb_mode, tm, progress, requests)
        if profile is not None:
            profile.disable()
        wall = time.perf_counter() - t0
        progress.close()
        assert all(store.is_done(n.key) for n in nodes)
        return wall, len(nodes), dict(tm.t), dict(tm.n), requests, len(PLAN_BLOB), len(plan.nodes)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_loop(dataset, n_nodes, tm: Timers, tag: str):
    """The kind functions alone, in a loop on a fresh store (what bench_tune's loop does)."""
    root = tempfile.mkdtemp(prefix="sweeper-trialcost-loop-")
    try:
        plan = build_plan(loads(sweep_text(root, dataset, max(1, n_nodes // 2), 0, tag)))
        store = Store(root)
        ctx = kinds.Context.of(plan, store)
        nodes = list(plan.nodes.values())[:n_nodes]
        tm.reset()
        t0 = time.perf_counter()
        for node in nodes:
            kinds.KINDS[node.kind].run(node, ctx, None)
        return time.perf_counter() - t0, dict(tm.t)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def first_trials(dataset: str, mode: str) -> None:
    """A fresh interpreter (a new trial actor): its imports, then one training trial and one evaluate trial,
    each step timed (no warm-up: the first trial of an actor pays the first data load, the first W&B start,
    torch's lazy initialisation...)."""
    imports = time.perf_counter() - _T0
    t = time.perf_counter()
    import ray.tune  # noqa: F401
    from sweeper import tuning  # noqa: F401
    tune_import = time.perf_counter() - t
    print(f"fresh actor, wandb {mode}: import torch + sweeper {1000 * imports:.0f} ms, import ray.tune + "
          f"sweeper.run.tuning {1000 * tune_import:.0f} ms")
    tm = Timers()
    instrument(tm)
    global PLAN_BLOB
    root = tempfile.mkdtemp(prefix="sweeper-trialcost-first-")
    try:
        plan = build_plan(loads(sweep_text(root, dataset, 2, 0, "first")))
        PLAN_BLOB = pickle.dumps(plan)
        store = Store(root)
        store.claim()
        progress = driver_progress(plan, list(plan.nodes.values()), root)
        order = [n for n in plan.nodes.values() if n.kind == "train"] + \
                [n for n in plan.nodes.values() if n.kind == "evaluate"]
        for i, node in enumerate(order[:4]):
            tm.reset()
            t = time.perf_counter()
            trial_path(plan, node, store.uri, mode, tm, progress, [])
            wall = time.perf_counter() - t
            big = sorted(((v, k) for k, v in tm.t.items() if v > 0.002), reverse=True)
            print(f"  trial {i + 1} ({node.kind}): {1000 * wall:.0f} ms; "
                  + ", ".join(f"{k.strip()} {1000 * v:.0f}" for v, k in big))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def cold(dataset: str, mode: str) -> None:
    out = subprocess.run([sys.executable, __file__, "--first-trial", "--dataset", dataset, "--wandb", mode],
                         capture_output=True, text=True, timeout=600)
    print(out.stdout, end="")
    if out.returncode:
        print(out.stderr[-3000:], file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=8, help="nodes run per pass (half train, half evaluate)")
    ap.add_argument("--dataset", choices=sorted(SWEEPS), default="toy")
    ap.add_argument("--wandb", nargs="+", default=["disabled", "offline"], choices=["disabled", "offline"])
    ap.add_argument("--plan-nodes", type=int, default=0, help="extra planned (not run) evaluate stages")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes per W&B mode (medians are shown)")
    ap.add_argument("--profile", action="store_true", help="cProfile of the timed trial path")
    ap.add_argument("--cold", action="store_true", help="also time a fresh actor's first trials")
    ap.add_argument("--first-trial", action="store_true", help=argparse.SUPPRESS)  # --cold's subprocess
    args = ap.parse_args()
    if args.first_trial:
        first_trials(args.dataset, args.wandb[0])
        return
    torch.set_num_threads(1)
    tm = Timers()
    instrument(tm)
    n = args.nodes
    print(f"{n} nodes ({args.dataset}), one process, per trial in ms (inclusive; indented rows are inside "
          "kinds.execute or W&B open/close)")
    loop_wall, loop_t = run_loop(args.dataset, n, tm, "w")  # warm-up: imports, data cache
    loop_wall, loop_t = run_loop(args.dataset, n, tm, "l")
    compute = sum(v for k, v in loop_t.items() if k.startswith("  compute"))
    print(f"\nloop of kind functions: {1000 * loop_wall / n:.1f} ms/node (pure compute {1000 * compute / n:.1f} "
          f"ms/node; the rest is their own data/ckpt/save/provenance)")
    for mode in args.wandb:
        run_pass(args.dataset, min(n, 4), mode, tm, f"warm{mode}")  # warm-up (W&B service, caches)
        prof = cProfile.Profile() if args.profile else None
        passes = [run_pass(args.dataset, n, mode, tm, f"{mode}{r}", args.plan_nodes, prof) for r in range(args.repeat)]
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        k, blob, planned = passes[0][1], passes[0][5], passes[0][6]
        walls = [p[0] for p in passes]
        comps = [sum(v for key, v in p[2].items() if key.startswith("  compute")) for p in passes]
        fixed = [w - c for w, c in zip(walls, comps)]
        print(f"\n== wandb {mode}: trial path {1000 * med(walls) / k:.1f} ms/trial, pure compute "
              f"{1000 * med(comps) / k:.1f} ms/trial -> fixed cost {1000 * med(fixed) / k:.1f} ms/trial "
              f"(median of {len(passes)} passes: {', '.join(f'{1000 * f / k:.0f}' for f in fixed)}; plan: "
              f"{planned} nodes, {blob / 1024:.0f} KiB pickled)")
        t = {key: med([p[2].get(key, 0.0) for p in passes]) for key in passes[0][2]}
        cnt = passes[0][3]
        for key in sorted(t, key=lambda s: (s.startswith(" "), -t[s])):
            print(f"  {key:<58s} {1000 * t[key] / k:8.2f}   ({cnt[key] / k:.1f} calls/trial)")
        reqs = passes[0][4]
        trial_reqs = [r for r in reqs if isinstance(r, int)]
        drv = [r[1] for r in reqs if isinstance(r, tuple)]
        if trial_reqs:
            print(f"  store requests per trial: {sum(trial_reqs) / len(trial_reqs):.1f} in the trial, "
                  f"{sum(drv) / max(1, len(drv)):.1f} in the driver's callback")
        if prof is not None:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(35)
            print(s.getvalue())
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
            print(s.getvalue())
    tm.unpatch()
    if args.cold:
        print("\nthe first trials of a fresh trial actor (a new interpreter; ms):")
        for mode in args.wandb:
            cold(args.dataset, mode)


if __name__ == "__main__":
    main()
