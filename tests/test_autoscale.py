"""A sweep submitted as a Ray job to a cluster run by Ray's real autoscaler (v2, as `ray up` runs it), with
cluster.yaml's node types (tests/fakecluster.py): the head offers no CPU or GPU for work, so every synthesis
actor and Tune trial needs a worker node that the autoscaler launches on the sweep's demand and removes once it
is idle. The store is a real S3 API server on loopback; token authentication is on. Also: worker nodes killed
mid-synthesis and mid-training (a spot reclaim) are replaced and the sweep ends with a local run's results."""
import os
import sys
import threading
import time

import pytest

from fakecluster import AutoscalingCluster, Watcher, ray_status, wait_for
from sweeper.cli import main
from sweeper.sweep.plan import build_plan
from sweeper.sweep.spec import load
from sweeper.store.store import Store
from sweeps import SLOW, SMALL, results_of, wait_dashboard, write_sweep

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# SMALL, plus a second synthesis from the retrained model: between the two the pool is idle but alive, and must
# withdraw its autoscaler request by itself (not only when it shuts down after the last synthesis)
AUTO = SMALL.replace("synthesis_actors: 2", "synthesis_actors: auto") + """\
  d_det2: {kind: synthesize, from: train_d_det, method: relabel, size: 400, targets: deterministic,
           attack: {norm: l2, eps: 2.0, steps: 6, step_size: 0.5}}
"""
# synthesis long enough (24 shards) and training long enough (8 epochs) to lose a node in the middle of each
PREEMPT = (SLOW.replace("synthesis_actors: 2", "synthesis_actors: auto")
           .replace("max_concurrent_trials: 2", "max_concurrent_trials: 2, max_failures: 3")
           .replace("train: &t {epochs: 2", "train: &t {epochs: 8"))


@pytest.fixture
def autoscaling(s3_server, tmp_path):
    """The fake autoscaling cluster with its dashboard, and a watcher of the autoscaler's view."""
    cluster = AutoscalingCluster()
    try:
        cluster.start()
        token = open(os.environ["RAY_AUTH_TOKEN_PATH"]).read().strip()
        wait_dashboard(cluster.dashboard, token)
        watcher = Watcher(cluster.address, token)
        watcher.start()
        try:
            yield cluster, watcher
        finally:
            watcher.stop()
    finally:
        cluster.stop()


def _reference(tmp_path, text: str) -> dict:
    ref = write_sweep(tmp_path, "ref", text)
    assert main(["run", str(ref), "--executor", "local", "--threads", "1", "--no-report"]) == 0
    return results_of(ref)


