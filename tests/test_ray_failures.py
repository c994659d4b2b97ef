"""Failures on a real Ray cluster (`ray start`): the driver SIGKILLed mid-sweep, a Tune trial's process killed
mid-training (a worker node lost mid-synthesis is in test_cluster_s3.py, with the store on S3). Both must
finish with exactly the results of an undisturbed run, writing no finished work twice."""
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from sweeper.cli import main
from sweeper.sweep.plan import build_plan
from sweeper.sweep.spec import load
from sweeper.store.store import Store
from sweeps import LONG_TRAIN, SLOW, RayCluster, results_of, write_sweep

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    """Results of the SLOW sweep run in one process, undisturbed."""
    path = write_sweep(tmp_path_factory.mktemp("undisturbed"), "ref", SLOW)
    assert main(["run", str(path), "--executor", "local", "--threads", "1", "--no-report"]) == 0
    return results_of(path)


@pytest.fixture
def cluster():
    c = RayCluster()
    try:
        yield c
    finally:
        c.stop()


def _synth(path):
    plan = build_plan(load(path))
    return plan, next(n for n in plan.nodes.values() if n.kind == "synthesize"), Store(load(path).run.store)


def _stats(root) -> dict:
    """(inode, mtime) of every file under a directory: a file written again gets a new inode."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(d, f))
            out[os.path.join(d, f)] = (st.st_ino, st.st_mtime_ns)
    return out


@pytest.mark.slow  # in make test-slow (CI runs it after make test): keeps make test within 15 min on 2 cores
def test_driver_sigkill_then_same_command_resumes(cluster, undisturbed, tmp_path, capsys):
    address = cluster.start_head(num_cpus=2)
    path = write_sweep(tmp_path, "killed", SLOW)
    plan, synth, store = _synth(path)
    cmd = [sys.executable, "-m", "sweeper.cli", "run", str(path), "--address", address, "--no-report"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while len(store.shard_indices(synth.key, size=50)) < 3:  # in the middle of the synthesis node (24 shards)
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before it could be killed:\n{proc.stdout.read()[-3000:]}")
        assert time.time() < deadline, "no shard written in 300 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    time.sleep(2)  # let Ray reap the dead driver's actors; a shard they finish meanwhile is kept, not redone
    shards_before = store.shard_indices(synth.key, size=50)
    assert 3 <= len(shards_before) < 24, shards_before
    # each shard's write attempt id: a shard computed again would be a new attempt
    attempts_before = {i: store.load_shard(synth.key, i, size=50)[1]["attempt"] for i in shards_before}
    done_before = [k for k in plan.nodes if store.is_done(k)]
    assert plan.nodes[synth.inputs["source"]].key in done_before  # the source model finished before the kill
    files_before = {}
    for k in done_before:
        files_before.update(_stats(store.path("nodes", k)))

    capsys.readouterr()
    assert main(["run", str(path), "--address", address, "--no-report"]) == 0
    out = capsys.readouterr().out
    assert f"ran {len(plan.nodes) - len(done_before)} nodes, skipped {len(done_before)}" in out
    merged = store.load_meta(synth.key)["shard_meta"]
    assert [m["index"] for m in merged] == list(range(24))
    assert {i: merged[i]["attempt"] for i in shards_before} == attempts_before, "a finished shard was redone"
    assert not os.path.exists(store.path("shards", synth.key))  # removed after the merge
    files_after = {}
    for k in done_before:
        files_after.update(_stats(store.path("nodes", k)))
    rewritten = [f for f, st in files_before.items() if files_after.get(f) != st]
    assert not rewritten, f"finished work was written again: {rewritten[:5]}"
    assert results_of(path) == undisturbed


@pytest.mark.slow  # in make test-slow (CI runs it after make test): keeps make test within 15 min on 2 cores
def test_trial_process_killed_mid_training_is_retried_from_its_checkpoint(cluster, tmp_path, capsys):
    """The Tune trial's worker process is SIGKILLed after an epoch checkpoint: Tune's FailureConfig retries
    the trial, which continues from the checkpoint (no epoch reported twice) and ends with the undisturbed
    run's model."""
    import psutil

    ref = write_sweep(tmp_path, "ref", LONG_TRAIN)
    assert main(["run", str(ref), "--executor", "local", "--threads", "1", "--no-report"]) == 0
    address = cluster.start_head(num_cpus=2)
    path = write_sweep(tmp_path, "killed", LONG_TRAIN)
    plan = build_plan(load(path))
    std = next(n for n in plan.nodes.values() if n.kind == "train")
    store = Store(load(path).run.store)
    killed = []

    def kill_trial_after_a_checkpoint():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            if store.listdir(f"checkpoints/{std.key}"):  # an epoch checkpoint exists
                # only this cluster's trial processes: a user's sweep running beside the tests keeps its trials
                for p in cluster.processes(title="ray::ImplicitFunc"):
                    try:
                        p.kill()
                        killed.append(p.pid)
                    except psutil.NoSuchProcess:
                        pass
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_trial_after_a_checkpoint, daemon=True)
    watcher.start()
    assert main(["run", str(path), "--address", address, "--no-report"]) == 0
    watcher.join(timeout=5)
    assert killed, "no trial process was found to kill"
    # Tune's own record of the trial: reported epochs never repeat, so the retry resumed from the checkpoint
    rows = [json.loads(line) for f in glob.glob(store.path("tune", "*", "*", "result.json"))
            for line in open(f) if '"epoch"' in line]
    epochs = [r["epoch"] for r in rows]
    assert epochs[-1] == 6 and len(epochs) == len(set(epochs)) and epochs == sorted(epochs), epochs
    errors = [open(f).read() for f in glob.glob(store.path("tune", "*", "*", "error.txt"))]
    assert len(errors) == 1 and "Failure # 1" in errors[0] and "actor died" in errors[0], errors  # retried once
    assert results_of(path) == results_of(ref)
