"""`sweeper dashboard`: the W&B report and saved view built from a real toy sweep, checked against that sweep's
offline W&B runs as wandb's own reader prints them (`wandb leet inspect --json`), serialised without network,
round-tripped through wandb-workspaces' own model, and published to a loopback stand-in of W&B's API."""
import csv
import glob
import json
import os
import re
import subprocess
import sys

import pytest

from test_tracking import read_offline_run
from wandbserver import WandbStandIn

from sweeper.report.tracking import WANDB_NAME, wandb_name


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "search_spaces", "toy.yaml")
MEDIA_FIELDS = ("_type", "path", "sha256", "size", "format", "width", "height", "caption", "ncols", "nrows",
                "artifact_path", "_latest_artifact_path", "log_mode")


def _cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "sweeper", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "WANDB_SILENT": "true", **(env or {})}, cwd=ROOT)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy sweep run once with W&B offline; its runs read back: {"store", "runs": {job_type: [run]}, "dirs"}."""
    base = tmp_path_factory.mktemp("dash")
    store = str(base / "store")
    r = _cli("run", TOY, "--store", store, "--wandb", "offline", "--executor", "local", timeout=540)  # ~20 s idle
    assert r.returncode == 0, r.stderr[-3000:]
    dirs = {}
    runs: dict[str, list] = {}
    for d in sorted(glob.glob(os.path.join(store, "wandb", "wandb", "offline-run-*"))):
        run = read_offline_run(d)
        dirs[run["run"]["id"]] = d
        runs.setdefault(run["run"]["job_type"], []).append(run)
    return {"store": store, "runs": runs, "dirs": dirs, "base": base}


@pytest.fixture(scope="module")
def spec(toy):
    """`sweeper dashboard --json OUT` on the toy sweep, with W&B's API pointed at a recording stand-in: the JSON,
    the CLI's output and every request the stand-in received (none may come)."""
    out = toy["base"] / "dashboard.json"
    with WandbStandIn("E", "P") as srv:
        r = _cli("dashboard", TOY, "--store", toy["store"], "--entity", "E", "--project", "P", "--json", str(out),
                 env={"WANDB_BASE_URL": srv.url, "WANDB_API_KEY": "x" * 40, "WANDB_MODE": "online"})
        requests = list(srv.requests)
    assert r.returncode == 0, r.stdout + r.stderr
    return {"json": json.loads(out.read_text()), "stdout": r.stdout, "requests": requests, "path": out}


def _panels(body):
    from sweeper.report.dashboard import panels

    return panels(body)


def _media_and_tables(run) -> dict[str, str]:
    """{key: W&B type} of the media (images, tables) a run logged: leet prints them as ``<key>.<field>``."""
    items = {**run["summary"], **{k: v for h in run["history"] for k, v in h.items()}}
    return {k[:-len("._type")]: v for k, v in items.items() if k.endswith("._type")}


def _metric_names(run) -> set[str]:
    """Every logged metric name (history and summary) of a run, media counted once by their key."""
    media = _media_and_tables(run)
    out = set()
    for k in {**run["summary"], **{k: v for h in run["history"] for k, v in h.items()}}:
        if k.startswith("_"):  # W&B's own (_step, _runtime, _timestamp, _wandb.runtime)
            continue
        key, _, field = k.rpartition(".")
        out.add(key if key in media and field in MEDIA_FIELDS else k)
    return out


# ------------------------------------------------------------------------------------------------ names
def test_wandb_name_maps_result_names():
    assert wandb_name("robust_acc[l2_eps0.5_s2]") == "robust_acc/l2_eps0p5_s2"
    assert wandb_name("robust/l2_eps0.5_s10") == "robust/l2_eps0p5_s10"
    assert wandb_name("robust_worst[linf_eps0.0313725]") == "robust_worst/linf_eps0p0313725"
    assert wandb_name("pgd_gap[l2_eps1e-05]") == "pgd_gap/l2_eps1em05"
    assert wandb_name("examples/d_det[eps=0.5, seed=1]") == "examples/d_det/eps_0p5__seed_1"
    assert wandb_name("0p5") == "_0p5"
    for same in ("clean_acc", "shard/hit_rate", "robust_at_eps/linf", "eps"):
        assert wandb_name(same) == same


