"""Ctrl-C and SIGTERM stop `sweeper run` promptly at any point with 130 / 143 and a line saying how to resume;
nothing looks finished unless it is, and the same command then completes the sweep.

Run 1 gets Ctrl-C (SIGINT to its process group, as a terminal sends it) during synthesis, after a first wave of
Tune trials (Ray Tune used to leave its own SIGINT handler installed, which swallowed it); run 2 gets SIGTERM in
the middle of a Tune training trial; run 3 completes."""
import os
import signal
import subprocess
import sys
import time

import pytest

from sweeper.sweep.plan import build_plan
from sweeper.sweep.spec import load
from sweeper.store.store import Store
from sweeps import SLOW, write_sweep

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # ~75 s; .ci/run runs the slow tests after `make test`

# SLOW, with a retraining long enough (6 epochs) to be interrupted in the middle
SWEEP = SLOW.replace("train_d_det: {kind: train, from: d_det, arch: small_cnn, train: *t}",
                     "train_d_det: {kind: train, from: d_det, arch: small_cnn, "
                     "train: {epochs: 6, batch_size: 64, optimizer: sgd, lr: 0.05, schedule: cosine}}")


def _start(path):
    cmd = [sys.executable, "-m", "sweeper.cli", "run", str(path), "--no-report"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(proc, cond, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended before {what}:\n{out[-2000:]}\n{err[-2000:]}")
        assert time.time() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.05)


def _stopped(proc, timeout: float = 60):
    t0 = time.time()
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, time.time() - t0, out, err


def test_ctrl_c_and_sigterm_stop_the_run_and_the_same_command_resumes(tmp_path):
    assert SWEEP != SLOW
    path = write_sweep(tmp_path, "intr", SWEEP)
    plan = build_plan(load(path))
    store = Store(load(path).run.store)
    synth = next(n for n in plan.nodes.values() if n.kind == "synthesize")
    retrain = next(n for n in plan.nodes.values() if n.stage == "train_d_det")

    proc = _start(path)
    _wait_for(proc, lambda: len(store.shard_indices(synth.key, size=50)) >= 2, "synthesis shards")
    os.killpg(proc.pid, signal.SIGINT)
    code, dt, out, err = _stopped(proc)
    assert code == 130, (code, out[-2000:], err[-2000:])
    assert dt < 30, f"took {dt:.0f} s to stop"
    assert "interrupted (SIGINT)" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    assert not store.is_done(synth.key) and "ran " not in out

    proc = _start(path)
    _wait_for(proc, lambda: bool(store.listdir(f"checkpoints/{retrain.key}")), "retraining checkpoint")
    os.kill(proc.pid, signal.SIGTERM)
    code, dt, out, err = _stopped(proc)
    assert code == 143, (code, out[-2000:], err[-2000:])
    assert dt < 30, f"took {dt:.0f} s to stop"
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert store.is_done(synth.key) and not store.is_done(retrain.key)

    proc = _start(path)
    code, _, out, err = _stopped(proc, timeout=600)
    assert code == 0, (out[-2000:], err[-2000:])
    assert all(store.is_done(k, verify=True) for k in plan.nodes)
