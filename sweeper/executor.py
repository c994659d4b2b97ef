"""Runs a plan wave by wave, skipping nodes whose artifacts are already in the store.

Re-running the same sweep resumes: finished nodes are skipped, finished synthesis shards are kept, and a
training node continues from its last per-epoch checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Callable

import torch
from tqdm import tqdm

from . import stages, tracking
from .data_store import resolve_data_root
from .plan import Plan
from .leases import Leases
from .store import Store

Log = Callable[[str], None]


def _default_log(msg: str) -> None:
    print(msg, flush=True)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the run stops where it is; what finished is in the store."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


RECEIVED: list[int] = []  # the signals stop_on_signals() turned into Interrupted, in order


class Incomplete(RuntimeError):
    """The run ended but some node it was asked for is not done in the store (no intact manifest whose files
    are all there with their sizes; the inputs it read were sha256-checked by verify_reads)."""


@contextlib.contextmanager
def stop_on_signals():
    """While running: SIGINT, SIGTERM and SIGHUP (a closed terminal) raise :class:`Interrupted` in the main thread (Ray's driver turns SIGTERM
    into a bare exit, and Ray Tune would catch SIGINT and end "gracefully"); the old handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        RECEIVED.append(signum)  # Ray's wait loops re-raise any exception from a handler as a bare KeyboardInterrupt
        raise Interrupted(signum)

    RECEIVED.clear()
    sigs = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    old = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def verify_reads(plan: Plan, store: Store, log: Log) -> list[str]:
    """Check every sha256 of the finished nodes this run will read (the inputs of the nodes still to do). A
    damaged one is reported once with its label and key, moved aside (store.quarantine) and so computed again
    in this run. Returns the keys moved aside."""
    moved: list[str] = []
    checked: set[str] = set()
    while True:
        todo = {k for k in plan.nodes if not store.is_done(k)}
        reads = {i for k in todo for i in plan.nodes[k].inputs.values()} - todo - checked
        if not reads:
            return moved
        for key in sorted(reads):
            checked.add(key)
            damage = store.damage(key)
            if damage is not None:
                where = store.quarantine(key, damage)
                moved.append(key)
                log(f"sweeper: warning: {plan.nodes[key].label} ({key}): stored artifact is damaged ({damage}); "
                    + (f"moved aside to {where}, computing it again" if where else "it is being replaced"))


def check_done(plan: Plan, store: Store) -> None:
    missing = [n for n in plan.nodes.values() if not store.is_done(n.key)]
    if missing:
        names = ", ".join(f"{n.label} ({n.key})" for n in missing[:5])
        raise Incomplete(f"{len(missing)} node(s) of the plan are not done after the run: {names}"
                         f"{' ...' if len(missing) > 5 else ''}")


def run_plan(plan: Plan, store: Store, *, log: Log = _default_log, threads: int | None = None,
             wandb_mode: str | None = None) -> dict:
    """Execute every node of ``plan`` not yet done, in this process. Returns counts of work done/skipped.

    Each node is computed under a lease (leases.Leases): another driver on the same store computes other nodes
    meanwhile, and a node it holds is waited for (is it done? has its lease expired?), never computed twice."""
    plan = resolve_data_root(plan, store)  # data.root: store -> the dataset pushed into this store
    if threads:
        torch.set_num_threads(threads)
    store.claim()
    store.clean_tmp()
    done, ran = 0, 0
    quiet = not sys.stderr.isatty()
    total = len(plan.nodes)
    leases = Leases(store, plan.sweep.run.lease_ttl)  # its warnings go to stderr
    pending = list(enumerate(plan.nodes.values(), 1))
    waiting: set[str] = set()  # nodes seen leased by another driver (logged once)
    try:
        with stop_on_signals():
            verify_reads(plan, store, log)
            while pending:
                progressed = False
                keys = {n.key for _, n in pending}
                for i, node in list(pending):
                    if any(k in keys for k in node.inputs.values()):
                        continue  # an input is not done yet
                    if store.is_done(node.key):
                        pending.remove((i, node))
                        done += 1
                        progressed = True
                        log(f"[{i}/{total}] {node.kind:<10} {node.label}: done"
                            f"{' by another driver' if node.key in waiting else ''}, skipped")
                        continue
                    if not leases.acquire([node.key]):
                        if node.key not in waiting:
                            waiting.add(node.key)
                            log(f"[{i}/{total}] {node.kind:<10} {node.label}: leased by another driver "
                                f"({leases.holder(node.key)}); waiting for it")
                        continue
                    try:
                        if store.is_done(node.key):  # finished (and released) between our look and our lease
                            progressed = True
                            continue
                        t0 = time.time()
                        log(f"[{i}/{total}] {node.kind:<10} {node.label} ({node.key}) ...")
                        with tracking.tracked(plan, node, store, wandb_mode) as wb:
                            summary = _run_node(plan, node, store, wb, quiet)
                        ran += 1
                        log(f"    {summary} [{time.time() - t0:.1f} s]")
                    finally:
                        leases.release(node.key)
                    pending.remove((i, node))
                    progressed = True
                    break  # look again from the top: plan order
                if pending and not progressed:
                    time.sleep(leases.poll)
    finally:
        leases.close()
    check_done(plan, store)
    return {"ran": ran, "skipped": done, "total": total}


