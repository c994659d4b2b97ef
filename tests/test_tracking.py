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
        elif node.kind == "evaluate":
            assert run["summary"]["clean_acc"] == pytest.approx(meta["clean_acc"])
            assert run["summary"]["robust/" + meta["robust"][0]["attack"]] == pytest.approx(meta["robust"][0]["acc"])
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
