"""W&B on the side (an edge module: imports wandb lazily).

Every node may open one W&B run: id ``<sweep>-<key>``, name = the node's (unique) label, group = the sweep,
job_type = the node's kind, tags (sweep, kind, train set, norm), a config of its readable settings and its spec
under the sweep file's key names, and the process's console output. Offline by default: runs land under ``<store>/wandb/wandb/offline-run-*`` and ``wandb sync``
uploads them later. On a remote store (s3://...) a run is written to a node-local staging folder and copied into
the store when it finishes, so the runs of trials on every node end up in one place; ``sweeper wandb FILE --to
DIR`` brings them down for ``wandb sync``. A W&B failure (no network, bad key, a crash of its process) is printed once and the sweep goes on:
results in the store never depend on W&B. The API key is never written anywhere by sweeper.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager

MODES = ("offline", "online", "disabled")


class NodeRun:
    """A thin, failure-proof handle: every call after a W&B error becomes a no-op."""

    def __init__(self, run, error: str | None = None, upload=None):
        self.run = run
        self.error = error  # the first W&B failure of this run, if any (trials report it to the driver)
        self._upload = upload  # (store, staging dir): copy the finished offline run into a remote store

    def log(self, metrics: dict, step: int | None = None) -> None:
        """A row of the run's history (``step``: e.g. the epoch)."""
        self._call(lambda: self.run.log(metrics, step=None if step is None else int(step)), "log")

    def summary(self, metrics: dict) -> None:
        """The run's final numbers."""
        if metrics:
            self._call(lambda: self.run.summary.update(metrics), "summary")

    def _call(self, fn, what: str) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as e:  # W&B must never stop a sweep; the error is reported, not hidden
            self.error = f"W&B {what} failed ({e!r}); continuing without W&B for this run"
            _warn(self.error)
            self.run = None

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as e:
                _warn(f"W&B finish failed ({e!r})")
            self.run = None
        if self._upload is not None:
            store, staging = self._upload
            self._upload = None
            try:
                upload_runs(staging, store)
            except Exception as e:  # the results are in the store; the W&B copy is what is lost
                _warn(f"could not copy the W&B offline run from {staging} into {store.path('wandb')} ({e!r}); "
                      "it stays on this node")
            else:
                shutil.rmtree(staging, ignore_errors=True)


def _warn(msg: str) -> None:
    print(f"sweeper: warning: {msg}", file=sys.stderr, flush=True)


def resolve_mode(mode: str | None) -> str:
    """`--wandb` wins, then WANDB_MODE, then offline."""
    m = mode or os.environ.get("WANDB_MODE") or "offline"
    if m == "dryrun":
        m = "offline"
    if m not in MODES:
        raise ValueError(f"wandb mode {m!r}: expected one of {', '.join(MODES)}")
    return m


def node_config(plan, node) -> dict:
    """What dashboards filter and plot on (no secrets: only the node's own settings and provenance): its
    readable settings (plan.describe), its spec with the sweep file's key names, grid point and inputs."""
    cfg = {"sweep": plan.sweep.name, "key": node.key, "dataset": plan.sweep.data.dataset, **plan.describe(node),
           "params": node.spec.model_dump(mode="json", by_alias=True), "point": node.point, "inputs": node.inputs}
    if node.robust_curve is not None:
        cfg["robust_curve"] = node.robust_curve.dump()
    try:
        from .store import provenance

        cfg["code"] = {k: v for k, v in provenance().items() if k in ("git_sha", "git_dirty", "versions")}
    except Exception as e:  # provenance is informative only
        _warn(f"no provenance for W&B config ({e!r})")
    return cfg


def node_tags(plan, node) -> list[str]:
    """sweep, kind, train set, norm (those that apply), for filtering runs."""
    d = plan.describe(node)
    return [str(t)[:64] for t in (plan.sweep.name, node.kind, d["train_set"], d["norm"]) if t]


def _list_packages_once(wandb) -> None:
    """Every ``wandb.init`` lists the installed packages for the run's requirements.txt (``wandb.util.
    working_set``: the metadata of every distribution on sys.path, ~50 ms, most of an offline init), and a trial
    actor opens one run per node. Read it once per process and hand W&B that list afterwards: each run still
    gets its requirements.txt, with the same lines (a package installed while the process runs is not one it
    imported anyway)."""
    util = getattr(wandb, "util", None)
    listing = getattr(util, "working_set", None)
    if listing is None or getattr(listing, "sweeper_once", False):
        return
    once: list = []

    def working_set():
        if not once:
            once.append(tuple(listing()))
        return iter(once[0])

    working_set.sweeper_once = True
    working_set.__doc__ = listing.__doc__
    util.working_set = working_set


