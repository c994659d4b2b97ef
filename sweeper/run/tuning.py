"""Training and evaluation nodes as Ray Tune trials (an edge module: imports ray.tune).

One Tune experiment per run of the sweep: a searcher (``NodeSearcher``) releases a node's trial as soon as its
inputs are done, resources per trial by architecture, a cap on concurrent trials and ``FailureConfig`` retries. A trial runs its node through the kind table
(``kinds.execute``); a training trial writes a checkpoint to the store after every epoch, so a retried or re-run
trial continues from its last epoch; a finished node is never planned again. Each trial's config carries the
node's readable settings (``plan.describe``: label, kind, train set, arch, attack, seed) beside its key, and its
folder is named from its label, so ``tune.ExperimentAnalysis(<store>/tune/<experiment>)`` reads without sweeper.
Trial actors are reused across trials (``reuse_actors``): the process start, imports and dataset load are paid
once per actor, not once per trial (benchmarks/bench_tune.py: from ~7 s to ~2 s of fixed cost per trial).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Optional

from ray import tune
from ray.tune.search import Searcher

from sweeper.run import kinds

from sweeper.report import tracking
from sweeper.errors import StoreIOError, TrialsFailed
from sweeper.store.store import Store


_PLANS: dict = {}  # the plan per trial process, fetched once (a reused actor runs many trials)


def _plan_of(ref):
    import ray

    key = ref.hex()
    if key not in _PLANS:
        _PLANS.clear()
        _PLANS[key] = ray.get(ref)
    return _PLANS[key]


def _trial(config: dict, plan_ref: list, store_uri: str, threads: int, wandb_mode: str | None) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    plan = _plan_of(plan_ref[0])  # in a list: with_parameters hands it over as a reference, not the plan
    node = plan.nodes[config["key"]]
    store = Store(store_uri)
    if store.is_done(node.key):  # a retried trial whose node finished before the failure
        tune.report({"skipped": 1})
        return
    warnings: list[str] = []  # a trial's stderr stays in its worker log: warnings go with the next result
    ctx = kinds.Context.of(plan, store, warn=warnings.append)
    reported = []
    with tracking.tracked(plan, node, store, wandb_mode) as wb:
        def report(metrics: dict) -> None:
            extra = {"wandb_error": wb.error} if wb.error else {}
            if warnings:
                extra["warning"] = "; ".join(warnings)
                warnings.clear()
            tune.report({**{k: v for k, v in metrics.items() if isinstance(v, (int, float))}, **extra})
            reported.append(1)

        meta = kinds.execute(node, ctx, wb, progress=report)
        if not reported:  # a kind without progress (evaluate): its final numbers are the trial's result
            report(kinds.KINDS[node.kind].metrics(meta))
        print(f"{node.kind} {node.label}: {kinds.KINDS[node.kind].summary(meta)}", flush=True)  # the run's console


def gpus_for(arch: str, gpus_per_trial) -> float:
    if isinstance(gpus_per_trial, dict):
        return float(gpus_per_trial.get(arch, gpus_per_trial.get("default", 0)))
    return float(gpus_per_trial or 0)


def _store_error(err: BaseException | None):
    """The StoreIOError behind a trial's error (Tune and Ray wrap the trial's own exception), if any."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, StoreIOError):
            return err
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
        seen += 1
    return None


def _root(err: BaseException) -> str:
    """A trial's own error in one line (``Type: message``), without Ray's remote traceback."""
    cause = getattr(err, "cause", None) or err
    text = (str(cause).strip().splitlines() or [""])[0][:300]
    return f"{type(cause).__name__}: {text}"


def _trial_name(trial) -> str:
    """A trial's name and folder: its node's label made filesystem-safe, then 8 chars of its key, both from the
    trial's own config (NodeSearcher.suggest puts them there). Tune pickles its name creators into every trial
    it makes: a module-level function is a reference, where a closure over the sweep's nodes was pickled whole
    each time (the cost per trial grew with the number of trials)."""
    label, key = trial.config["label"], trial.config["key"]
    return f"{re.sub(r'[^A-Za-z0-9_.=,+-]+', '_', label)[:80]}-{key[:8]}"


