"""The Python API, for notebooks: load a sweep (with overrides), look at its plan, run it, read its results.

    import sweeper
    sw = sweeper.load("search_spaces/toy.yaml", overrides={"seed": 1, "run.store": "/tmp/toy"})
    sw.plan_frame()                        # one row per node: key, kind, label, stage, wave, inputs, done
    sw.run(executor="local")               # like `sweeper run`: resumes, skips what is done
    sw.results()                           # one row per evaluation, the columns of results.csv
    sw.curves("std")                       # one row per epoch of a train node
    sw.report()                            # like `sweeper report`: {file name: path}

A thin layer over what the command line uses (``spec.load``, ``plan.build_plan``, ``store.Store``, the
engines, ``report``): the same sweep file, overrides and store give the same node keys, the same store and the
same results as ``sweeper plan/run/report``. Mistakes raise the same :mod:`sweeper.errors` with the same
messages (a bad override is a ``SpecError`` naming the key). Loading and reading results import neither Ray,
nor W&B, nor torch; ``run`` imports them. pandas (installed with Ray Tune) is imported when a DataFrame is asked
for.
"""
from __future__ import annotations

import csv
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from sweeper.errors import Incomplete, SpecError, SweeperError

Overrides = Union[Mapping[str, Any], Iterable[str], str, None]
EXECUTORS = ("ray", "local")
WANDB_MODES = ("offline", "online", "disabled")


class NodeNotFound(SweeperError, LookupError):
    """No node of the plan has that label or key; the message lists the ones there are."""

    exit_code = 2


def load(path: Union[str, Path], overrides: Overrides = None, *, store: Optional[str] = None) -> "LoadedSweep":
    """Read and validate a sweep file, build its plan and open its store, as ``sweeper plan`` does.

    ``overrides``: a mapping of dotted keys to values (``{"seed": 1, "stages.d_det.attack.eps": {"grid": [0.2,
    0.4]}}``; values are taken as they are), or ``"KEY=VALUE"`` strings exactly as given to ``--set`` (VALUE is
    YAML: ``["seed=1", "stages.d_det.attack.eps={grid: [0.2, 0.4]}"]``). ``store``: like ``--store``, instead
    of ``run.store`` of the file (a relative path is taken from the current directory, as on the command line).
    Raises :class:`~sweeper.errors.SpecError` for a bad file or override, :class:`~sweeper.errors.StoreError` for
    a store that cannot be used. Node keys hash the data's files (their sha256): without the data the plan is
    still loaded, with a warning and provisional keys, and ``run``/``report`` raise
    :class:`~sweeper.errors.DataNotFoundError`.
    """
    from sweeper.sweep.plan import build_plan
    from sweeper.sweep.spec import load as load_spec
    from sweeper.store.store import Store

    sets = _overrides(path, overrides)
    sweep = load_spec(path, sets or None)
    st = Store(store or sweep.run.store)
    st.check()  # an unreachable endpoint, no such bucket, a path under a file: now, not later
    plan = build_plan(sweep, st)  # data.root: store reads the dataset's manifest from this store
    if plan.data_error:  # as `sweeper plan`: the plan can be looked at, not run (run() and report() raise)
        warnings.warn(f"{plan.data_error}; the plan's keys are provisional (no checksum)", stacklevel=2)
    return LoadedSweep(Path(path), sets, plan, st)


def _overrides(path, overrides: Overrides) -> dict:
    """The overrides as the {dotted key: value} that spec.load takes; strings parsed as `--set` parses them."""
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    from sweeper.cli import _parse_sets  # the one parser of `--set KEY=VALUE`

    items = [overrides] if isinstance(overrides, str) else list(overrides)
    if not all(isinstance(i, str) for i in items):
        raise TypeError("overrides: expected a mapping {dotted key: value} or 'KEY=VALUE' strings, got "
                        f"{overrides!r}")
    try:
        return _parse_sets(items)
    except ValueError as e:  # the same message and class as `sweeper plan --set junk`
        raise SpecError(str(path), "", str(e)) from None


