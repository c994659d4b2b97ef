"""W&B dashboards as code (an edge module beside tracking.py; imports ``wandb_workspaces`` lazily).

``sweeper dashboard FILE --entity E --project P`` builds, from the plan and the store's report files, with W&B's
own library for reports and workspaces as code (``wandb-workspaces``, pinned in the ``dashboard`` extra):

- a **report**: the paper's claims as panels over the sweep's runs (group = the sweep), each panel grid with a
  run set of the one job type whose runs carry what it plots (see :func:`build_report`);
- a **saved view** of the project for watching a running sweep: runs grouped by kind, failed runs first, live
  training curves (see :func:`build_view`).

Every metric name comes from ``tracking`` (``wandb_name`` of the results.csv name, ``panel_config``'s config
keys, ``report_media``'s media keys), so a panel reads what the runs log. ``--json OUT`` writes the serialised
specs without any network: a run set given both entity and project makes the library look the project's id up
over the network, so run sets are built without them and the report's entity/project are set on the serialised
run sets instead (as W&B's older report API did on save; see :class:`_Report`). ``--publish`` saves both with the
library's own ``save()`` (through ``wandb.Api``: WANDB_BASE_URL, WANDB_API_KEY). Panel and run set ids come from
``random``: they are drawn from a generator seeded by the sweep's name, so the same sweep gives the same spec.
"""

from __future__ import annotations

import json
import os
import random
from contextlib import contextmanager

from sweeper.errors import SweeperError
from sweeper.report.tracking import FIGURE3_COLUMNS, report_media, wandb_name

PIN = "wandb-workspaces==0.4.13"  # the serialisation used (``_to_model``) is the library's private API: pinned
INSTALL = f"pip install '{PIN}' (or: pip install -e '.[dashboard]')"


class DashboardError(SweeperError):
    """wandb-workspaces missing, or a publish that failed; one line says why."""

    exit_code = 6


def _library():
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError as e:
        raise DashboardError(f"sweeper dashboard needs wandb-workspaces ({e.name or e} is not installed): "
                             f"{INSTALL}") from None
    return wr, ws


@contextmanager
def _seeded(name: str):
    """Panel and run set ids come from ``random``: seed it from the sweep's name, restore it afterwards."""
    state = random.getstate()
    random.seed(f"sweeper-dashboard:{name}")
    try:
        yield
    finally:
        random.setstate(state)


# ------------------------------------------------------------------------------------- what the runs log
def names(plan, store) -> dict:
    """What the sweep's runs log that the panels plot, by W&B name (from the plan, plus the report's images
    found in the store): ``balls`` (``robust_worst/<ball>``), ``norms`` (``robust_at_eps/<norm>``), ``curve``
    (train runs log ``robust_acc``), ``media`` (the report run's image keys), ``synth`` (the sweep synthesizes)."""
    from sweeper.science.evaluation import ball_name
    from sweeper.report.report import worst_column

    balls, norms = {}, {}
    for n in plan.nodes.values():
        if n.kind == "evaluate":
            for a in n.spec.attacks:
                balls[wandb_name(worst_column(ball_name(a.norm, a.eps)))] = a.eps
                norms[wandb_name(f"robust_at_eps[{a.norm}]")] = a.norm
    return {"balls": sorted(balls, key=lambda b: (b.split("_eps")[0], balls[b])), "norms": sorted(norms),
            "curve": any(n.robust_curve is not None for n in plan.nodes.values() if n.kind == "train"),
            "media": list(report_media(plan, store)),
            "synth": any(n.kind == "synthesize" for n in plan.nodes.values())}


