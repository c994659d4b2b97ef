"""Node leases: drivers sharing a store (local disk or S3) compute every node exactly once between them; a lease
left by a dead driver expires and is taken over; W&B gets one offline run per node."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from sweeper.cli import main
from sweeper.sweep.plan import build_plan
from sweeper.sweep.spec import load
from sweeper.store.leases import Leases
from sweeper.store.store import Store
from sweeps import results_of

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOY = ROOT / "search_spaces" / "toy.yaml"
SWEEPER = os.path.join(os.path.dirname(sys.executable), "sweeper")
PLAN = build_plan(load(TOY))
STARTED = re.compile(r"^\[\d+/\d+\] \S+\s+\S+ \(([0-9a-f]{16})\) \.\.\.$", re.M)  # "[2/8] train  robust (key) ..."


def _ran(out: str) -> int:
    m = re.search(r"ran (\d+) nodes", out)
    assert m, out
    return int(m.group(1))


def _drivers(n: int, store: str, cwd, *extra: str, env: dict | None = None):
    cmd = [SWEEPER, "run", str(TOY), "--store", store, "--executor", "local", "--threads", "1", "--no-report",
           *extra]
    procs = [subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, **(env or {})}) for _ in range(n)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    return [p.returncode for p in procs], outs


# ------------------------------------------------------------------------------------------ the lease itself
def test_one_owner_among_drivers_racing_for_a_node(store_uri):
    """Four drivers write their lease on the same node at the same moment: all read back the same owner."""
    store = Store(store_uri)
    for round_ in range(3 if store.is_local else 2):
        leases = [Leases(Store(store_uri), ttl=60) for _ in range(4)]
        barrier = threading.Barrier(4)
        got = [None] * 4

        def take(i):
            barrier.wait()
            got[i] = leases[i].acquire([f"k{round_}"])

        threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        winners = [i for i in range(4) if got[i]]
        assert len(winners) == 1, got
        doc = json.loads(store.read_bytes(f"leases/k{round_}.json"))
        assert doc["owner"] == leases[winners[0]].owner and doc["pid"] == os.getpid()
        for lease in leases:
            lease.close()
        assert not store.exists(f"leases/k{round_}.json")  # released by its owner, left alone by the others


def test_a_live_lease_is_respected_an_expired_one_taken_over_and_renewed_while_held(store_uri):
    store = Store(store_uri)
    a = Leases(store, ttl=1.5, settle=0.05)
    b = Leases(Store(store_uri), ttl=1.5, settle=0.05, poll=0.1)
    assert a.acquire(["k"]) == ["k"]
    first = json.loads(store.read_bytes("leases/k.json"))["expires"]
    time.sleep(2.5)  # past the ttl: only the heartbeat (every ttl/3) keeps it alive
    assert json.loads(store.read_bytes("leases/k.json"))["expires"] > first
    assert b.acquire(["k"]) == [] and b.holder("k").endswith(f"pid {os.getpid()}")
    a._stop.set()  # a's driver dies: no more renewals, no release
    a._thread.join()
    time.sleep(1.7)
    assert b.acquire(["k"]) == ["k"]
    b.close()
    assert not store.exists("leases/k.json")


def test_requests_per_lease_on_s3(s3_uri, s3_server):
    store = Store(s3_uri)
    store.claim()
    leases = Leases(store, ttl=60)
    s3_server.requests(reset=True)
    assert leases.acquire(["k"]) == ["k"]
    taken = s3_server.requests(reset=True)
    leases.release("k")
    released = s3_server.requests(reset=True)
    print("requests: take", taken, "release", released)
    assert sum(taken.values()) + sum(released.values()) <= 10, (taken, released)
    leases.close()


# ------------------------------------------------------------------------------------------ whole sweeps
def test_two_drivers_compute_every_node_once(tmp_path):
    """Two `sweeper run` at once on one local store: each node is computed by exactly one of them (counted
    from both outputs), both exit 0, and the results equal a single undisturbed run. On S3: test_s3.py."""
    store = str(tmp_path / "store")
    ref = str(tmp_path / "ref")
    assert main(["run", str(TOY), "--store", ref, "--executor", "local", "--threads", "1", "--no-report"]) == 0
    codes, outs = _drivers(2, store, tmp_path, "--wandb", "disabled")
    assert codes == [0, 0], outs
    started = [k for out in outs for k in STARTED.findall(out)]
    assert sorted(started) == sorted(PLAN.nodes), outs  # every node once, in total
    assert sum(_ran(out) for out in outs) == len(PLAN.nodes), outs
    assert results_of(TOY, store) == results_of(TOY, ref)
    assert not [i for i in Store(store).listdir("leases") if i.base_name.endswith(".json")]  # all released


def test_two_drivers_write_one_wandb_offline_run_per_node(tmp_path):
    store = tmp_path / "store"
    codes, outs = _drivers(2, str(store), tmp_path, "--wandb", "offline")
    assert codes == [0, 0], outs
    runs = sorted(p.name for p in (store / "wandb" / "wandb").glob("offline-run-*"))
    ids = sorted(r.split("-", 3)[3] for r in runs)  # offline-run-<date>_<time>-<id>
    assert ids == sorted(f"toy-{k}" for k in PLAN.nodes), runs


def test_a_dead_drivers_lease_does_not_block(tmp_path):
    """A driver killed (SIGKILL) in the middle of a node leaves its lease. On the same machine the next driver
    sees that its pid is gone and takes the node over at once; a lease from another machine is waited for until
    it expires (SWEEPER_LEASE_TTL=5 here), then taken over."""
    store = str(tmp_path / "store")
    env = {**os.environ, "SWEEPER_LEASE_TTL": "5", "SWEEPER_LEASE_POLL": "0.5"}
    cmd = [SWEEPER, "run", str(TOY), "--store", store, "--executor", "local", "--threads", "1", "--no-report",
           "--wandb", "disabled"]
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env)
    line = ""
    while not STARTED.match(line.rstrip("\n")):
        line = first.stdout.readline()
        assert line, "the first driver ended before starting a node"
    key = STARTED.match(line.rstrip("\n")).group(1)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    s = Store(store)
    lease = json.loads(s.read_bytes(f"leases/{key}.json"))
    assert lease["pid"] == first.pid and not s.is_done(key)
    # the same lease as if written on another machine: its pid cannot be checked from here
    s.write_text(f"leases/{key}.json", json.dumps({**lease, "host": "elsewhere", "expires": time.time() + 5}))
    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"leased by another driver (elsewhere pid {first.pid})" in second.stdout, second.stdout
    assert key in STARTED.findall(second.stdout) and _ran(second.stdout) == len(PLAN.nodes)

    for k in PLAN.nodes:  # again, the dead driver's own lease on this machine: no waiting at all
        s.delete(f"nodes/{k}")
    s.write_text(f"leases/{key}.json", json.dumps({**lease, "expires": time.time() + 3600}))
    third = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "leased by another driver" not in third.stdout and _ran(third.stdout) == len(PLAN.nodes)


def test_an_expired_lease_on_s3_is_taken_over_at_once(s3_uri, capsys):
    """Leases of a driver long gone (expired) on every node: the run does not wait for any of them."""
    s = Store(s3_uri)
    s.claim()  # as the dead driver did
    for key in PLAN.nodes:
        s.write_text(f"leases/{key}.json", json.dumps({"owner": "gone", "host": "elsewhere", "pid": 1,
                                                       "expires": time.time() - 3600, "ttl": 180}))
    t0 = time.time()
    assert main(["run", str(TOY), "--store", s3_uri, "--executor", "local", "--threads", "1", "--no-report",
                 "--wandb", "disabled"]) == 0
    out = capsys.readouterr().out
    assert _ran(out) == len(PLAN.nodes) and "leased by another driver" not in out
    assert not [i for i in s.listdir("leases") if i.base_name.endswith(".json")]
    print(f"run over expired leases: {time.time() - t0:.1f} s")


@pytest.mark.ray
@pytest.mark.slow  # in make test-slow (CI runs it after make test): keeps make test within 15 min on 2 cores
def test_a_ray_driver_and_a_local_driver_share_the_work(tmp_path):
    """`sweeper run` on Ray (leases taken in batches, for the nodes about to start) and an in-process driver
    started once the Ray driver has taken its first leases: between them every node once, the same results as a
    single run."""
    store = str(tmp_path / "store")
    ref = str(tmp_path / "ref")
    assert main(["run", str(TOY), "--store", ref, "--executor", "local", "--threads", "1", "--no-report"]) == 0
    env = {**os.environ, "SWEEPER_LEASE_POLL": "1"}
    base = [SWEEPER, "run", str(TOY), "--store", store, "--no-report", "--wandb", "disabled"]
    ray_driver = subprocess.Popen(base, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=env)
    lines = []
    while not any(line.startswith("scheduler:") for line in lines):
        lines.append(ray_driver.stdout.readline())
        assert lines[-1], "".join(lines)
    local = subprocess.run(base + ["--executor", "local", "--threads", "1"], cwd=tmp_path, capture_output=True,
                           text=True, env=env, timeout=600)
    ray_out = "".join(lines) + ray_driver.communicate(timeout=600)[0]
    assert ray_driver.returncode == 0 and local.returncode == 0, (ray_out, local.stdout, local.stderr)
    assert _ran(ray_out) + _ran(local.stdout) == len(PLAN.nodes), (ray_out, local.stdout)
    assert "leased by another driver" in local.stdout, local.stdout  # the first batch was the Ray driver's
    assert results_of(TOY, store) == results_of(TOY, ref)
    print(ray_out, local.stdout, sep="\n")