def open_run(plan, node, store, mode: str | None = None) -> NodeRun:
    m = resolve_mode(mode)
    if m == "disabled":
        return NodeRun(None)
    try:
        import wandb

        _list_packages_once(wandb)
        root, upload = wandb_dir(store)
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "sweeper"), dir=root, mode=m,
                         id=f"{plan.sweep.name}-{node.key}", name=node.label, group=plan.sweep.name,
                         job_type=node.kind, tags=node_tags(plan, node), config=node_config(plan, node),
                         reinit="create_new", resume="allow", settings=wandb.Settings(console="wrap", silent=True))
        return NodeRun(run, upload=upload)
    except Exception as e:
        msg = f"W&B could not start ({type(e).__name__}: {str(e).splitlines()[0][:200]}); the sweep goes on without it"
        _warn(msg)
        return NodeRun(None, error=msg)


def wandb_dir(store):
    """Where a W&B run writes: ``<store>/wandb`` on a local store; on a remote one a fresh node-local staging
    folder, returned with ``(store, folder)`` so that finishing the run copies it into the store."""
    root = store.local_path("wandb")
    if root is not None:
        os.makedirs(root, exist_ok=True)  # before any run starts: concurrent creation raced
        return root, None
    staging = tempfile.mkdtemp(prefix="sweeper-wandb-")
    return staging, (store, staging)


def upload_runs(staging: str, store) -> list[str]:
    """Copy every W&B run folder under ``staging/wandb`` into ``<store>/wandb/wandb/<run folder>``."""
    import pyarrow.fs as pafs

    done = []
    for d in sorted(glob.glob(os.path.join(staging, "wandb", "*run-*"))):
        if os.path.isdir(d):
            pafs.copy_files(d, store.fs_path("wandb", "wandb", os.path.basename(d)),
                            source_filesystem=pafs.LocalFileSystem(), destination_filesystem=store.fs)
            done.append(os.path.basename(d))
    return done


def run_ids(plan) -> set[str]:
    """The W&B run ids of a sweep: one per node and the report's."""
    return {f"{plan.sweep.name}-{k}" for k in plan.nodes} | {f"{plan.sweep.name}-report"}


def _is_run_of(folder: str, ids: set[str] | None) -> bool:
    # offline-run-<YYYYMMDD_HHMMSS>-<run id>
    return folder.startswith("offline-run-") and (ids is None or folder.split("-", 3)[-1] in ids)


def download_runs(store, dest: str, ids: set[str] | None = None) -> list[str]:
    """Copy the store's offline W&B runs (those of ``ids`` when given) into ``dest``; returns the run folders."""
    import pyarrow.fs as pafs

    out = []
    for info in store.listdir("wandb/wandb"):
        if info.type == pafs.FileType.Directory and _is_run_of(info.base_name, ids):
            target = os.path.join(dest, info.base_name)
            pafs.copy_files(info.path, target, source_filesystem=store.fs,
                            destination_filesystem=pafs.LocalFileSystem())
            out.append(target)
    return out


@contextmanager
def tracked(plan, node, store, mode: str | None = None):
    run = open_run(plan, node, store, mode)
    try:
        yield run
    finally:
        run.finish()


def log_report(plan, store, mode: str | None = None) -> None:
    """One run per sweep holding the results table and the report's figures (Table 1 / Figure 2 analogues)."""
    m = resolve_mode(mode)
    if m == "disabled":
        return
    import json

    from .report import build_rows

    written = f"reports/{plan.sweep.name}/results.json"  # what write_report just wrote, else read the store
    rows = json.loads(store.read_bytes(written)) if store.exists(written) else build_rows(plan, store)
    if not rows:
        return
    try:
        import wandb

        root, upload = wandb_dir(store)
        report = NodeRun(None, upload=upload)
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "sweeper"), dir=root, mode=m,
                         id=f"{plan.sweep.name}-report", name=f"{plan.sweep.name} report", group=plan.sweep.name,
                         job_type="report", config={"sweep": plan.sweep.name, "kind": "report"},
                         reinit="create_new", resume="allow", settings=wandb.Settings(console="off", silent=True))
        cols = sorted({c for r in rows for c in r})
        run.log({"results": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})
        base = f"reports/{plan.sweep.name}"
        with tempfile.TemporaryDirectory(prefix="sweeper-fig-") as figs:  # wandb.Image reads a local file
            for name in ("figure2.png", "table1.png", "figure3.png"):
                if store.exists(f"{base}/{name}"):
                    path = os.path.join(figs, name)
                    with open(path, "wb") as f:
                        f.write(store.read_bytes(f"{base}/{name}"))
                    run.log({name[:-4]: wandb.Image(path)})
            run.finish()
        report.finish()  # a remote store: copy the run up
    except Exception as e:  # the report files in the store are the results; W&B is a copy
        _warn(f"W&B report run failed ({e!r}); the report in the store is complete")