class Progress(tune.Callback):
    """Epochs done across the wave's trials: a bar on a terminal, one line per finished trial elsewhere (the
    kind's summary of the node's stored meta)."""

    def __init__(self, plan, nodes: list, store: Store, log, quiet: bool):
        from tqdm import tqdm

        self.by_key = {n.key: n for n in nodes}
        ctx = kinds.Context.of(plan, store)
        total = sum(kinds.KINDS[n.kind].size(n, ctx) for n in nodes)
        self.bar = tqdm(total=total, desc="  trials", unit="epoch", disable=quiet, leave=False)
        self.log, self.store = log, store
        self.wandb_warned: set[str] = set()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        node = self.by_key.get(trial.config.get("key"))
        if node is None:
            return
        if result.get("warning"):
            self._line(f"  sweeper: warning: {result['warning']}")
        if result.get("wandb_error") and node.key not in self.wandb_warned:
            self.wandb_warned.add(node.key)  # a trial's stderr stays in its worker log; say it here
            self._line(f"  sweeper: warning: {node.label}: {result['wandb_error']}")
        if "skipped" not in result:
            self.bar.update(1)
            if "test_acc" in result:
                self.bar.set_postfix_str(f"{node.label} epoch {result['epoch']} test {result['test_acc']:.3f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        node = self.by_key.get(trial.config.get("key"))
        if node is None:
            return
        meta = self.store.done_meta(node.key)  # one manifest read
        what = kinds.KINDS[node.kind].summary(meta) if meta is not None else "not done"
        self._line(f"  {node.kind} {node.label}: {what}")

    def _line(self, line: str) -> None:
        if self.bar.disable:
            self.log(line)
        else:
            self.bar.write(line)

    def close(self):
        self.bar.close()


class NodeSearcher(Searcher):
    """Hands Tune one trial per training/evaluation node as soon as its inputs are done (scheduling.Scheduler):
    one Tune experiment runs the whole sweep, with no barrier between stages. ``suggest`` returns None while no
    node is ready (Tune asks again) and FINISHED once none can come."""

    def __init__(self, sched, about: dict):
        super().__init__()
        self.sched, self.about = sched, about
        self.trials: dict[str, str] = {}  # Tune trial id -> node key

    def suggest(self, trial_id: str):
        if self.sched.over("tune"):
            return Searcher.FINISHED
        nodes = self.sched.take("tune", 1)
        if not nodes:  # nothing ready: wait for it while trials run, else end this experiment (TuneEngine)
            if self.trials and self.sched.tune_held():
                # held back for synthesis waiting for room: while its searcher may still suggest, Tune keeps one
                # idle trial actor cached (and its CPU/GPU) for the next trial, and the pool never gets that room
                # (seen: 10 shards waited 10 minutes beside one running training). No more suggestions: Tune
                # frees its cached actors now and the experiment ends with its running trials.
                return Searcher.FINISHED
            return None if self.trials else Searcher.FINISHED
        node = nodes[0]
        self.trials[trial_id] = node.key
        return {"key": node.key, **{k: v for k, v in self.about[node.key].items() if k != "attacks"}}

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        key = self.trials.pop(trial_id, None)
        if key is None:
            return
        if not error:  # the trial returned: its node is in the store (the run checks every node at its end)
            self.sched.finish(key, found_done=bool((result or {}).get("skipped")))
        else:  # the error itself is read from Tune's results after the experiment
            self.sched.finish(key, TrialsFailed(f"{self.sched.plan.nodes[key].label}: its Tune trial failed"))

    def __getstate__(self) -> dict:  # Tune pickles its config into the experiment folder; the store is the state
        return {"trials": dict(self.trials)}

    def __setstate__(self, state: dict) -> None:
        super().__init__()
        self.sched, self.about, self.trials = None, {}, state.get("trials", {})

    def save(self, checkpoint_path: str) -> None:  # the store is the state: a resumed run asks it again
        with open(checkpoint_path, "w") as f:
            json.dump({"running": sorted(self.trials.values())}, f)

    def restore(self, checkpoint_path: str) -> None:
        pass


class _TrialFailureLines(logging.Filter):
    """Tune logs each failed trial attempt with Ray's whole remote traceback; the driver prints one line instead
    (the traceback stays in the trial's ``error.txt`` under ``<store>/tune``). Likewise a failed upload of Tune's
    experiment state: Tune's background sync can race its own save (it lists the driver's staging folder while
    the searcher state is written there under a temporary name and renamed, then fails on the vanished name; seen
    on Ctrl-C). Tune uploads the state again at its next save, and sweeper resumes from its store, never from
    that state, so it is a one-line warning, not a traceback."""

    LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.execution.experiment_state")

    def __init__(self, log):
        super().__init__()
        self.log = log

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith("Trial task failed") and record.exc_info:
            self.log(f"  sweeper: warning: {msg}: {_root(record.exc_info[1])} (Tune retries it "
                     "up to run.max_failures times)")
            return False
        if msg.startswith("Saving experiment state to storage") and record.exc_info:
            self.log(f"  sweeper: warning: Tune could not upload its experiment state: {_root(record.exc_info[1])} "
                     "(it uploads it again at its next save; sweeper resumes from the store, not from that state)")
            return False
        return True

    def __enter__(self):
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc):
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)