def _submit(cluster, path, uri, capsys) -> str:
    """Submit as a user does (the sweep's text travels in the job; no working directory upload) and wait."""
    capsys.readouterr()
    rc = main(["submit", str(path), "--address", cluster.dashboard, "--store", uri, "--wait"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-6000:] + ray_status(cluster)
    return out.out.strip().splitlines()[-1]


def test_submitted_sweep_scales_workers_up_and_down(autoscaling, s3_server, tmp_path, monkeypatch, capsys):
    cluster, watcher = autoscaling
    want = _reference(tmp_path, AUTO)
    path = write_sweep(tmp_path, "auto", AUTO)
    uri = s3_server.uri()
    monkeypatch.chdir(tmp_path)  # any folder: nothing is uploaded
    assert watcher.alive() == []  # no worker before the sweep asks
    t0 = time.time()
    job = _submit(cluster, path, uri, capsys)
    assert main(["logs", job, "--address", cluster.dashboard]) == 0
    log = capsys.readouterr().out
    assert "ran 7 nodes" in log, log[-3000:]
    assert "0 CPU, 0 GPU, 1 node(s)" in log  # the job's driver started on a head that offers nothing for work
    assert results_of(path, uri) == want
    # the autoscaler launched worker nodes of cluster.yaml's types for the sweep, then removed them when idle
    types = set(cluster.config["available_node_types"]) - {"ray.head.default"}
    seen = dict(watcher.nodes)
    assert seen and {v["type"] for v in seen.values()} <= types, seen
    assert watcher.max_requested >= 2, watcher.requests  # the pool's request_resources reached autoscaler v2
    # asked for each synthesis and withdrawn after each: in between by the idle pool itself, while training ran
    asking = [n > 0 for _, n, _ in watcher.requests]
    phases = [a for i, a in enumerate(asking) if i == 0 or a != asking[i - 1]]
    assert phases[phases.index(True):] == [True, False, True, False], watcher.requests
    first_withdraw = next(b for t, n, b in watcher.requests[1:] if n == 0)
    assert first_withdraw >= 1, watcher.requests  # a node was still at work (the retraining)
    print(f"\nworker nodes: {sorted((v['type'], round(v['first'] - t0), round(v['last'] - t0)) for v in seen.values())}"
          f"\nrequests (s, bundles, busy nodes): {[(round(t - t0), n, b) for t, n, b in watcher.requests]}",
          file=sys.stderr)
    wait_for(lambda: not watcher.alive(), 120, "idle worker nodes to be removed")
    assert len(cluster.raylets()) == 1  # the head's only: the removed nodes' processes are gone


def test_spot_reclaim_mid_synthesis_and_mid_training(autoscaling, s3_server, tmp_path, monkeypatch, capsys):
    """A worker node running a synthesis actor is SIGKILLed after 3 of 24 shards are in the store, then every
    worker node (a reclaim wave) once a training trial has its first epoch checkpoint; the autoscaler launches
    new nodes and the sweep ends with the undisturbed results. (Killing only the trial's node is not enough to
    force a launch: the retried trial may fit on a surviving node with spare CPUs.)"""
    cluster, watcher = autoscaling
    want = _reference(tmp_path, PREEMPT)
    path = write_sweep(tmp_path, "preempt", PREEMPT)
    uri = s3_server.uri()
    plan = build_plan(load(path))
    synth = next(n for n in plan.nodes.values() if n.kind == "synthesize")
    retrain = next(n for n in plan.nodes.values() if n.kind == "train" and "data" in n.inputs)
    store = Store(uri)
    killed: list[tuple[str, int, float]] = []

    def reclaim(what: str, ready, title: str, every: bool) -> None:
        """Once ``ready()`` and a process titled ``title`` runs on a worker node, kill that node (``every``:
        every worker node, busy or not)."""
        deadline = time.time() + 600
        while time.time() < deadline:
            if ready():
                head = cluster.raylets()[0].pid
                nodes = {n.pid: n for n in map(cluster.node_of, cluster.processes(title=title))
                         if n is not None and n.pid != head}
                if nodes:
                    victims = cluster.raylets()[1:] if every else list(nodes.values())[:1]
                    for node in victims:
                        killed.append((what, cluster.kill_raylet(node), time.time()))
                    return
            time.sleep(0.1)

    def reclaims() -> None:
        reclaim("synthesis", lambda: len(store.shard_indices(synth.key, size=50)) >= 3, "SynthesisWorker", False)
        reclaim("training", lambda: bool(store.listdir(f"checkpoints/{retrain.key}")), "ray::ImplicitFunc", True)

    thread = threading.Thread(target=reclaims, daemon=True)
    thread.start()
    monkeypatch.chdir(tmp_path)
    job = _submit(cluster, path, uri, capsys)
    thread.join(timeout=5)
    assert [k[0] for k in killed][:2] == ["synthesis", "training"] and set(k[0] for k in killed[2:]) <= {
        "training"}, killed
    assert all(n >= 2 for _, n, _ in killed), killed  # a raylet and at least one worker process each
    assert main(["logs", job, "--address", cluster.dashboard]) == 0
    log = capsys.readouterr().out
    assert "were lost and replaced" in log, log[-4000:]
    assert f"Trial task failed for trial {retrain.label}-{retrain.key[:8]}" in log, log[-4000:]  # mid-training
    # the reclaim wave left no worker node: the retried trial ran on nodes the autoscaler launched after it
    wave = max(at for what, _, at in killed if what == "training")
    assert any(v["first"] > wave for v in watcher.nodes.values()), watcher.nodes
    assert sum(v["status"] == "DEAD" for v in watcher.nodes.values()) >= 2
    assert [m["index"] for m in store.load_meta(synth.key)["shard_meta"]] == list(range(24))
    assert results_of(path, uri) == want
    t0 = min(v["first"] for v in watcher.nodes.values())
    print(f"\nkilled (what, processes, s): {[(w, n, round(at - t0)) for w, n, at in killed]}\nworker nodes "
          f"(type, up, last alive, status): {sorted((v['type'], round(v['first'] - t0), round((v['last'] or t0) - t0), v['status']) for v in watcher.nodes.values())}"
          "\njob log lines about the loss:\n" + "\n".join(ln for ln in log.splitlines()
                                                        if any(w in ln.lower() for w in ("lost", "retr", "fail", "died", "error"))),
          file=sys.stderr)
