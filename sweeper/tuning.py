"""Training and evaluation nodes as Ray Tune trials (an edge module: imports ray.tune).

One Tune experiment per wave: a grid over the ready nodes' keys, resources per trial by architecture, a cap on
concurrent trials and ``FailureConfig`` retries. A trial runs its node through the kind table
(``kinds.execute``); a training trial writes a checkpoint to the store after every epoch, so a retried or re-run
trial continues from its last epoch; a finished node is never planned again. Each trial's config carries the
node's readable settings (``plan.describe``: label, kind, train set, arch, attack, seed) beside its key, and its
folder is named from its label, so ``tune.ExperimentAnalysis(<store>/tune/<experiment>)`` reads without sweeper.
Trial actors are reused across trials (``reuse_actors``): the process start, imports and dataset load are paid
once per actor, not once per trial (benchmarks/bench_tune.py: from ~7 s to ~2 s of fixed cost per trial).
"""

from __future__ import annotations

import hashlib
import os
import re

from ray import tune

from . import kinds, tracking
from .errors import StoreIOError, TrialsFailed
from .store import Store


def _trial(config: dict, plan, store_uri: str, threads: int, wandb_mode: str | None) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
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


def trial_name(node) -> str:
    """A trial's name and folder: its label made filesystem-safe, then 8 chars of its key."""
    return f"{re.sub(r'[^A-Za-z0-9_.=,+-]+', '_', node.label)[:80]}-{node.key[:8]}"


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
        what = (kinds.KINDS[node.kind].summary(self.store.load_meta(node.key)) if self.store.is_done(node.key)
                else "not done")
        self._line(f"  {node.kind} {node.label}: {what}")

    def _line(self, line: str) -> None:
        if self.bar.disable:
            self.log(line)
        else:
            self.bar.write(line)

    def close(self):
        self.bar.close()


def run_trials(nodes: list, *, plan, store: Store, run_spec, wandb_mode: str | None = None, callbacks=None,
               log=None, quiet: bool = True) -> None:
    """Run ``nodes`` (train/evaluate) as one Tune experiment; raises TrialsFailed if any trial finally failed."""
    # read when the experiment starts (and passed to its trials): trials keep the driver's working directory
    # (a relative store path stays valid), and the driver prints its own progress instead of Tune's tables
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    by_key = {n.key: n for n in nodes}
    about = {n.key: plan.describe(n) for n in nodes}
    cpus = float(run_spec.cpus_per_trial)

    def resources(config: dict) -> dict:
        return {"cpu": cpus, "gpu": gpus_for(about[config["key"]]["arch"], run_spec.gpus_per_trial)}

    def readable(name: str):
        return tune.sample_from(lambda config: about[config["key"]][name])

    trainable = tune.with_parameters(_trial, plan=plan, store_uri=store.uri, threads=int(max(1, cpus)),
                                     wandb_mode=wandb_mode)
    trainable = tune.with_resources(trainable, resources)
    progress = Progress(plan, nodes, store, log or print, quiet)
    digest = hashlib.sha256("".join(sorted(by_key)).encode()).hexdigest()[:8]
    name_of = lambda trial: trial_name(by_key[trial.config["key"]])  # noqa: E731
    tuner = tune.Tuner(
        trainable,
        param_space={"key": tune.grid_search(sorted(by_key)),
                     **{k: readable(k) for k in next(iter(about.values())) if k != "attacks"}},
        tune_config=tune.TuneConfig(max_concurrent_trials=int(run_spec.max_concurrent_trials), reuse_actors=True,
                                    trial_name_creator=name_of, trial_dirname_creator=name_of),
        run_config=tune.RunConfig(
            name=f"{plan.sweep.name}-{digest}", storage_path=store.fs_path("tune"),
            storage_filesystem=None if store.is_local else store.fs,  # a URI's query would not survive a join
            failure_config=tune.FailureConfig(max_failures=int(run_spec.max_failures)),
            callbacks=[progress, *(callbacks or [])], verbose=0),
    )
    try:
        results = tuner.fit()
    finally:
        progress.close()
    failed = [(r.config.get("key") if r.config else "?", r.error) for r in results if r.error]
    for _, err in failed:
        store_error = _store_error(err)
        if store_error is not None:  # the store failed (full, read-only, unreachable): one line, not a trial error
            raise store_error from None
    if failed:
        labels = ", ".join(f"{by_key[k].label if k in by_key else k}: {e}" for k, e in failed[:3])
        raise TrialsFailed(f"{len(failed)} Tune trial(s) failed after {run_spec.max_failures} retries: {labels}. "
                           "Run the same command again to resume.")