# ----------------------------------------------------------------------------------------------- report
class _ReportBuilder:
    def __init__(self, wr, sweep: str):
        self.wr, self.sweep = wr, sweep

    def runset(self, job_type: str, name: str, groupby: str | None = None):
        """This sweep's runs of one job type (run group = sweep name; job type = node kind or ``report``)."""
        return self.wr.Runset(name=name, filters=f"Group = '{self.sweep}' and JobType = '{job_type}'",
                              groupby=[f"config.{groupby}"] if groupby else [])

    def grid(self, job_type: str, name: str, panels: list, groupby: str | None = None):
        return self.wr.PanelGrid(runsets=[self.runset(job_type, name, groupby)], panels=panels)


def _layout(wr, i: int, w: int = 12, h: int = 8):
    return wr.Layout(x=(i % 2) * w, y=(i // 2) * h, w=w, h=h)


def _lay(wr, panels: list) -> list:
    for i, p in enumerate(panels):
        p.layout = _layout(wr, i)
    return panels


def report_panels(wr, got: dict) -> list[tuple[str, str, str | None, list]]:
    """The report's panel grids: (heading, job type of its run set, config key it groups by, panels)."""
    C, S = wr.Config, wr.SummaryMetric
    acc = [S("clean_acc")] + [S(b) for b in got["balls"]]
    fig2 = [wr.BarPlot(title="Figure 2 analogue: clean and robust (worst-case) accuracy per training set, "
                             "mean ± std over seeds", metrics=acc, orientation="v", groupby=C("train_set"),
                       groupby_aggfunc="mean", groupby_rangefunc="stddev"),
            wr.LinePlot(title="Robust accuracy against eps per training set and norm (eps 0: clean)", x="eps",
                        y=list(got["norms"]), groupby=C("train_set"), groupby_aggfunc="mean",
                        groupby_rangefunc="stddev", title_x="eps", title_y="accuracy")]
    table1 = [wr.BarPlot(title="Table 1 analogue: accuracy on the true labels and on the shifted labels (y+1)",
                         metrics=[S("clean_acc"), S("shifted_acc")], orientation="v", groupby=C("train_set"),
                         groupby_aggfunc="mean", groupby_rangefunc="stddev")]
    curves = [wr.LinePlot(title="Test accuracy per epoch, by training set", x="epoch", y=["test_acc"],
                          groupby=C("train_set"), groupby_aggfunc="mean", groupby_rangefunc="stddev"),
              wr.LinePlot(title="Training loss per epoch, by training set", x="epoch", y=["train_loss"],
                          groupby=C("train_set"), groupby_aggfunc="mean", groupby_rangefunc="stddev")]
    if got["curve"]:
        curves.append(wr.LinePlot(title="Robust accuracy during training (curve subset), by training set",
                                  x="epoch", y=["robust_acc"], groupby=C("train_set"), groupby_aggfunc="mean",
                                  groupby_rangefunc="stddev"))
    report = [wr.CustomChart(chart_name="wandb/scatter/v0", query={"summaryTable": {"tableKey": "figure3_points"}},
                             chart_fields={"x": "transfer_rate", "y": "d_det_acc"},
                             chart_strings={"title": "Figure 3 analogue: D_det accuracy against the transfer rate "
                                                     "of the source's adversarial examples"}),
              wr.WeavePanelSummaryTable(table_name="results"),
              wr.MediaBrowser(title="Report figures and example grids: start, target and synthesized images "
                                    "per set", media_keys=list(got["media"]), num_columns=1)]
    first = got["balls"][0] if got["balls"] else "clean_acc"
    settings = [C("train_set"), C("arch"), C("model_seed"), C("train_size")]
    if got["synth"]:
        settings += [C("source_arch"), C("synth_method"), C("synth_norm"), C("synth_eps"), C("synth_steps")]
    para = [wr.ParallelCoordinatesPlot(title="Synthesis settings, architecture and the resulting accuracies",
                                       columns=[wr.ParallelCoordinatesPlotColumn(m) for m in
                                                settings + [S("clean_acc"), S("shifted_acc")]
                                                + [S(b) for b in got["balls"]]]),
            wr.ScatterPlot(title=f"{first} against the synthesis eps of the training set", x=C("synth_eps"),
                           y=S(first))]
    grids = [("Figure 2 analogue: robust and clean accuracy", "evaluate", "train_set", fig2),
             ("Table 1 analogue: learning from non-robust features", "evaluate", "train_set", table1),
             ("Training curves", "train", "train_set", curves),
             ("Figure 3, the results table and the constructed sets", "report", None, report),
             ("Synthesis settings against accuracy", "evaluate", None, para)]
    return [(h, j, g, _lay(wr, p)) for h, j, g, p in grids]


def build_report(plan, store, entity: str, project: str):
    """The report (a ``wandb_workspaces.reports.v2.Report``) of a sweep; built offline."""
    wr, _ = _library()
    b = _ReportBuilder(wr, plan.sweep.name)
    got = names(plan, store)
    with _seeded(plan.sweep.name):
        blocks = [wr.MarkdownBlock(text=(
            f"Sweep **{plan.sweep.name}** ({plan.sweep.data.dataset}): {plan.sweep.description or ''}\n\n"
            "Runs: one W&B run per node of the plan (group = the sweep, job type = the node's kind) and one "
            "`report` run with the results table, Figure 3's points and the report's images. Robust accuracy is "
            "the per-example worst case over the attacks of each threat ball (`robust_worst/<ball>`); metric "
            "names are results.csv's columns with brackets as `/` and dots as `p`."))]
        for heading, job_type, groupby, panels in report_panels(wr, got):
            blocks += [wr.MarkdownBlock(text=f"## {heading}"), b.grid(job_type, heading, panels, groupby)]
        return _Report(entity=entity, project=project, title=f"{plan.sweep.name}: adversarial examples are "
                       "features (sweeper)"[:128], description=f"sweeper sweep {plan.sweep.name}", blocks=blocks)


def _report_class():
    wr, _ = _library()
    from wandb_workspaces.reports.v2 import internal

    class SweepReport(wr.Report):
        """A Report whose run sets name the report's own entity and project in the serialised spec, set there
        rather than on ``Runset`` (whose ``_to_model`` would look the project's internal id up over the
        network); W&B's older report API left the id out the same way."""

        def _to_model(self):
            model = super()._to_model()
            for block in model.spec.blocks:
                for rs in getattr(getattr(block, "metadata", None), "run_sets", None) or []:
                    if rs.project is None:
                        rs.project = internal.Project(entity_name=self.entity, name=self.project)
            return model

    return SweepReport


def _Report(**kw):
    return _report_class()(**kw)


# ------------------------------------------------------------------------------------------- saved view
def build_view(plan, store, entity: str, project: str):
    """The saved view (a ``wandb_workspaces.workspaces.Workspace``) for watching a running sweep: this sweep's
    runs grouped by kind (``config.kind``), failed and crashed runs first, then the newest; live training curves,
    synthesis shards, evaluations."""
    wr, ws = _library()
    got = names(plan, store)
    with _seeded(plan.sweep.name + ":view"):
        train = [wr.LinePlot(title=f"{m} (live)", x="epoch", y=[m]) for m in
                 ["test_acc", "train_loss", "train_acc"] + (["robust_acc"] if got["curve"] else [])]
        sections = [ws.Section(name="Training (live)", panels=_lay(wr, train), is_open=True)]
        methods = {n.spec.method for n in plan.nodes.values() if n.kind == "synthesize"}
        shards = [(m, what) for m, what in (("hit_rate", "relabel"), ("mean_dist", "inversion")) if what in methods]
        if shards:  # relabelling logs its hit rate per shard, inversion its mean feature distance
            sections.append(ws.Section(name="Synthesis shards", is_open=True, panels=_lay(wr, [
                wr.LinePlot(title=f"{m} per shard, as shards finish", x="shard/index", y=[f"shard/{m}"])
                for m, _ in shards] + [wr.BarPlot(title="synthesized sets", metrics=[wr.SummaryMetric(m)
                                                                                       for m, _ in shards])])))
        sections.append(ws.Section(name="Evaluations", is_open=True, panels=_lay(wr, [
            wr.BarPlot(title="clean and robust accuracy", metrics=[wr.SummaryMetric("clean_acc")]
                       + [wr.SummaryMetric(b) for b in got["balls"]], orientation="v"),
            wr.LinePlot(title="robust accuracy against eps", x="eps", y=list(got["norms"]))])))
        return ws.Workspace(
            entity=entity, project=project, name=f"{plan.sweep.name} (live)", sections=sections,
            runset_settings=ws.RunsetSettings(
                filters=f"Group = '{plan.sweep.name}'", groupby=[ws.Config("kind")],
                order=[ws.Ordering(ws.Metric("State"), ascending=True),  # crashed, failed, finished, running
                       ws.Ordering(ws.Metric("CreatedTimestamp"), ascending=False)]))


# --------------------------------------------------------------------------------------- serialise, save
def report_body(report) -> dict:
    """What ``Report.save()`` sends (the upsertView variables but ``id``/``name``), with the spec parsed."""
    m = report._to_model()
    return {"entityName": m.project.entity_name, "projectName": m.project.name, "displayName": m.display_name,
            "description": m.description, "type": "runs",
            "spec": json.loads(m.spec.model_dump_json(by_alias=True, exclude_none=True))}


def view_body(view) -> dict:
    """What ``Workspace.save()`` sends (the upsertView variables but ``id``/``name``), with the spec parsed."""
    m = view._to_model()
    return {"entityName": m.entity, "projectName": m.project, "displayName": m.display_name, "description": "",
            "type": "project-view", "spec": json.loads(m.spec.model_dump_json(by_alias=True, exclude_none=True))}


def build(plan, store, entity: str, project: str) -> tuple:
    if not entity or not project:
        raise DashboardError("sweeper dashboard needs --entity and --project (the W&B project the runs are synced to)")
    return build_report(plan, store, entity, project), build_view(plan, store, entity, project)


def panels(body: dict) -> list[dict]:
    """Every panel of a serialised report or view spec (its ``viewType`` and ``config``)."""
    spec = body["spec"]
    if "blocks" in spec:
        return [p for b in spec["blocks"] if b.get("type") == "panel-grid"
                for p in b["metadata"]["panelBankSectionConfig"]["panels"]]
    return [p for s in spec["section"]["panelBankConfig"]["sections"] for p in s["panels"]]


def _check_reachable(timeout: float = 5.0) -> None:
    """One TCP connect to W&B's API (WANDB_BASE_URL, default api.wandb.ai) before saving: W&B's client retries a
    refused or unreachable address with back-off for minutes (measured: >300 s here), so an unreachable server is
    said at once instead."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return  # W&B's client goes through the proxy; a direct connect says nothing about it
    base = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    url = urlparse(base if "://" in base else f"https://{base}")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return
    except OSError as e:
        raise DashboardError(f"could not publish to W&B: cannot reach {base} ({e.strerror or type(e).__name__}); "
                             "check WANDB_BASE_URL and the network; --json OUT writes the dashboard offline") from None


def publish(report, view) -> list[str]:
    """Save both with the library's own ``save()``; returns their URLs. A failure is one line (DashboardError)."""
    _check_reachable()
    out = []
    for what, obj in (("report", report), ("saved view", view)):
        try:
            obj.save()
            out.append(obj.url)
        except Exception as e:  # wandb.Api / GraphQL errors of every kind: said in one line, never hidden
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise DashboardError(f"could not publish the {what} to W&B ({type(e).__name__}: {first}); check "
                                 "WANDB_API_KEY, WANDB_BASE_URL and the network; --json OUT writes it offline") from None
    return out


__all__ = ["build", "build_report", "build_view", "report_body", "view_body", "publish", "panels", "names",
           "DashboardError", "FIGURE3_COLUMNS"]
