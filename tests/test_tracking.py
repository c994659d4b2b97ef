"""W&B offline runs written by a sweep, read back from their .wandb files and compared with the store."""
import os

import pytest

from sweeper import tracking
from sweeper.cli import main
from sweeper.plan import build_plan
from sweeper.spec import load
from sweeper.store import Store

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


@pytest.fixture
def sweep_file(tmp_path):
    p = tmp_path / "wbtiny.yaml"
    p.write_text(SWEEP.replace("STORE", str(tmp_path / "store")))
    return p


def test_offline_runs_equal_store_metrics(sweep_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # must never be written anywhere
    assert main(["run", str(sweep_file), "--wandb", "offline", "--no-report"]) == 0
    plan = build_plan(load(sweep_file))
    store = Store(str(tmp_path / "store"))
    files = tracking.offline_run_files(store.local_path("wandb"))
    runs = {r["run"]["id"]: r for r in map(tracking.read_offline_run, files)}
    assert len(runs) == len(plan.nodes)
    for node in plan.nodes.values():
        run = runs[f"wbtiny-{node.key}"]
        assert run["run"]["group"] == "wbtiny" and run["run"]["job_type"] == node.stage
        assert run["config"]["key"] == node.key and run["config"]["kind"] == node.kind
        meta = store.load_meta(node.key)
        if node.kind == "train":
            assert run["config"]["train_set"] == "D" and run["config"]["arch"] == "small_cnn"
            logged = [(h["epoch"], h["train_loss"], h["test_acc"]) for h in run["history"]]
            stored = [(h["epoch"], h["train_loss"], h["test_acc"]) for h in meta["history"]]
            assert [v for r in logged for v in r] == pytest.approx([v for r in stored for v in r])
        elif node.kind == "synthesize":
            assert [h["shard/hit_rate"] for h in run["history"]] == pytest.approx(
                [m["hit_rate"] for m in meta["shard_meta"]])
        elif node.kind == "evaluate":
            assert run["summary"]["clean_acc"] == pytest.approx(meta["clean_acc"])
            assert run["summary"]["robust/" + meta["robust"][0]["attack"]] == pytest.approx(meta["robust"][0]["acc"])
    # the API key appears in no file sweeper or W&B wrote under the store
    for root, _, names in os.walk(tmp_path / "store"):
        for n in names:
            assert b"x" * 40 not in (open(os.path.join(root, n), "rb").read()), n


def test_disabled_writes_no_wandb_files(sweep_file, tmp_path):
    assert main(["run", str(sweep_file), "--wandb", "disabled", "--no-report"]) == 0
    assert not (tmp_path / "store" / "wandb").exists()


def test_wandb_failure_does_not_stop_the_sweep(sweep_file, tmp_path, monkeypatch, capsys):
    import wandb

    def broken_init(*a, **k):
        raise RuntimeError("simulated W&B outage")

    monkeypatch.setattr(wandb, "init", broken_init)
    assert main(["run", str(sweep_file), "--wandb", "offline", "--no-report"]) == 0
    assert "simulated W&B outage" in capsys.readouterr().err
    plan = build_plan(load(sweep_file))
    assert all(Store(str(tmp_path / "store")).is_done(k) for k in plan.nodes)
