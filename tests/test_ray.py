"""sweeper on a real local Ray head (`ray start --head`; Ray 2.60 leaves token auth off for it by default)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from sweeper.cli import main
from sweeps import SMALL, free_port
from sweeper.plan import build_plan
from sweeper.spec import load
from sweeper.store import Store

pytestmark = pytest.mark.ray
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A real Ray head on loopback, usage stats off, authentication as Ray 2.60 configures it by default (off)."""
    port = free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    r = subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
                        "--dashboard-host=127.0.0.1", "--disable-usage-stats", "--include-dashboard=false"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    yield f"127.0.0.1:{port}"
    subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def _write(tmp_path, name):
    p = tmp_path / f"{name}.yaml"
    p.write_text(SMALL.replace("STORE", str(tmp_path / name)))
    return p


def _results(path):
    plan = build_plan(load(path))
    store = Store(load(path).run.store)
    out = {}
    for key, node in plan.nodes.items():
        assert store.is_done(key, verify=True), node.label
        m = store.load_meta(key)
        if node.kind == "evaluate":
            out[node.label + key] = (m["clean_acc"], [r["acc"] for r in m["robust"]])
        if node.kind == "transfer":
            out[node.label] = (m["target_rate"], m["original_rate"])
        if node.kind == "synthesize":
            out[node.label] = m["hit_rate"]
    return plan, out


def test_sweep_on_ray_head_matches_local_run(ray_head, tmp_path, capsys):
    local = _write(tmp_path, "local")
    assert main(["run", str(local), "--threads", "1", "--no-report"]) == 0
    remote = _write(tmp_path, "remote")
    assert main(["run", str(remote), "--address", ray_head, "--no-report"]) == 0
    plan_l, res_l = _results(local)
    plan_r, res_r = _results(remote)
    assert set(plan_l.nodes) == set(plan_r.nodes)
    assert res_l == res_r
    # shards are written once each, with the same bytes as the local run's
    for node in plan_r.nodes.values():
        if node.kind == "synthesize":
            sl, sr = Store(str(tmp_path / "local")), Store(str(tmp_path / "remote"))
            assert sl.shard_indices(node.key) == sr.shard_indices(node.key) == {0, 1, 2}
            tl, tr = sl.load_tensors(node.key), sr.load_tensors(node.key)
            assert all((tl[k] == tr[k]).all() for k in tl)
    capsys.readouterr()
    assert main(["run", str(remote), "--address", ray_head, "--no-report"]) == 0
    assert "ran 0 nodes" in capsys.readouterr().out


def test_actor_killed_during_synthesis_costs_only_its_shard(ray_head, tmp_path):
    import ray

    from sweeper import stages
    from sweeper.shards import ShardPool, synthesize_on_pool

    ref_file = _write(tmp_path, "ref")
    assert main(["run", str(ref_file), "--threads", "1", "--no-report"]) == 0
    plan = build_plan(load(ref_file))
    synth = next(n for n in plan.nodes.values() if n.kind == "synthesize")
    source = plan.nodes[synth.inputs["source"]]
    ref = Store(str(tmp_path / "ref"))

    store = Store(str(tmp_path / "killed"))  # same source model, fresh synthesis
    store.save(source.key, meta=ref.load_meta(source.key), tensors=ref.load_tensors(source.key))
    data_spec = plan.sweep.data.model_dump()
    ray.init(address=ray_head, log_to_driver=False)
    try:
        pool = ShardPool(store, data_spec, 0, actors=2, cpus_per_actor=1, threads=1, max_retries=2)
        killed = []

        def kill_other(meta):
            if not killed:  # the first finished shard: kill every actor; the pool must replace them
                for a in list(pool.actors):
                    ray.kill(a, no_restart=True)
                killed.append(meta["index"])

        meta = synthesize_on_pool(pool, synth, data_spec, 0, store, 100, on_shard=kill_other)
        pool.shutdown()
    finally:
        ray.shutdown()
    assert killed and meta["n"] == 300
    assert store.shard_indices(synth.key) == {0, 1, 2}
    got, want = store.load_tensors(synth.key), ref.load_tensors(synth.key)
    assert set(got) == set(want) and all(torch_equal(got[k], want[k]) for k in got)
    assert store.load_meta(synth.key)["hit_rate"] == ref.load_meta(synth.key)["hit_rate"]


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())