class TuneEngine:
    """The sweep's training/evaluation nodes as Ray Tune trials, released by ``NodeSearcher`` as their inputs
    are done. An experiment ends when none of its trials is running and no node is ready (Tune would otherwise
    sit in its searcher loop keeping idle reused trial actors, whose CPUs/GPUs the synthesis pool needs), and
    the next one starts when a node is ready again: ``burst`` runs one such experiment."""

    def __init__(self, sched, *, plan, store: Store, run_spec, wandb_mode: str | None = None, callbacks=None,
                 log=None, quiet: bool = True):
        # read when an experiment starts (and passed to its trials): trials keep the driver's working directory
        # (a relative store path stays valid), and the driver prints its own progress instead of Tune's tables
        os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        self.sched, self.plan, self.store, self.run_spec = sched, plan, store, run_spec
        nodes = [plan.nodes[k] for k in sched.todo if sched.engine[k] == "tune"]
        self.by_key = {n.key: n for n in nodes}
        self.about = {n.key: plan.describe(n) for n in nodes}
        cpus = float(run_spec.cpus_per_trial)
        gpus = run_spec.gpus_per_trial
        gpus = dict(gpus) if isinstance(gpus, dict) else float(gpus or 0)

        # Tune pickles this function into every trial it creates and into each trial's saved state: it must close
        # over nothing that grows with the sweep (a closure over every node's settings made the cost per trial
        # grow with the number of trials). The arch comes from the trial's own config (NodeSearcher.suggest).
        def resources(config: dict) -> dict:
            return {"cpu": cpus, "gpu": gpus_for(config.get("arch"), gpus)}

        import ray

        self.plan_ref = ray.put(plan)  # fetched once per trial process (_plan_of), not once per trial
        trainable = tune.with_parameters(_trial, plan_ref=[self.plan_ref], store_uri=store.uri,
                                         threads=int(max(1, cpus)), wandb_mode=wandb_mode)
        self.trainable = tune.with_resources(trainable, resources)
        self.progress = Progress(plan, nodes, store, log or print, quiet)
        self.callbacks = [self.progress, *(callbacks or [])]
        self.log = log or print
        self.digest = hashlib.sha256("".join(sorted(self.by_key)).encode()).hexdigest()[:8]
        self.bursts = 0
        self.trials = 0
        self.failed: list[tuple[str, BaseException]] = []

    def burst(self) -> int:
        """One Tune experiment; returns how many trials it ran. Raises the store's error if the store failed."""
        searcher = NodeSearcher(self.sched, self.about)
        self.bursts += 1
        with self.store._io("write Tune's experiment state under", self.store.fs_path("tune"), write=True):
            tuner = self._tuner(searcher)
        with _TrialFailureLines(self.log), \
                self.store._io("write Tune's experiment state under", self.store.fs_path("tune"), write=True):
            results = tuner.fit()
        return self._collect(results)

    def _tuner(self, searcher):
        return tune.Tuner(
            self.trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1,
                                        max_concurrent_trials=int(self.run_spec.max_concurrent_trials),
                                        reuse_actors=True, trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(
                name=f"{self.plan.sweep.name}-{self.digest}-{self.bursts}", storage_path=self.store.fs_path("tune"),
                storage_filesystem=None if self.store.is_local else self.store.fs,  # a URI's query would not
                failure_config=tune.FailureConfig(max_failures=int(self.run_spec.max_failures)),  # survive a join
                callbacks=self.callbacks, verbose=0),
        )

    def _collect(self, results) -> int:
        self.trials += len(results)
        failed = [(r.config.get("key") if r.config else "?", r.error) for r in results if r.error]
        for _, err in failed:
            store_error = _store_error(err)
            if store_error is not None:  # the store failed (full, read-only, unreachable): one line, not a trial's
                raise store_error from None
        self.failed += failed
        return len(results)

    def error(self) -> Optional[TrialsFailed]:
        """The trials that finally failed, as one error (None when none did)."""
        if not self.failed:
            return None
        labels = ", ".join(f"{self.by_key[k].label if k in self.by_key else k}: {_root(e)}"
                           for k, e in self.failed[:3])
        return TrialsFailed(f"{len(self.failed)} Tune trial(s) failed after {self.run_spec.max_failures} retries: "
                            f"{labels}. Run the same command again to resume.")

    def close(self) -> None:
        self.progress.close()
