"""W&B offline runs written by a sweep, read back with wandb's own reader and compared with the store; Tune's
experiment folders read back with Tune's own ExperimentAnalysis."""
import glob
import json
import os
import subprocess
import sys

import pytest

from sweeper.cli import main
from sweeper.sweep.plan import build_plan
from sweeper.sweep.spec import load
from sweeper.store.store import Store

SWEEP = """
name: wbtiny
seed: 0
data: {dataset: fashion_mnist, test_size: 200}
run: {store: STORE, shard_size: 100}
stages:
  std:
    kind: train
    arch: small_cnn
    train_size: 500
    train: {epochs: 2, batch_size: 128, optimizer: sgd, lr: 0.05, schedule: cosine}
  d_det: {kind: synthesize, from: std, method: relabel, size: 200, targets: deterministic,
          attack: {norm: l2, eps: 2.0, steps: 3, step_size: 0.5}}
  eval: {kind: evaluate, from: [std], attacks: [{norm: l2, eps: 1.0, steps: 3}]}
"""
WANDB = os.path.join(os.path.dirname(sys.executable), "wandb")


def read_offline_run(run_dir: str) -> dict:
    """{"run": {id, name, group, job_type, tags}, "config", "history": [...], "summary", "console": [lines]} of
    one offline W&B run, as wandb's own reader prints its records (`wandb leet inspect --json`)."""
    out = subprocess.run([WANDB, "leet", "inspect", "--json", run_dir], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    run = {"run": {}, "config": {}, "history": [], "summary": {}, "console": []}
    for line in out.splitlines():
        rec = json.loads(line)
        kind, body = rec["type"], rec.get(rec["type"], {})
        if kind == "run":
            run["run"] = {"id": body["run_id"], "name": body.get("display_name"), "group": body.get("run_group"),
                          "job_type": body.get("job_type"), "tags": body.get("tags", [])}
            run["config"].update(body.get("config", {}).get("update", {}))
        elif kind == "config":
            run["config"].update(body.get("update", {}))
        elif kind == "history":
            run["history"].append(body["item"])
        elif kind == "summary":
            run["summary"].update(body.get("update", {}))
        elif kind in ("output_raw", "output"):
            run["console"].append(body["line"])
    return run


@pytest.fixture
def sweep_file(tmp_path):
    p = tmp_path / "wbtiny.yaml"
    p.write_text(SWEEP.replace("STORE", str(tmp_path / "store")))
    return p


def test_offline_runs_equal_store_metrics(sweep_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # must never be written anywhere
    # a process of its own, as a user runs it: wandb hooks the console once per process, at its import, which
    # in a pytest process may have happened under another test's captured stdout
    r = subprocess.run([sys.executable, "-m", "sweeper", "run", str(sweep_file), "--wandb", "offline"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    plan = build_plan(load(sweep_file))
    store = Store(str(tmp_path / "store"))
    dirs = sorted(glob.glob(os.path.join(store.local_path("wandb"), "wandb", "offline-run-*")))
    runs = {r["run"]["id"]: r for r in map(read_offline_run, dirs)}
    # the sweep's report run: the report's results table (as written to results.json) and its figures
    report = runs.pop("wbtiny-report")
    assert report["run"]["job_type"] == "report" and report["run"]["group"] == "wbtiny"
    logged = {k.split(".")[0] for h in report["history"] for k in h}  # media are logged as {key}.{field}
    assert {"results", "figure2", "table1"} <= logged, logged
    table = glob.glob(os.path.join(next(d for d in dirs if d.endswith("wbtiny-report")), "files", "media", "table",
                                   "results_*.table.json"))
    rows = json.loads(store.read_bytes("reports/wbtiny/results.json"))
    evals = sum(n.kind == "evaluate" for n in plan.nodes.values())
    assert len(table) == 1 and len(json.load(open(table[0]))["data"]) == len(rows) == evals
    assert len(runs) == len(plan.nodes)
    assert len({r["run"]["name"] for r in runs.values()}) == len(runs)  # unique names: the nodes' labels
    for node in plan.nodes.values():
        run = runs[f"wbtiny-{node.key}"]
        assert run["run"]["group"] == "wbtiny" and run["run"]["job_type"] == node.kind
        assert run["run"]["name"] == node.label and {"wbtiny", node.kind} <= set(run["run"]["tags"])
        assert run["config"]["key"] == node.key and run["config"]["kind"] == node.kind
        assert run["config"]["label"] == node.label and run["config"]["train_set"] == plan.train_set(node)
        params = run["config"]["params"]  # the node's settings under the sweep file's key names
        assert "from_" not in params and "from" in params
        # its console: the line that sums the node up, whichever process ran it
        assert any(node.label in line for line in run["console"]), run["console"]
        meta = store.load_meta(node.key)
        if node.kind == "train":
            assert run["config"]["train_set"] == "D" and run["config"]["arch"] == "small_cnn"
            cols = ("epoch", "train_loss", "train_acc", "test_acc", "robust_acc", "lr", "images_per_s")
            logged = [[h[c] for c in cols] for h in run["history"]]
            stored = [[h[c] for c in cols] for h in meta["history"]]
            assert len(logged) == 2 and [v for r in logged for v in r] == pytest.approx([v for r in stored for v in r])
            # the robust curve uses the sweep's evaluation attack (eval's first), on a fixed test subset
            assert run["config"]["robust_curve"]["attack"]["eps"] == 1.0
            assert meta["robust_curve"] == {"attack": "l2_eps1_s3", "size": 100, "every": 1}
            assert run["config"]["seed"] == 0
        elif node.kind == "synthesize":
            # shards finish in any order on the actor pool; each logs its index
            logged = sorted((h["shard/index"], h["shard/hit_rate"]) for h in run["history"])
            assert [i for i, _ in logged] == [m["index"] for m in meta["shard_meta"]] == [0, 1]
            assert [r for _, r in logged] == pytest.approx([m["hit_rate"] for m in meta["shard_meta"]])
            assert all(h["shard/images_per_s"] > 0 and h["shard/attack_loss"] > 0 for h in run["history"])
            assert run["summary"]["hit_rate"] == pytest.approx(meta["hit_rate"])
            assert (run["config"]["norm"], run["config"]["eps"], "l2") == ("l2", 2.0, run["run"]["tags"][-1])
        elif node.kind == "evaluate":
            assert run["summary"]["clean_acc"] == pytest.approx(meta["clean_acc"])
            # results.csv's column robust_acc[l2_eps1_s3], under its W&B name (tracking.wandb_name)
            assert run["summary"]["robust_acc/" + meta["robust"][0]["attack"]] == pytest.approx(meta["robust"][0]["acc"])
            assert [h["eps"] for h in run["history"]] == [0.0, 1.0]  # accuracy against eps: clean, then the ball
            assert meta["robust"][0]["attack"] == "l2_eps1_s3" and run["config"]["attacks"] == ["l2_eps1_s3"]
    # Tune's experiments read back with Tune alone: a trial per train/evaluate node, its folder named from the
    # node's label, its config the node's readable settings beside its key
    from ray.tune import ExperimentAnalysis

    trials = {}
    for exp in sorted(glob.glob(str(tmp_path / "store" / "tune" / "wbtiny-*"))):
        for _, row in ExperimentAnalysis(exp).dataframe().iterrows():
            trials[row["config/key"]] = (exp, row)
    assert set(trials) == {k for k, n in plan.nodes.items() if n.kind in ("train", "evaluate")}
    for key, (exp, row) in trials.items():
        node, about = plan.nodes[key], plan.describe(plan.nodes[key])
        assert (row["config/label"], row["config/kind"], row["config/train_set"], row["config/arch"]) == (
            node.label, node.kind, about["train_set"], about["arch"])
        assert os.path.isdir(os.path.join(exp, f"{node.label}-{key[:8]}"))
        if node.kind == "evaluate":
            assert (row["config/norm"], row["config/eps"], row["config/steps"]) == ("l2", 1.0, 3)
            assert row["clean_acc"] == pytest.approx(store.load_meta(key)["clean_acc"])
        else:
            assert row["test_acc"] == pytest.approx(store.load_meta(key)["test_acc"])
    # the API key appears in no file sweeper or W&B wrote under the store
    for root, _, names in os.walk(tmp_path / "store"):
        for n in names:
            assert b"x" * 40 not in (open(os.path.join(root, n), "rb").read()), n


@pytest.mark.slow  # ~130 s (W&B's own retries); .ci/run runs the slow tests after `make test`
def test_wandb_failure_keeps_results_and_disabled_writes_nothing(sweep_file, tmp_path, monkeypatch, capsys):
    """W&B made to fail in every process (online mode, a bad key, an address that refuses connections): the
    sweep completes and its results equal those of a run with W&B disabled, which writes no W&B files."""
    from sweeps import results_of

    disabled = tmp_path / "disabled.yaml"
    disabled.write_text(sweep_file.read_text().replace(str(tmp_path / "store"), str(tmp_path / "store_disabled")))
    assert main(["run", str(disabled), "--wandb", "disabled", "--no-report"]) == 0
    assert not (tmp_path / "store_disabled" / "wandb").exists()

    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "5")
    capsys.readouterr()
    assert main(["run", str(sweep_file), "--wandb", "online", "--no-report"]) == 0
    out = capsys.readouterr()
    # the driver's own runs warn on stderr; a failing trial's warning is forwarded to the driver's output
    assert "W&B could not start" in out.err
    assert "sweeper: warning: std: W&B could not start" in out.out + out.err
    assert results_of(sweep_file) == results_of(disabled)
