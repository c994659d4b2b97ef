"""Training and evaluation nodes as Ray Tune trials (an edge module: imports ray.tune).

One Tune experiment per wave: a grid over the ready nodes' keys, resources per trial by architecture, a cap on
concurrent trials and ``FailureConfig`` retries. A training trial writes a checkpoint to the store after every
epoch, so a retried or re-run trial continues from its last epoch; a finished node is never planned again.
Trial actors are reused across trials (``reuse_actors``): the process start, imports and dataset load are paid
once per actor, not once per trial (benchmarks/bench_tune.py: from ~7 s to ~2 s of fixed cost per trial).
"""

from __future__ import annotations

import hashlib
import os

from ray import tune

from . import stages, tracking
from .store import Store


def _trial(config: dict, plan, store_uri: str, threads: int, wandb_mode: str | None) -> None:
    import torch

    from .executor import eval_metrics

    torch.set_num_threads(max(1, threads))
    node = plan.nodes[config["key"]]
    data_spec, sweep_seed = plan.sweep.data.model_dump(), int(plan.sweep.seed)
    store = Store(store_uri)
    if store.is_done(node.key):  # a retried trial whose node finished before the failure
        tune.report({"skipped": 1})
        return
    with tracking.tracked(plan, node, store, wandb_mode) as wb:
        if node.kind == "train":
            warnings: list[str] = []  # a trial's stderr stays in its worker log: warnings go with the next result

            def on_epoch(row: dict) -> None:
                row = {k: v for k, v in row.items() if isinstance(v, (int, float))}
                wb.log(row, step=int(row["epoch"]))
                extra = {"wandb_error": wb.error} if wb.error else {}
                if warnings:
                    extra["warning"] = "; ".join(warnings)
                    warnings.clear()
                tune.report({**row, **extra})

            stages.run_train(node, data_spec, sweep_seed, store, on_epoch=on_epoch, curve=plan.robust_curve(node),
                             warn=warnings.append)
        elif node.kind == "evaluate":
            metrics = eval_metrics(stages.run_evaluate(node, data_spec, sweep_seed, store))
            wb.log(metrics)
            tune.report({**metrics, **({"wandb_error": wb.error} if wb.error else {})})
        else:
            raise ValueError(f"node {node.label}: kind {node.kind} does not run as a Tune trial")


def gpus_for(arch: str, gpus_per_trial) -> float:
    if isinstance(gpus_per_trial, dict):
        return float(gpus_per_trial.get(arch, gpus_per_trial.get("default", 0)))
    return float(gpus_per_trial or 0)


def _store_error(err: BaseException | None):
    """The StoreIOError behind a trial's error (Tune and Ray wrap the trial's own exception), if any."""
    from .store import StoreIOError

    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, StoreIOError):
            return err
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
        seen += 1
    return None


class TrialsFailed(RuntimeError):
    """Some trials failed after their retries; what finished is in the store and a re-run resumes."""


class Progress(tune.Callback):
    """Epochs done across the wave's trials: a bar on a terminal, one line per finished trial elsewhere."""

    def __init__(self, nodes: list, log, quiet: bool):
        from tqdm import tqdm

        self.by_key = {n.key: n for n in nodes}
        total = sum(int(n.params["train"]["epochs"]) if n.kind == "train" else 1 for n in nodes)
        self.bar = tqdm(total=total, desc="  trials", unit="epoch", disable=quiet, leave=False)
        self.log = log
        self.wandb_warned: set[str] = set()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        node = self.by_key.get(trial.config.get("key"))
        if result.get("warning") and node is not None:
            self._line(f"  sweeper: warning: {result['warning']}")
        if result.get("wandb_error") and node is not None and node.key not in self.wandb_warned:
            self.wandb_warned.add(node.key)  # a trial's stderr stays in its worker log; say it here
            self._line(f"  sweeper: warning: {node.label}: {result['wandb_error']}")
        if "epoch" in result or "clean_acc" in result:
            self.bar.update(1)
            if node is not None and "test_acc" in result:
                self.bar.set_postfix_str(f"{node.label} epoch {result['epoch']} test {result['test_acc']:.3f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        node = self.by_key.get(trial.config.get("key"))
        r = trial.last_result or {}
        if node is None:
            return
        curve = f", robust {r['robust_acc']:.3f} (curve subset)" if "robust_acc" in r else ""
        what = (f"test acc {r['test_acc']:.3f}{curve}" if "test_acc" in r else
                f"clean {r['clean_acc']:.3f} " + " ".join(f"{k[7:]} {v:.3f}" for k, v in r.items()
                                                           if k.startswith("robust/"))
                if "clean_acc" in r else "already done")
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
    by_key = {n.key: n for n in nodes}
    sweep = plan.sweep
    cpus = float(run_spec.cpus_per_trial)

    def resources(config: dict) -> dict:
        node = by_key[config["key"]]
        arch = node.params.get("arch") or plan.nodes[node.inputs["model"]].params["arch"]
        return {"cpu": cpus, "gpu": gpus_for(arch, run_spec.gpus_per_trial)}

    trainable = tune.with_parameters(_trial, plan=plan, store_uri=store.uri, threads=int(max(1, cpus)),
                                     wandb_mode=wandb_mode)
    trainable = tune.with_resources(trainable, resources)
    progress = Progress(nodes, log or print, quiet)
    digest = hashlib.sha256("".join(sorted(by_key)).encode()).hexdigest()[:8]
    tuner = tune.Tuner(
        trainable,
        param_space={"key": tune.grid_search(sorted(by_key))},
        tune_config=tune.TuneConfig(max_concurrent_trials=int(run_spec.max_concurrent_trials), reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{sweep.name}-{digest}", storage_path=store.fs_path("tune"),
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


os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the driver prints its own progress; no Tune tables
