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
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager

MODES = ("offline", "online", "disabled")
WANDB_NAME = re.compile(r"^[_a-zA-Z][_a-zA-Z0-9/]*$")  # what W&B panels read as one metric (a dot means nesting)


def wandb_name(name: str) -> str:
    """The W&B name of a result name (a results.csv column, a logged metric, a media key); the one mapping.

    ``robust_acc[l2_eps0.5_s2]`` -> ``robust_acc/l2_eps0p5_s2``: brackets become a ``/`` level, a dot becomes
    ``p`` (as in 0p5), a minus ``m`` (1e-05 -> 1em05), any other character outside ``[_a-zA-Z0-9/]`` (``=``,
    ``,``, spaces) ``_``; a name starting with a digit gets a leading ``_``. Names that already match
    :data:`WANDB_NAME` (``clean_acc``, ``shard/hit_rate``) are unchanged."""
    n = str(name)
    if WANDB_NAME.match(n):
        return n
    n = re.sub(r"\[([^\]]*)\]", r"/\1", n).replace(".", "p").replace("-", "m")
    n = re.sub(r"[^_a-zA-Z0-9/]", "_", n).strip("/") or "_"
    return n if re.match(r"[_a-zA-Z]", n) else "_" + n


def wandb_names(metrics: dict) -> dict:
    """``metrics`` with every key mapped by :func:`wandb_name` (two names mapping to one is a bug: refused)."""
    out = {wandb_name(k): v for k, v in metrics.items()}
    if len(out) != len(metrics):
        raise ValueError(f"metric names collide once mapped for W&B: {sorted(metrics)}")
    return out


class NodeRun:
    """A thin, failure-proof handle: every call after a W&B error becomes a no-op."""

    def __init__(self, run, error: str | None = None, upload=None):
        self.run = run
        self.error = error  # the first W&B failure of this run, if any (trials report it to the driver)
        self._upload = upload  # (store, staging dir): copy the finished offline run into a remote store

    def log(self, metrics: dict, step: int | None = None) -> None:
        """A row of the run's history (``step``: e.g. the epoch); names mapped by :func:`wandb_name`."""
        self._call(lambda: self.run.log(wandb_names(metrics), step=None if step is None else int(step)), "log")

    def summary(self, metrics: dict) -> None:
        """The run's final numbers; names mapped by :func:`wandb_name`."""
        if metrics:
            self._call(lambda: self.run.summary.update(wandb_names(metrics)), "summary")

    def image(self, name: str, render) -> None:
        """An image in the run (``name`` mapped by :func:`wandb_name`): ``render()`` returns its PNG bytes and is
        called only when the run is open (no W&B, no drawing)."""
        if self.run is None:
            return

        def log():
            import io

            import wandb
            from PIL import Image

            self.run.log({wandb_name(name): wandb.Image(Image.open(io.BytesIO(render())), caption=name)})

        self._call(log, "image")

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
    cfg.update(panel_config(plan, node))
    if node.robust_curve is not None:
        cfg["robust_curve"] = node.robust_curve.dump()
    try:
        from sweeper.store.store import provenance

        cfg["code"] = {k: v for k, v in provenance().items() if k in ("git_sha", "git_dirty", "versions")}
    except Exception as e:  # provenance is informative only
        _warn(f"no provenance for W&B config ({e!r})")
    return cfg


def _synthesis_settings(plan, synth) -> dict:
    """The settings behind a synthesized set, under results.csv's names (``synth_*``, ``source_arch``)."""
    p = synth.spec
    attack = getattr(p, "attack", None) if p.method == "relabel" else None
    return {"set_kind": plan.set_kind(synth), "source_arch": plan.nodes[synth.inputs["source"]].spec.arch,
            "synth_method": p.method, "synth_norm": attack.norm if attack else "l2" if p.inversion else None,
            "synth_eps": attack.eps if attack else None,
            "synth_steps": attack.steps if attack else p.inversion.steps if p.inversion else None,
            "synth_size": p.size}