def test_logged_names_follow_the_rule_and_match_the_store(toy):
    """No logged metric breaks W&B's naming rule; evaluations log results.csv's numbers under the mapped
    names, eps as a history value, and the config keys the panels group by."""
    for kind, runs in toy["runs"].items():
        for run in runs:
            bad = sorted(n for n in _metric_names(run) if not WANDB_NAME.match(n))
            assert not bad, (kind, run["run"]["name"], bad)
    with open(os.path.join(toy["store"], "reports", "toy", "results.csv")) as f:
        rows = list(csv.DictReader(f))
    evals = {r["run"]["id"].split("-", 1)[1]: r for r in toy["runs"]["evaluate"]}
    assert len(rows) == len(evals) == 3
    for row in rows:
        run = evals[row["eval_key"]]
        numeric = [c for c in row if c.startswith(("robust_acc[", "robust_worst[")) or c in ("clean_acc", "shifted_acc")]
        assert any("[" in c and "." in c for c in numeric)  # a readable column that needed the mapping
        for c in numeric:
            assert run["summary"][wandb_name(c)] == pytest.approx(float(row[c])), c
        # robust accuracy against eps: eps 0 is the clean accuracy, then the ball's worst case
        curve = [(h["eps"], h["robust_at_eps/linf"]) for h in run["history"] if "eps" in h]
        assert [e for e, _ in curve] == [0.0, 0.4]
        assert [a for _, a in curve] == pytest.approx([float(row["clean_acc"]), float(row["robust_worst[linf_eps0.4]"])])
        cfg = run["config"]
        assert (cfg["train_set"], cfg["model_seed"]) == (row["train_set"], int(row["seed"]))
        if row["train_set"] == "D_det":  # the synthesis settings behind the evaluated model
            assert (cfg["set_kind"], cfg["synth_norm"], cfg["synth_eps"], cfg["synth_steps"], cfg["source_arch"]) == (
                "D_det", row["synth_norm"], float(row["synth_eps"]), int(row["synth_steps"]), row["source_arch"])
    (synth,) = toy["runs"]["synthesize"]
    assert (synth["config"]["set_kind"], synth["config"]["source_arch"]) == ("D_det", "linear")
    (probe,) = toy["runs"]["transfer"]
    assert (probe["config"]["probe_arch"], probe["config"]["probe_train_set"]) == ("linear", "D_adv")
    (report,) = toy["runs"]["report"]
    logged = _media_and_tables(report)
    assert logged["results"] == logged["figure3_points"] == "table-file"
    assert logged["figure2"] == logged["table1"] == "image-file"
    table = glob.glob(os.path.join(toy["dirs"]["toy-report"], "files", "media", "table", "results_*.table.json"))
    cols = json.load(open(table[0]))["columns"]
    assert all(WANDB_NAME.match(c) for c in cols) and "robust_worst/linf_eps0p4" in cols


# -------------------------------------------------------------------------------------------- the spec
def test_dashboard_json_offline(spec):
    """Exit 0 with no request to W&B's API; at least six panels of at least four kinds, with a media panel and a
    parallel-coordinates or scatter panel."""
    assert spec["requests"] == [], [r["path"] for r in spec["requests"]]
    report = _panels(spec["json"]["report"])
    kinds = {p["viewType"] for p in report}
    assert len(report) >= 6 and len(kinds) >= 4, kinds
    assert "Media Browser" in kinds and kinds & {"Parallel Coordinates Plot", "Scatter Plot"}
    assert {"Bar Chart", "Run History Line Plot", "Vega2", "Weave"} <= kinds
    assert f"report: {len(report)} panels" in spec["stdout"]
    view = spec["json"]["view"]
    assert view["type"] == "project-view" and len(_panels(view)) >= 3
    grouping = view["spec"]["section"]["runSets"][0]["grouping"]
    order = view["spec"]["section"]["runSets"][0]["sort"]["keys"]
    assert grouping == [{"section": "config", "name": "kind.value"}]
    assert order[0] == {"key": {"section": "run", "name": "state"}, "ascending": True}  # crashed, failed first


