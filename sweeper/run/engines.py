"""The engines: run a plan's nodes that are not done yet, in this process or on Ray, through the kind table.

``run_plan`` computes every node in this process (``--executor local``). ``run_plan_ray`` runs wave by wave:
each kind where ``kinds.KINDS[kind].engine`` says, synthesis on an actor pool (``shards``), train/evaluate as
Tune trials (``tuning``), transfer probes in the driver. Both skip finished nodes, take a lease per node so that
several drivers on one store compute each node once, check the sha256 of what they read first, and end only
when every node is verified done. Re-running the same sweep resumes: finished nodes are skipped, finished
synthesis shards are kept, and a training node continues from its last per-epoch checkpoint.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable

import torch
from tqdm import tqdm

from sweeper.report import tracking
from sweeper.science.data_store import resolve_data_root
from sweeper.errors import ClusterError, Incomplete, StoreIOError, TrialsFailed, stop_on_signals
from sweeper.run.kinds import KINDS, Context, advance, execute
from sweeper.store.leases import Leases
from sweeper.sweep.plan import Node, Plan
from sweeper.run.scheduling import Scheduler
from sweeper.store.store import Store

Log = Callable[[str], None]


def _default_log(msg: str) -> None:
    print(msg, flush=True)


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


class Bar:
    """One node's progress in its kind's unit: a bar on a terminal; in a log, a line at every quarter."""

    def __init__(self, node: Node, ctx: Context, quiet: bool, log: Log, indent: str = ""):
        kind = KINDS[node.kind]
        self.label, self.quiet, self.log, self.unit = node.label, quiet, log, kind.unit
        self.total = kind.size(node, ctx)
        self.bar = tqdm(total=self.total, desc=f"{indent}{node.label}", unit=kind.unit, disable=quiet, leave=False)
        self.done, self.t0, self.quarter = 0, time.time(), 0

    def __call__(self, event: dict) -> None:
        self.bar.update(advance(event))
        self.done += advance(event)
        if "test_acc" in event:
            self.bar.set_postfix(loss=f"{event['train_loss']:.3f}", test=f"{event['test_acc']:.3f}")
        if self.quiet and self.total > 1 and self.done < self.total and 4 * self.done // self.total > self.quarter:
            self.quarter = 4 * self.done // self.total
            rate = self.done / max(time.time() - self.t0, 1e-9)
            self.log(f"  {self.label}: {self.done}/{self.total} {self.unit}, {rate:.1f} {self.unit}/s")

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------------------------------------- local
def run_plan(plan: Plan, store: Store, *, log: Log = _default_log, threads: int | None = None,
             wandb_mode: str | None = None) -> dict:
    """Execute every node of ``plan`` not yet done, in this process. Returns counts of work done/skipped.

    Each node is computed under a lease (leases.Leases): another driver on the same store computes other nodes
    meanwhile, and a node it holds is waited for (is it done? has its lease expired?), never computed twice."""
    plan.require_data()  # a plan made without its data has provisional keys: nothing is computed under them
    plan = resolve_data_root(plan, store)  # data.root: store -> the dataset pushed into this store
    if threads:
        torch.set_num_threads(threads)
    store.claim()
    store.clean_tmp()
    ctx = Context.of(plan, store)
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
                        with tracking.tracked(plan, node, store, wandb_mode) as wb:  # W&B keeps these lines too
                            log(f"[{i}/{total}] {node.kind:<10} {node.label} ({node.key}) ...")
                            bar = Bar(node, ctx, quiet, log)
                            meta = execute(node, ctx, wb, progress=bar)
                            bar.close()
                            log(f"    {KINDS[node.kind].summary(meta)} [{time.time() - t0:.1f} s]")
                        ran += 1
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


# ------------------------------------------------------------------------------------------------ Ray
def local_address() -> str:
    """Where `sweeper run` without --address runs: RAY_ADDRESS when set (as in a Ray job), else a new local Ray."""
    return os.environ.get("RAY_ADDRESS") or "local"


def _init_ray(address: str | None, num_cpus: int | None, log: Log) -> None:
    import ray

    address = address or local_address()
    local = address == "local"
    if not local:  # joining a running cluster: token authentication as the cluster needs it (rayauth)
        from sweeper.run.rayauth import prepare_join

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


def run_plan_ray(plan: Plan, store: Store, *, address: str | None = None, log: Log = _default_log,
                 num_cpus: int | None = None, wandb_mode: str | None = None, barrier: bool = False) -> dict:
    """Execute the plan on Ray, streaming: a node starts as soon as its inputs are done and there is room for it,
    whatever its depth. Synthesis shards of every ready synthesis node share one elastic actor pool (``shards``),
    all training/evaluation nodes are trials of one Tune experiment (``tuning``), transfer probes run in driver
    threads; the three run side by side (scheduling.Scheduler keeps who may start what).

    ``address=None`` starts a private local Ray in this process (or joins RAY_ADDRESS when set); ``"auto"`` or
    ``"HOST:PORT"`` joins a running cluster. ``barrier=True`` holds every node until all shallower nodes are done
    (the old wave order; the scale benchmark's baseline). Progress bars on a terminal; elsewhere log lines.
    """
    plan.require_data()  # a plan made without its data has provisional keys: nothing is computed under them
    plan = resolve_data_root(plan, store)  # data.root: store -> the dataset pushed into this store
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    quiet = not sys.stderr.isatty()
    store.claim()
    store.clean_tmp()
    leases = Leases(store, plan.sweep.run.lease_ttl)  # its warnings go to stderr
    started = not ray.is_initialized()
    if started:
        _init_ray(address, num_cpus, log)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C stops the run (stop_on_signals), not just Tune
    sched = None
    feeder = None
    try:
        with stop_on_signals():
            verify_reads(plan, store, log)
            run = plan.sweep.run
            sched = Scheduler(plan, store, leases, log, barrier=barrier,
                              batch=max(16, 4 * int(run.max_concurrent_trials)))
            sched.prefetch()
            log(f"scheduler: {len(sched.todo)} node(s) to run ({sched.todo_count('pool')} synthesis, "
                f"{sched.todo_count('tune')} Tune trials, {sched.todo_count('driver')} in the driver), "
                f"{sched.done_at_start} done")
            feeder = Feeder(plan, store, sched, wandb_mode, log, quiet, local=(address or local_address()) == "local")
            feeder.start()
            tune_engine = None
            try:
                if sched.todo_count("tune"):
                    from sweeper.run.tuning import TuneEngine

                    tune_engine = TuneEngine(sched, plan=plan, store=store, run_spec=run, wandb_mode=wandb_mode,
                                             log=log, quiet=quiet)
                    t0 = time.time()
                    while not sched.over("tune"):
                        if not sched.has_ready("tune"):
                            sched.wait(0.5)  # until something ends
                        elif not tune_engine.burst():
                            sched.wait(leases.poll)  # ready nodes, but another driver took them first
                    log(f"  {tune_engine.trials} Tune trial(s) in {tune_engine.bursts} experiment(s), "
                        f"{time.time() - t0:.1f} s")
                while feeder.is_alive():
                    feeder.join(0.5)
            finally:
                feeder.stop()
                if tune_engine is not None:
                    tune_engine.close()
            trials_failed = tune_engine.error() if tune_engine is not None else None
            sched.raise_failures(trials_failed)
    finally:
        if sched is not None:
            sched.release_unstarted()
        leases.close()
        if started:
            ray.shutdown()
    check_done(plan, store)
    return {"ran": sched.ran, "skipped": sched.done_at_start + sched.by_others, "total": len(plan.nodes),
            "timeline": {k: (sched.started[k], sched.ended[k]) for k in sched.ended if k in sched.started}}


DRIVER_THREADS = 2  # transfer probes at once in the driver (cheap forward passes)


class Feeder(threading.Thread):
    """The driver side of the non-Tune engines: admits ready synthesis nodes while the actor pool's backlog is
    shorter than its size (each node in a thread of its own that waits on the pool; its W&B run is open
    meanwhile), runs transfer probes in threads, and keeps going until nothing of theirs is left."""

    def __init__(self, plan: Plan, store: Store, sched: Scheduler, wandb_mode, log: Log, quiet: bool, local: bool):
        super().__init__(name="sweeper-feeder", daemon=True)
        self.plan, self.store, self.sched, self.wandb_mode, self.log, self.quiet = plan, store, sched, wandb_mode, \
            log, quiet
        self.local = local
        self.ctx = Context.of(plan, store)
        self.pool = None
        self.threads: list[threading.Thread] = []
        self.synthesizing: dict[str, int] = {}  # synthesis nodes running here -> their height (Scheduler)
        self._synth_lock = threading.Lock()  # node threads remove themselves while the loop reads the heights
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                if self.sched.over("pool") and self.sched.over("driver") and not self._alive():
                    return
                probes = sum(1 for t in self.threads if t.is_alive() and t.name.startswith("sweeper-probe"))
                for node in self.sched.take("driver", max(0, DRIVER_THREADS - probes)):
                    self._spawn(node, None)
                while self.sched.todo_count("pool") and not self._halt.is_set():
                    pool = self._pool()
                    if pool.backlog() >= pool.capacity():
                        break
                    nodes = self.sched.take("pool", 1)
                    if not nodes:
                        break
                    pool.expect(nodes[0], self.ctx.shard_size)
                    with self._synth_lock:
                        self.synthesizing[nodes[0].key] = self.sched.height[nodes[0].key]
                    self._spawn(nodes[0], pool)
                if self.pool is not None:
                    starved = self.pool.starved()
                    with self._synth_lock:
                        highest = max(self.synthesizing.values(), default=0)
                    self.sched.hold_tune_for(highest if starved else 0)
                self.sched.wait(0.25)
        except BaseException as e:  # the scheduler stops everything and the driver raises it
            self.error = e
            self.sched.stop(e)
        finally:
            self.sched.hold_tune_for(0)
            if self.pool is not None and (self.sched.fatal is not None or self.error is not None):
                self.pool.shutdown()  # the run stops: synthesis still running ends now (its shards are kept)
            for t in self.threads:
                t.join()
            if self.pool is not None:
                if self.pool.replaced:
                    self.log(f"  {self.pool.replaced} synthesis actor(s) were lost and replaced; their shards were "
                             "retried")
                self.pool.shutdown()

    def _alive(self) -> bool:
        self.threads = [t for t in self.threads if t.is_alive()]
        return bool(self.threads)

    def _pool(self):
        if self.pool is None:
            import ray

            from sweeper.run.shards import ShardPool

            run = self.plan.sweep.run
            self.pool = ShardPool(self.store, self.ctx.data, self.ctx.seed,
                                  actors=lambda: synthesis_actors(run, ray.cluster_resources()),
                                  cpus_per_actor=float(run.cpus_per_trial), gpus_per_actor=_synth_gpus(run),
                                  threads=int(max(1, run.cpus_per_trial)), log=self.log,
                                  autoscale=not self.local and run.synthesis_actors == "auto")
        return self.pool

    def _spawn(self, node: Node, pool) -> None:
        kind = "synth" if pool is not None else "probe"
        t = threading.Thread(target=self._node, args=(node, pool), name=f"sweeper-{kind}-{node.key[:8]}",
                             daemon=True)
        self.threads.append(t)
        t.start()

    def _node(self, node: Node, pool) -> None:
        from sweeper.run.shards import synthesize_on_pool

        t0 = time.time()
        try:
            bar = Bar(node, self.ctx, self.quiet, self.log, indent="  ")
            with tracking.tracked(self.plan, node, self.store, self.wandb_mode) as wb:
                run = None if pool is None else (lambda n, c, p: synthesize_on_pool(pool, n, c, p))
                meta = execute(node, self.ctx, wb, progress=bar, run=run)
            bar.close()
            dt = time.time() - t0
            rate = f" ({meta['n'] / max(dt, 1e-9):.0f} img/s)" if "n" in meta and pool is not None else ""
            self.log(f"  {node.kind} {node.label}: {KINDS[node.kind].summary(meta)} in {dt:.1f} s{rate}")
        except BaseException as e:
            if pool is not None:
                pool.forget(node)
            self.sched.finish(node.key, e, fatal=isinstance(e, (StoreIOError, KeyboardInterrupt)))
        else:
            self.sched.finish(node.key)
        finally:
            with self._synth_lock:
                self.synthesizing.pop(node.key, None)

    def stop(self) -> None:
        self._halt.set()
        if self.pool is not None and self.is_alive():
            self.pool.shutdown()  # threads waiting on shards return with an error
        self.join(timeout=60)


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