def panel_config(plan, node) -> dict:
    """The flat config keys dashboards group and filter by (sweeper.report.dashboard reads these names):

    - synthesize: ``set_kind`` (D_R/D_NR/D_rand/D_det/D_det_bugs/D_rand_bugs/D_wallace, ``Plan.set_kind``),
      ``source_arch`` and the ``synth_*`` settings;
    - transfer: ``probe_arch``, ``probe_train_set`` (the probe model's), and the probed set's as above;
    - train: ``train_size`` and, on a synthesized set, that set's settings;
    - evaluate: the evaluated model's ``model_seed``, ``train_set``, ``train_size`` and the settings of the
      synthesized set it was trained on (``synth_norm``, ``synth_eps``, ``synth_steps``, ``synth_size``...);
    - train and evaluate: ``features``, a linear probe's features model as results.csv names it
      (``robust (D_adv)``; None for every other model).
    Every key is present on every run of its kind (None where it does not apply), so a panel's axis exists."""
    none = dict.fromkeys(("set_kind", "source_arch", "synth_method", "synth_norm", "synth_eps", "synth_steps",
                          "synth_size"))
    if node.kind == "synthesize":
        return _synthesis_settings(plan, node)
    if node.kind == "transfer":
        probe = plan.nodes[node.inputs["model"]]
        return {**_synthesis_settings(plan, plan.nodes[node.inputs["data"]]), "probe_arch": probe.spec.arch,
                "probe_train_set": plan.train_set(probe), "probe_seed": probe.spec.seed}
    model = node if node.kind == "train" else plan.nodes.get(node.inputs.get("model", ""))
    if model is None or model.kind != "train":
        return {}
    out = {**none, "model_seed": model.spec.seed, "train_set": plan.train_set(model),
           "train_size": getattr(model.spec, "train_size", None), "features": plan.features_of(model)}
    if "data" in model.inputs:
        synth = _synthesis_settings(plan, plan.nodes[model.inputs["data"]])
        # a wrong_labels set keeps only the source's errors among its pool: its size is known once it is made
        out.update(synth, train_size=None if synth["synth_method"] == "wrong_labels" else synth["synth_size"])
    return out


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


REPORT_FIGURES = ("figure2", "table1", "figure3", "fourier")  # the report's PNGs the report run logs, besides
# example grids
FIGURE3_COLUMNS = ("arch", "seed", "transfer_rate", "d_det_acc")


def report_media(plan, store) -> dict[str, str]:
    """{W&B media key: the store path of its PNG} for the images the report run logs: the report's figures
    (``figure2``, ``table1``, ``figure3``, ``fourier``, those it drew) and an example grid per synthesized set it drew
    (``examples/<set label>``, from ``examples_<label>.png``), in that order."""
    base = f"reports/{plan.sweep.name}"
    out = {name: f"{base}/{name}.png" for name in REPORT_FIGURES if store.exists(f"{base}/{name}.png")}
    labels = {f"examples_{n.label}.png": n.label for n in plan.nodes.values() if n.kind == "synthesize"}
    for info in sorted(store.listdir(base), key=lambda i: i.base_name):
        if info.base_name in labels:
            out[f"examples/{wandb_name(labels[info.base_name])}"] = f"{base}/{info.base_name}"
    return out


def figure3_points(rows: list[dict], transfers: list[dict]) -> list[list]:
    """Figure 3's points as table rows (:data:`FIGURE3_COLUMNS`): per D_det evaluation, the transfer rate of the
    set's adversarial examples to a standard model of the evaluated architecture, and its D_det accuracy. They
    join a transfer probe and an evaluation, which no W&B panel can do; the report run logs them as a table."""
    from sweeper.report.figures import transfer_points

    return [[p["arch"], p["seed"], p["transfer_rate"], p["test_acc"]] for p in transfer_points(rows, transfers)]


def log_report(plan, store, mode: str | None = None) -> None:
    """One run per sweep (job_type ``report``) holding the results table (``results``: results.json's rows, columns
    named by :func:`wandb_name`), Figure 3's points (``figure3_points``, a table: always logged, empty when the
    sweep has none) and the report's images (:func:`report_media`: Figure 2 / Table 1 / Figure 3 analogues,
    example grids of the synthesized sets)."""
    m = resolve_mode(mode)
    if m == "disabled":
        return
    import json

    from sweeper.report.report import build_rows, transfer_rows

    written = f"reports/{plan.sweep.name}/results.json"  # what write_report just wrote, else read the store
    rows = json.loads(store.read_bytes(written)) if store.exists(written) else build_rows(plan, store)
    if not rows:
        return
    try:
        import wandb

        points = figure3_points(rows, transfer_rows(plan, store))
        media = report_media(plan, store)
        root, upload = wandb_dir(store)
        report = NodeRun(None, upload=upload)
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "sweeper"), dir=root, mode=m,
                         id=f"{plan.sweep.name}-report", name=f"{plan.sweep.name} report", group=plan.sweep.name,
                         job_type="report", config={"sweep": plan.sweep.name, "kind": "report"},
                         reinit="create_new", resume="allow", settings=wandb.Settings(console="off", silent=True))
        cols = list(dict.fromkeys(c for r in rows for c in r))  # results.csv's order
        logged = {"results": wandb.Table(columns=[wandb_name(c) for c in cols],
                                         data=[[r.get(c) for c in cols] for r in rows]),
                  "figure3_points": wandb.Table(columns=list(FIGURE3_COLUMNS), data=points)}
        with tempfile.TemporaryDirectory(prefix="sweeper-fig-") as figs:  # wandb.Image reads a local file
            for i, (key, path) in enumerate(media.items()):
                local = os.path.join(figs, f"{i}.png")
                with open(local, "wb") as f:
                    f.write(store.read_bytes(path))
                logged[key] = wandb.Image(local, caption=os.path.basename(path))
            run.log(logged)
            run.finish()
        report.finish()  # a remote store: copy the run up
    except Exception as e:  # the report files in the store are the results; W&B is a copy
        _warn(f"W&B report run failed ({e!r}); the report in the store is complete")