def test_spec_round_trips_and_is_the_plans(spec, toy):
    """The JSON parses into wandb-workspaces' own models and dumps back equal; loaded back as a Report and a
    Workspace every panel is one the library knows; building it in-process from the plan gives the same spec."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces.reports.v2 import internal as rint
    from wandb_workspaces.workspaces import internal as wint

    from sweeper.report.dashboard import build, report_body, view_body
    from sweeper.sweep.plan import build_plan
    from sweeper.sweep.spec import load
    from sweeper.store.store import Store

    body = spec["json"]["report"]
    model = rint.Spec.model_validate(body["spec"])
    assert json.loads(model.model_dump_json(by_alias=True, exclude_none=True)) == body["spec"]
    vs = rint.ReportViewspec(display_name=body["displayName"], description=body["description"],
                             project=rint.Project(name="P", entity_name="E"), spec=model)
    report = wr.Report._from_model(vs)
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    loaded = [p for g in grids for p in g.panels]
    assert len(loaded) == len(_panels(body)) and not any(type(p).__name__ == "UnknownPanel" for p in loaded)
    assert {type(p).__name__ for p in loaded} >= {"BarPlot", "LinePlot", "ParallelCoordinatesPlot", "ScatterPlot",
                                                  "MediaBrowser", "CustomChart", "WeavePanelSummaryTable"}
    assert all((g.runsets[0].entity, g.runsets[0].project) == ("E", "P") for g in grids)

    vbody = spec["json"]["view"]
    vmodel = wint.WorkspaceViewspec.model_validate(vbody["spec"])
    assert json.loads(vmodel.model_dump_json(by_alias=True, exclude_none=True)) == vbody["spec"]
    view = ws.Workspace._from_model(wint.View(entity="E", project="P", display_name=vbody["displayName"],
                                              name="nw-x-v", id="", spec=vmodel))
    assert sum(len(s.panels) for s in view.sections) == len(_panels(vbody))
    assert json.loads(view._to_model().spec.model_dump_json(by_alias=True, exclude_none=True)) == vbody["spec"]

    plan = build_plan(load(TOY), Store(toy["store"]))
    r, v = build(plan, Store(toy["store"]), "E", "P")
    assert report_body(r) == body and view_body(v) == vbody


def _report_refs(body, sweep: str = "toy") -> list[tuple[str, str, str]]:
    """(job type the panel's run set filters on, what, name) of every key a report panel reads, from the wire
    format: what is config | summary | history | media | table | table_column:<table>."""
    out = []
    for b in body["spec"]["blocks"]:
        if b.get("type") != "panel-grid":
            continue
        (rs,) = b["metadata"]["runSets"]
        flt = {f["key"]["name"]: f["value"] for f in rs["filters"]["filters"]}
        job = flt["jobType"]
        assert flt["group"] == sweep
        out += [(job, "config", g["name"].removesuffix(".value")) for g in rs["grouping"]]
        for p in b["metadata"]["panelBankSectionConfig"]["panels"]:
            out += [(job, w, n) for w, n in _panel_refs(p)]
    return out


def _accessor(a: str) -> tuple[str, str]:
    if a.startswith("config:"):
        return "config", a[len("config:"):].removesuffix(".value")
    assert a.startswith("summary:"), a
    return "summary", a[len("summary:"):]


def _panel_refs(p) -> list[tuple[str, str]]:
    c, t = p["config"], p["viewType"]
    out = []
    if c.get("groupBy"):
        out.append(("config", c["groupBy"].removesuffix(".value")))
    if t == "Bar Chart":
        out += [("summary", m.removeprefix("summary_metrics.")) for m in c["metrics"]]
    elif t == "Run History Line Plot":
        out += [("history", m) for m in c["metrics"] + [c.get("xAxis", "_step")] if m != "_step"]
    elif t == "Scatter Plot":
        for axis in ("xAxis", "yAxis"):
            a = c[axis]
            out.append(_accessor(a) if ":" in a else ("history", a))
    elif t == "Parallel Coordinates Plot":
        out += [_accessor(col["accessor"]) for col in c["columns"]]
    elif t == "Media Browser":
        out += [("media", k) for k in c["mediaKeys"]]
    elif t == "Weave":
        out.append(("table", c["panel2Config"]["exp"]["fromOp"]["inputs"]["key"]["val"]))
    elif t == "Vega2":
        (q,) = c["userQuery"]["queryFields"]
        (tq,) = [f for f in q["fields"] if f["name"] == "summaryTable"]
        table = tq["args"][0]["value"]
        out.append(("table", table))
        out += [(f"table_column:{table}", v) for v in c["fieldSettings"].values()]
    else:
        raise AssertionError(f"a panel kind this test does not read: {t}")
    assert out, p
    return out


def _has(toy, run, what: str, name: str) -> bool:
    if what == "config":
        return name in run["config"]
    if what == "summary":
        return name in run["summary"]
    if what == "history":
        return any(name in h for h in run["history"])
    if what in ("media", "table"):
        return _media_and_tables(run).get(name) == ("image-file" if what == "media" else "table-file")
    table = what.split(":", 1)[1]
    files = glob.glob(os.path.join(toy["dirs"][run["run"]["id"]], "files", "media", "table", f"{table}_*.table.json"))
    return bool(files) and name in json.load(open(files[0]))["columns"]


# the saved view has one run set (every run of the sweep); each section is about one kind of run
VIEW_SECTIONS = {"Training (live)": "train", "Synthesis shards": "synthesize", "Evaluations": "evaluate"}


def test_every_key_the_dashboard_reads_is_logged(spec, toy):
    """Every metric, config key, media key, table and table column a panel reads exists, under a name that
    follows W&B's rule, in every offline run of the job type its run set filters on (the report) or its
    section is about (the saved view), as `wandb leet inspect` reads them back."""
    refs = _report_refs(spec["json"]["report"])
    for s in spec["json"]["view"]["spec"]["section"]["panelBankConfig"]["sections"]:
        refs += [(VIEW_SECTIONS[s["name"]], w, n) for p in s["panels"] for w, n in _panel_refs(p)]
    refs += [("train", "config", "kind"), ("evaluate", "config", "kind"), ("report", "config", "kind")]  # grouping
    assert {w for _, w, _ in refs} >= {"config", "summary", "history", "media", "table"}
    missing = []
    for job, what, name in refs:
        if what in ("summary", "history", "media", "table"):
            assert WANDB_NAME.match(name), name
        runs = toy["runs"].get(job, [])
        if not runs or not all(_has(toy, run, what, name) for run in runs):
            missing.append((job, what, name))
    assert not missing, missing


# ------------------------------------------------------------------------------------------- publishing
def test_publish_sends_the_offline_spec(spec, toy):
    """`--publish` against a loopback stand-in of W&B's API: the report and the view arrive through the
    library's own save(), and each body equals the offline spec."""
    with WandbStandIn("E", "P") as srv:
        r = _cli("dashboard", TOY, "--store", toy["store"], "--entity", "E", "--project", "P", "--publish",
                 env={"WANDB_BASE_URL": srv.url, "WANDB_API_KEY": "x" * 40, "WANDB_MODE": "online"})
        upserts = srv.upserts()
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(upserts) == 2 and r.stdout.count(f"published {srv.url}/E/P") == 2, r.stdout
    for sent, kind in zip(upserts, ("report", "view")):
        offline = spec["json"][kind]
        assert json.loads(sent["spec"]) == offline["spec"]
        assert {k: sent[k] for k in ("entityName", "projectName", "displayName", "type")} == {
            k: offline[k] for k in ("entityName", "projectName", "displayName", "type")}


def test_publish_failure_is_one_line(toy):
    """A W&B API that is not there: one line naming the cause, exit 6, no traceback."""
    r = _cli("dashboard", TOY, "--store", toy["store"], "--entity", "E", "--project", "P", "--publish",
             env={"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "x" * 40, "WANDB_MODE": "online",
                  "WANDB_HTTP_TIMEOUT": "5", "WANDB__NETWORK_BUFFER": "1"}, timeout=120)
    assert r.returncode == 6, r.stdout + r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("sweeper:")]
    assert len(err) == 1 and "could not publish to W&B: cannot reach http://127.0.0.1:9" in err[0], r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_missing_wandb_workspaces_is_one_line(toy):
    """Without wandb-workspaces: one line saying how to install it, exit 6, no traceback."""
    code = ("import sys; sys.modules['wandb_workspaces'] = None\n"  # as if not installed: its import fails
            "from sweeper.cli import main\n"
            f"sys.exit(main(['dashboard', {TOY!r}, '--store', {toy['store']!r}, '--entity', 'E', '--project', 'P', "
            f"'--json', {str(toy['base'] / 'never.json')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 6, r.stdout + r.stderr
    assert r.stderr.strip().count("\n") == 0 and "pip install 'wandb-workspaces==0.4.13'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (toy["base"] / "never.json").exists()
