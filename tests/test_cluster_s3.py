"""Two Ray nodes that share no folder (each started from its own folder, with its own --temp-dir), the store on
a real S3 API server: the sweep completes with the results of a local run and writes nothing to local disk;
W&B runs of trials on either node end up in the bucket; losing the worker node mid-synthesis costs only its
shards."""
import os
import threading
import time

import pytest

from sweeper.cli import main
from sweeper.sweep.plan import build_plan
from sweeper.sweep.spec import load
from sweeper.store.store import Store
from sweeper.report.tracking import download_runs
from sweeps import SLOW, SMALL, RayCluster, results_of, write_sweep

pytestmark = pytest.mark.ray


@pytest.fixture
def two_nodes(tmp_path):
    """A head and a worker node, 1 CPU each, started from different folders with different temp dirs."""
    import tempfile

    folders = {name: tmp_path / name for name in ("head", "worker", "driver")}
    for f in folders.values():
        f.mkdir()
    c = RayCluster()
    try:
        address = c.start_head(num_cpus=1, cwd=folders["head"])
        port = c.add_node(num_cpus=1, cwd=folders["worker"],
                          temp_dir=tempfile.mkdtemp(prefix="rw-"))
        yield c, address, port, folders
    finally:
        c.stop()


def _reference(tmp_path, text):
    ref = write_sweep(tmp_path, "ref", text)
    assert main(["run", str(ref), "--executor", "local", "--threads", "1", "--no-report"]) == 0
    return results_of(ref)


def test_two_nodes_without_a_shared_disk(two_nodes, s3_server, tmp_path, monkeypatch, capsys):
    cluster, address, _, folders = two_nodes
    want = _reference(tmp_path, SMALL)
    path = write_sweep(tmp_path, "onS3", SMALL)  # its run.store (a local folder) is overridden by --store
    uri = s3_server.uri()
    monkeypatch.chdir(folders["driver"])
    capsys.readouterr()
    assert main(["run", str(path), "--address", address, "--store", uri, "--wandb", "offline"]) == 0
    out = capsys.readouterr().out
    assert "2 node(s)" in out
    assert results_of(path, uri) == want
    assert not (tmp_path / "onS3").exists()
    for name, folder in folders.items():
        assert list(folder.iterdir()) == [], f"{name}'s folder got {list(folder.iterdir())}"
    # one offline W&B run per node of the plan, plus the report's, all in the bucket whichever node ran them
    runs = download_runs(Store(uri), str(tmp_path / "runs"))
    plan = build_plan(load(path))
    assert sorted(os.path.basename(r).split("-", 3)[3] for r in runs) == sorted(
        [f"small-{k}" for k in plan.nodes] + ["small-report"])


@pytest.mark.slow  # in make test-slow (CI runs it after make test): keeps make test within 15 min on 2 cores
def test_worker_node_lost_mid_synthesis_on_s3(two_nodes, s3_server, tmp_path, monkeypatch, capsys):
    """The pool's two actors sit one per node. The worker node is SIGKILLed (raylet and every process under it)
    in the middle of synthesis; the sweep completes on the head with the undisturbed results."""
    cluster, address, port, folders = two_nodes
    want = _reference(tmp_path, SLOW)
    path = write_sweep(tmp_path, "nodelost", SLOW)
    uri = s3_server.uri()
    plan = build_plan(load(path))
    synth = next(n for n in plan.nodes.values() if n.kind == "synthesize")
    store = Store(uri)
    killed = []

    def kill_when_midway():
        deadline = time.time() + 300
        while time.time() < deadline:
            if len(store.shard_indices(synth.key, size=50)) >= 3:
                killed.append(cluster.kill_node(port))
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_when_midway, daemon=True)
    watcher.start()
    monkeypatch.chdir(folders["driver"])
    capsys.readouterr()
    assert main(["run", str(path), "--address", address, "--store", uri, "--no-report"]) == 0
    watcher.join(timeout=5)
    out = capsys.readouterr().out
    assert killed and killed[0] >= 2, killed  # the raylet and at least one worker process
    assert "were lost and replaced" in out, out[-3000:]
    assert [m["index"] for m in store.load_meta(synth.key)["shard_meta"]] == list(range(24))
    assert results_of(path, uri) == want
    assert list(folders["driver"].iterdir()) == []