class LoadedSweep:
    """A validated sweep, its plan and its store. Made by :func:`load`.

    Attributes: ``path`` (the sweep file), ``overrides`` ({dotted key: value} applied), ``sweep`` (the
    validated :class:`sweeper.sweep.schema.Sweep`), ``plan`` (the :class:`sweeper.sweep.plan.Plan`), ``store`` (the
    :class:`sweeper.store.store.Store`).
    """

    def __init__(self, path: Path, overrides: dict, plan, store):
        self.path, self.overrides, self.plan, self.store = path, overrides, plan, store
        self.sweep = plan.sweep

    def __repr__(self) -> str:
        return (f"<sweep {self.sweep.name!r}: {len(self.plan.nodes)} nodes, {len(self.plan.waves())} waves; "
                f"store {self.store.uri}>")

    @property
    def name(self) -> str:
        return self.sweep.name

    # ------------------------------------------------------------------------------------------ the plan
    def done(self) -> set[str]:
        """The keys of the plan's nodes that are finished in the store (none when its keys are provisional)."""
        if self.plan.data_error:
            return set()
        return {k for k in self.plan.nodes if self.store.is_done(k)}

    def plan_frame(self):
        """A DataFrame of the plan, one row per node in plan (topological) order, as ``sweeper plan`` prints
        it: key, kind, label, stage, wave (0 first), inputs (``role=label, ...``; empty when none), done."""
        import pandas as pd

        done, depth = self.done(), self.plan.depths()
        nodes = self.plan.nodes
        rows = [{"key": n.key, "kind": n.kind, "label": n.label, "stage": n.stage, "wave": depth[n.key],
                 "inputs": ", ".join(f"{r}={nodes[k].label}" for r, k in n.inputs.items()), "done": n.key in done}
                for n in nodes.values()]
        return pd.DataFrame(rows, columns=["key", "kind", "label", "stage", "wave", "inputs", "done"])

    def render(self, show_all: bool = False) -> str:
        """The text ``sweeper plan`` prints: one line per node, or past ``cli.PLAN_TABLE_MAX`` nodes a summary
        (``show_all``: every node anyway)."""
        from sweeper.cli import PLAN_TABLE_MAX

        done = self.done()
        if show_all or len(self.plan.nodes) <= PLAN_TABLE_MAX:
            return self.plan.render(done)
        return self.plan.render_summary(done)

    # ------------------------------------------------------------------------------------------- running
    def run(self, executor: str = "ray", *, wandb: Optional[str] = None, address: Optional[str] = None,
            threads: Optional[int] = None, report: bool = True, log: Callable[[str], None] = print) -> dict:
        """Run every node that is not done yet, as ``sweeper run`` does (re-running resumes: finished nodes are
        skipped, training continues from its last epoch checkpoint), then write the report (``report=False``:
        not).

        ``executor``: ``"ray"`` (a private local Ray started and stopped here, or ``address`` /
        ``RAY_ADDRESS``), or ``"local"`` (this process, no Ray; ``threads`` sets torch's threads). ``wandb``:
        offline | online | disabled (default: ``WANDB_MODE``, then ``run.wandb`` of the file). ``log``: where the
        progress lines go. Returns ``{"ran", "skipped", "total", "seconds", "report"}`` (``report``: {file name:
        path}, or None). Raises :class:`~sweeper.errors.WorkFailed` when work failed after its retries (what
        finished is kept; run again to resume), ``KeyboardInterrupt`` when interrupted.
        """
        if executor not in EXECUTORS:
            raise ValueError(f"executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
        if wandb is not None and wandb not in WANDB_MODES:
            raise ValueError(f"wandb: expected one of {', '.join(WANDB_MODES)}, got {wandb!r}")
        if executor == "local" and address:
            raise ValueError("executor='local' runs everything in this process; it cannot take an address")
        from sweeper.run.engines import run_plan, run_plan_ray

        t0 = time.time()
        mode = wandb or os.environ.get("WANDB_MODE") or self.sweep.run.wandb  # as `sweeper run --wandb`
        if executor == "ray":
            counts = run_plan_ray(self.plan, self.store, address=address, wandb_mode=mode, log=log)
        else:
            counts = run_plan(self.plan, self.store, threads=threads, wandb_mode=mode, log=log)
        written = None
        if report:
            from sweeper.report.tracking import log_report

            written = self.report()
            log_report(self.plan, self.store, mode)
        return {**counts, "seconds": time.time() - t0, "report": written}

    # ------------------------------------------------------------------------------------------- results
    def results(self):
        """A DataFrame with one row per finished evaluation, in plan order: the rows and columns of the
        ``results.csv`` that ``sweeper report`` writes for this sweep and store (missing values are None/NaN
        instead of empty strings). With no finished evaluation: no rows, the base columns."""
        import pandas as pd

        from sweeper.report.report import BASE_COLUMNS, build_rows, to_csv

        rows = build_rows(self.plan, self.store)
        header = to_csv(rows).splitlines()[0] if rows else ""
        columns = next(csv.reader([header])) if header else list(BASE_COLUMNS)
        return pd.DataFrame(rows, columns=columns)

    def node(self, label_or_key: str, kind: Optional[str] = None):
        """The plan's node with this label (``"std"``, ``"d_det[attack.eps=0.5]"``) or key; with ``kind``, only
        a node of that kind. Raises :class:`NodeNotFound` listing the labels there are."""
        nodes = [n for n in self.plan.nodes.values() if kind is None or n.kind == kind]
        for n in nodes:
            if label_or_key in (n.label, n.key):
                return n
        what = f"{kind} node" if kind else "node"
        other = next((n for n in self.plan.nodes.values() if label_or_key in (n.label, n.key)), None)
        hint = f" ({other.label} is a node of kind {other.kind})" if other is not None else ""
        labels = ", ".join(n.label for n in nodes)
        raise NodeNotFound(f"sweep {self.sweep.name}: no {what} labelled {label_or_key!r}{hint}; the {what}s "
                           f"are: {labels or 'none'}")

    def curves(self, label_or_key: str):
        """A DataFrame of a finished train node's per-epoch history, one row per epoch: epoch, train_loss,
        train_acc, lr, images_per_s, test_acc (on the first 1,000 test images), and robust_acc where
        ``run.robust_curve`` scored it (NaN at the other epochs). The same numbers as its W&B run's history."""
        import pandas as pd

        node = self.node(label_or_key, kind="train")
        if not self.store.is_done(node.key):
            raise Incomplete(f"sweep {self.sweep.name}: train node {node.label} ({node.key}) is not done in "
                             f"{self.store.uri}; run the sweep first")
        history = self.store.load_meta(node.key).get("history") or []
        return pd.DataFrame(history)

    def report(self) -> dict:
        """Write the report as ``sweeper report`` does (results.csv/json, transfer.csv, report.md, figures under
        ``<store>/reports/<sweep>/``); returns {file name: path}. Covers the finished evaluations."""
        from sweeper.report.report import write_report

        return write_report(self.plan, self.store)