def _run_node(plan: Plan, node, store: Store, wb, quiet: bool) -> str:
    """One node in this process; returns a one-line summary. Curves go to ``wb`` (a tracking.NodeRun)."""
    data_spec, seed = plan.sweep.data.model_dump(), int(plan.sweep.seed)
    shard_size = int(plan.sweep.run.shard_size)
    if node.kind == "train":
        bar = tqdm(total=int(node.params["train"]["epochs"]), desc=node.label, unit="epoch",
                   disable=quiet, leave=False)
        meta = stages.run_train(node, data_spec, seed, store, curve=plan.robust_curve(node),
                                on_epoch=lambda row: (bar.update(1), wb.log(row, step=row["epoch"]),
                                                      bar.set_postfix(loss=f"{row['train_loss']:.3f}",
                                                                      test=f"{row['test_acc']:.3f}")))
        bar.close()
        summary = f"test acc {meta['test_acc']:.3f}"
    elif node.kind == "synthesize":
        n = len(stages.synth_inputs(node, data_spec, seed)[1])
        bar = tqdm(total=n, desc=node.label, unit="img", disable=quiet, leave=False)
        meta = stages.run_synthesize(node, data_spec, seed, store, shard_size,
                                     on_shard=lambda m: (bar.update(m["n"]), wb.log(_shard_metrics(m))))
        bar.close()
        summary = (f"hit rate {meta['hit_rate']:.3f}" if "hit_rate" in meta
                   else f"mean feature distance {meta['mean_dist']:.3f}")
    elif node.kind == "evaluate":
        meta = stages.run_evaluate(node, data_spec, seed, store)
        wb.log(eval_metrics(meta))
        summary = f"clean {meta['clean_acc']:.3f} " + " ".join(
            f"{r['attack']} {r['acc']:.3f}" for r in meta["robust"])
    elif node.kind == "transfer":
        meta = stages.run_transfer(node, data_spec, seed, store)
        wb.log({"target_rate": meta["target_rate"], "original_rate": meta["original_rate"]})
        summary = f"reads target {meta['target_rate']:.3f}, original {meta['original_rate']:.3f}"
    else:  # the spec refuses other kinds; reaching here is a bug
        raise AssertionError(f"unknown node kind {node.kind!r}")
    return summary


def _shard_metrics(m: dict) -> dict:
    keys = ("index", "n", "images_per_s", "hit_rate", "attack_loss", "mean_dist")
    return {f"shard/{k}": m[k] for k in keys if k in m}


def eval_metrics(meta: dict) -> dict:
    out = {"clean_acc": meta["clean_acc"], "shifted_acc": meta["shifted_acc"]}
    out.update({f"robust/{r['attack']}": r["acc"] for r in meta["robust"]})
    if meta.get("worst_acc") is not None:
        out["worst_acc"] = meta["worst_acc"]
    return out


