"""Streaming on a real Ray: a node starts when its own inputs are done, not when its wave is; the synthesis pool
grows when a node joins the cluster mid-run (its shards then run on the new node too)."""
import glob
import json
import re
import threading
import time

import pytest

from sweeper.run.engines import run_plan_ray
from sweeper.sweep.plan import build_plan
from sweeper.sweep.spec import loads
from sweeper.store.store import Store
from sweeps import SMALL, RayCluster

pytestmark = pytest.mark.ray

# two independent relabelled sets of the same source: a short one (1 shard) and a long one (12 shards), and a
# training on each; in wave order the short set's training waits for the long set
TWO = (SMALL.replace("  train_d_det: {kind: train, from: d_det, arch: small_cnn, train: *t}\n",
                     "  train_d_det: {kind: train, from: d_det, arch: small_cnn, train: *t}\n"
                     "  d_long: {kind: synthesize, from: std, method: relabel, size: 1200, targets: random,\n"
                     "           attack: {norm: l2, eps: 2.0, steps: 10, step_size: 0.5}}\n"
                     "  train_long: {kind: train, from: d_long, arch: small_cnn, train: *t}\n")
       .replace("size: 300, targets", "size: 100, targets"))


def _plan(tmp_path, text):
    return build_plan(loads(text.replace("STORE", str(tmp_path / "store")))), Store(str(tmp_path / "store"))


@pytest.mark.slow  # in make test-slow (CI runs it after make test): keeps make test within 15 min on 2 cores
def test_a_training_starts_while_an_unrelated_synthesis_of_its_wave_still_runs(tmp_path):
    assert TWO != SMALL and "d_long" in TWO
    plan, store = _plan(tmp_path, TWO)
    counts = run_plan_ray(plan, store, num_cpus=2, wandb_mode="disabled", log=print)
    t = {plan.nodes[k].stage: v for k, v in counts["timeline"].items()}
    assert counts["ran"] == len(plan.nodes)
    # the short set's training started before the long set (same depth) ended; wave order cannot do that
    assert t["train_d_det"][0] < t["d_long"][1], t
    # Tune pickles a trial's name creators and resource function into the trial and its saved state: none may
    # carry the sweep's other nodes (a closure over them made the cost of each trial grow with the sweep's size)
    states = _trial_states(tmp_path / "store")
    assert len(states) == sum(1 for n in plan.nodes.values() if n.kind in ("train", "evaluate"))
    for state in states:
        pickled = b"".join(bytes.fromhex(h) for h in re.findall(r'"value": ?"([0-9a-f]{16,})"', state))
        assert pickled and not [k for k in plan.nodes if k.encode() in pickled], state[:300]


def _trial_states(store_root) -> list[str]:
    """Each Tune trial's saved state (JSON text) from the experiment states under ``<store>/tune``."""
    out = []
    for path in glob.glob(str(store_root / "tune" / "*" / "experiment_state-*.json")):
        with open(path) as f:
            out += [t[0] for t in json.load(f)["trial_data"]]
    return out


@pytest.mark.slow
def test_the_synthesis_pool_grows_when_a_node_joins(tmp_path):
    """A head with 1 CPU: the pool starts with one actor; a worker node with 2 CPUs joins while the long set is
    synthesized, and shards then also run in actors on the new node."""
    import ray

    text = TWO.replace("synthesis_actors: 2", "synthesis_actors: auto").replace("steps: 10, step_size",
                                                                                "steps: 40, step_size")
    plan, store = _plan(tmp_path, text)
    long = next(n for n in plan.nodes.values() if n.stage == "d_long")
    cluster = RayCluster()
    try:
        address = cluster.start_head(num_cpus=1)
        joined = []

        def join_when_synthesis_runs():
            deadline = time.time() + 300
            while time.time() < deadline and not store.shard_indices(long.key, size=100):
                time.sleep(0.2)
            cluster.add_node(num_cpus=2)
            joined.append(time.time())

        requests, running = [], threading.Event()

        def watch_autoscaler_requests():  # what an autoscaler would read: the cluster's standing request
            running.set()
            while running.is_set():
                if ray.is_initialized():
                    try:
                        got = _standing_request()
                    except Exception:
                        if ray.is_initialized():
                            raise
                        break  # the run shut its Ray connection down between the check and the read
                    if got is not None and (not requests or requests[-1][1] != got):
                        requests.append((time.time(), got))
                time.sleep(0.1)

        t = threading.Thread(target=join_when_synthesis_runs, daemon=True)
        t.start()
        w = threading.Thread(target=watch_autoscaler_requests, daemon=True)
        w.start()
        counts = run_plan_ray(plan, store, address=address, wandb_mode="disabled", log=print)
        running.clear()
        w.join(5)
        t.join(5)
        nodes_used = {m["worker"]["ray_node"] for m in store.load_meta(long.key)["shard_meta"]}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()
    assert joined and counts["ran"] == len(plan.nodes)
    assert len(nodes_used) == 2, nodes_used  # the head's actor and at least one on the node that joined
    # with more shards waiting than actors, the pool asked for one actor-sized bundle per waiting or running shard
    # (12 shards of the long set, the head's one CPU running one of them), then withdrew the request
    asked = [r for _, r in requests if r]
    assert asked and all(b == {"CPU": 1.0} for r in asked for b in r), requests
    assert max(len(r) for r in asked) >= 2, requests
    # withdrawn once no shard waited (here when the pool stopped after the last synthesis node), while the
    # training on the long set still ran, not when the run ended
    withdrawn = [t for t, r in requests if r == []]
    train_long = next(k for k, n in plan.nodes.items() if n.stage == "train_long")
    assert withdrawn and withdrawn[0] < counts["timeline"][train_long][1], (requests, counts["timeline"][train_long])


def _standing_request():
    """The resource request an autoscaler would act on (``ray.autoscaler.sdk.request_resources``'s), as a list of
    bundles; None before any was made."""
    import json

    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    assert not is_autoscaler_v2()  # a `ray start` head runs the v1 monitor, which reads this key
    raw = _internal_kv_get(b"autoscaler_resource_request")
    return None if raw is None else json.loads(raw)