class ShardProgress:
    """Shards done / total and images/s: a bar on a terminal, a line at every quarter in a log."""

    def __init__(self, label: str, n_images: int, shard_size: int, quiet: bool, log: Log):
        self.label, self.total, self.quiet, self.log = label, -(-n_images // shard_size), quiet, log
        self.bar = tqdm(total=n_images, desc=f"  {label}", unit="img", disable=quiet, leave=False)
        self.done, self.images, self.t0 = 0, 0, time.time()

    def __call__(self, meta: dict) -> None:
        self.bar.update(meta["n"])
        self.done += 1
        self.images += meta["n"]
        if self.quiet and self.done < self.total and self.done % max(1, self.total // 4) == 0:
            rate = self.images / max(time.time() - self.t0, 1e-9)
            self.log(f"  {self.label}: {self.done}/{self.total} shards, {rate:.0f} img/s")

    def close(self) -> None:
        self.bar.close()


def local_address() -> str:
    """Where `sweeper run` without --address runs: RAY_ADDRESS when set (as in a Ray job), else a new local Ray."""
    import os

    return os.environ.get("RAY_ADDRESS") or "local"


def run_plan_ray(plan: Plan, store: Store, *, address: str | None = None, log: Log = _default_log,
                 num_cpus: int | None = None, wandb_mode: str | None = None) -> dict:
    """Execute the plan on Ray, wave by wave: synthesis on an actor pool, train/evaluate as Tune trials.

    ``address=None`` starts a private local Ray in this process (or joins RAY_ADDRESS when set);
    ``"auto"`` or ``"HOST:PORT"`` joins a running cluster. Transfer probes are cheap forward passes and run
    in the driver. Progress bars show shards and epochs on a terminal; elsewhere one line per finished unit.
    """
    plan = resolve_data_root(plan, store)  # data.root: store -> the dataset pushed into this store
    import os

    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    run = plan.sweep.run
    quiet = not sys.stderr.isatty()
    store.claim()
    store.clean_tmp()
    leases = Leases(store, run.lease_ttl)  # its warnings go to stderr
    started = not ray.is_initialized()
    if started:
        address = address or local_address()
        local = address == "local"
        if not local:  # joining a running cluster: token authentication as the cluster needs it (rayauth)
            from .cluster import ClusterError
            from .rayauth import prepare_join

            prepare_join(address)
        try:
            ray.init(address=address, num_cpus=num_cpus if local else None, include_dashboard=False,
                     object_store_memory=(512 << 20) if local else None,  # tensors go through the store, not Ray
                     log_to_driver=False, configure_logging=False)
        except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
            if local:
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
            raise ClusterError(f"cannot join the Ray cluster at {address}: {first}; is the cluster up and the "
                               "address its head's GCS address (HOST:PORT of `ray start --head --port`)?") from None
        res = ray.cluster_resources()
        log(f"Ray: {'local, started by sweeper' if local else address}; {res.get('CPU', 0):g} CPU, "
            f"{res.get('GPU', 0):g} GPU, {len([n for n in ray.nodes() if n['Alive']])} node(s)")
    ran = skipped = 0
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C stops the run (stop_on_signals), not just Tune
    try:
        with stop_on_signals():
            verify_reads(plan, store, log)
            for depth, wave in enumerate(plan.waves()):
                todo = [n for n in wave if not store.is_done(n.key)]
                skipped += len(wave) - len(todo)
                if not todo:
                    continue
                log(f"wave {depth}: {len(todo)} node(s) to run, {len(wave) - len(todo)} done")
                waiting: set[str] = set()
                while todo:  # the next wave reads this one's nodes: wait for those another driver holds
                    mine = set(leases.acquire([n.key for n in todo]))
                    try:
                        ours = [n for n in todo if n.key in mine and not store.is_done(n.key)]
                        if ours:
                            _run_wave(plan, ours, store, wandb_mode, log, quiet)
                            ran += len(ours)
                    finally:
                        for key in mine:
                            leases.release(key)
                    rest, computed = [], {n.key for n in ours}
                    for n in todo:
                        if n.key in computed:
                            continue
                        if store.is_done(n.key):
                            skipped += 1
                            if n.key in waiting:
                                log(f"  {n.kind} {n.label}: done by another driver")
                        else:
                            rest.append(n)
                    todo = rest
                    for n in todo:
                        if n.key not in waiting and n.key not in mine:
                            waiting.add(n.key)
                            log(f"  {n.kind} {n.label}: leased by another driver ({leases.holder(n.key)}); "
                                "waiting for it")
                    if todo and not mine:
                        time.sleep(leases.poll)
    finally:
        leases.close()
        if started:
            ray.shutdown()
    check_done(plan, store)
    return {"ran": ran, "skipped": skipped, "total": len(plan.nodes)}


def _run_wave(plan: Plan, todo: list, store: Store, wandb_mode: str | None, log: Log, quiet: bool) -> None:
    """The nodes of one wave that this driver holds the leases of: synthesis on an actor pool, train/evaluate
    as one Tune experiment, transfer probes here."""
    from .tuning import run_trials

    data_spec, seed = plan.sweep.data.model_dump(), int(plan.sweep.seed)
    synth = [n for n in todo if n.kind == "synthesize"]
    if synth:
        _synthesize_wave(plan, synth, store, wandb_mode, log, quiet)
    trials = [n for n in todo if n.kind in ("train", "evaluate")]
    if trials:
        t0 = time.time()
        run_trials(trials, plan=plan, store=store, run_spec=plan.sweep.run, wandb_mode=wandb_mode, log=log,
                   quiet=quiet)
        log(f"  {len(trials)} Tune trial(s) in {time.time() - t0:.1f} s")
    for node in [n for n in todo if n.kind == "transfer"]:
        with tracking.tracked(plan, node, store, wandb_mode) as wb:
            m = stages.run_transfer(node, data_spec, seed, store)
            wb.log({"target_rate": m["target_rate"], "original_rate": m["original_rate"]})
        log(f"  transfer {node.label}: reads target {m['target_rate']:.3f}, original "
            f"{m['original_rate']:.3f}")


def _synthesize_wave(plan: Plan, nodes: list, store: Store, wandb_mode: str | None, log: Log, quiet: bool) -> None:
    """A wave's synthesis nodes on one actor pool. The pool lives for this wave only: its actors hold the
    CPUs/GPUs that the wave's Tune trials need next."""
    import ray

    from .shards import ShardPool, synthesize_on_pool

    run, data_spec, seed = plan.sweep.run, plan.sweep.data.model_dump(), int(plan.sweep.seed)
    pool = ShardPool(store, data_spec, seed, actors=synthesis_actors(run, ray.cluster_resources()),
                     cpus_per_actor=float(run.cpus_per_trial), gpus_per_actor=_synth_gpus(run),
                     threads=int(max(1, run.cpus_per_trial)), log=log)
    try:
        for node in nodes:
            t0 = time.time()
            n = len(stages.synth_inputs(node, data_spec, seed)[1])
            progress = ShardProgress(node.label, n, int(run.shard_size), quiet, log)
            with tracking.tracked(plan, node, store, wandb_mode) as wb:
                meta = synthesize_on_pool(pool, node, data_spec, seed, store, int(run.shard_size),
                                          on_shard=lambda m: (progress(m), wb.log(_shard_metrics(m))))
            progress.close()
            dt = time.time() - t0
            log(f"  synthesize {node.label}: {meta['n']} images, {meta['shards']} shards in {dt:.1f} s "
                f"({meta['n'] / max(dt, 1e-9):.0f} img/s)")
        if pool.replaced:
            log(f"  {pool.replaced} synthesis actor(s) were lost and replaced; their shards were retried")
    finally:
        pool.shutdown()


def synthesis_actors(run, resources: dict) -> int:
    """``run.synthesis_actors``, or for ``auto`` as many actors as the cluster's GPUs (when synthesis uses
    GPUs) or CPUs hold right now. An autoscaling cluster that starts with no workers needs a number instead."""
    if run.synthesis_actors != "auto":
        return int(run.synthesis_actors)
    gpus = _synth_gpus(run)
    if gpus > 0:
        return max(1, int(resources.get("GPU", 0) // gpus))
    return max(1, int(resources.get("CPU", 1) // float(run.cpus_per_trial)))


def _synth_gpus(run) -> float:
    g = run.gpus_per_trial
    if isinstance(g, dict):
        return float(g.get("default", 0))
    return float(g or 0)
