"""sweeper on a real Ray head (`ray start --head` on loopback, token auth on with the tests' temp token)."""
import re

import pytest

from sweeper.cli import main
from sweeps import RayCluster, results_of, write_sweep
from sweeper.sweep.plan import build_plan
from sweeper.sweep.spec import load
from sweeper.store.store import Store

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_head():
    """A real Ray head on loopback (2 CPUs, usage stats off, token auth on with the tests' temp token)."""
    cluster = RayCluster()
    try:
        yield cluster.start_head(num_cpus=2)
    finally:
        cluster.stop()


def test_sweep_on_ray_head_matches_default_run(ray_head, tmp_path, capsys):
    """The same sweep three ways: in this process (--executor local), `sweeper run` as users run it (a local
    Ray that sweeper starts), and on a running cluster (--address): identical tensors, losses and accuracies."""
    inproc = write_sweep(tmp_path, "inproc")
    assert main(["run", str(inproc), "--executor", "local", "--threads", "1", "--no-report"]) == 0
    default = write_sweep(tmp_path, "default")
    capsys.readouterr()
    assert main(["run", str(default), "--no-report"]) == 0
    assert "Ray: local, started by sweeper" in capsys.readouterr().out
    remote = write_sweep(tmp_path, "remote")
    assert main(["run", str(remote), "--address", ray_head, "--no-report"]) == 0
    assert capsys.readouterr().out.count(" Tune trial(s) in ") == 1
    want = results_of(inproc)
    assert results_of(default) == want
    assert results_of(remote) == want
    plan = build_plan(load(remote))
    synth = next(n for n in plan.nodes.values() if n.kind == "synthesize")
    merged = Store(str(tmp_path / "remote")).load_meta(synth.key)
    assert [m["index"] for m in merged["shard_meta"]] == [0, 1, 2] and merged["shard_size"] == 100
    assert not (tmp_path / "remote" / "shards" / synth.key).exists()  # removed once the merged set verified
    assert main(["run", str(remote), "--address", ray_head, "--no-report"]) == 0
    assert "ran 0 nodes" in capsys.readouterr().out


def test_actor_killed_during_synthesis_costs_only_its_shard(ray_head, tmp_path):
    import ray

    from sweeper.run.kinds import Context
    from sweeper.run.shards import ShardPool, synthesize_on_pool

    ref_file = write_sweep(tmp_path, "ref")
    assert main(["run", str(ref_file), "--executor", "local", "--threads", "1", "--no-report"]) == 0
    plan = build_plan(load(ref_file))
    synth = next(n for n in plan.nodes.values() if n.kind == "synthesize")
    source = plan.nodes[synth.inputs["source"]]
    ref = Store(str(tmp_path / "ref"))

    store = Store(str(tmp_path / "killed"))  # same source model, fresh synthesis
    store.save(source.key, meta=ref.load_meta(source.key), tensors=ref.load_tensors(source.key))
    ray.init(address=ray_head, log_to_driver=False)
    try:
        pool = ShardPool(store, plan.sweep.data, 0, actors=2, cpus_per_actor=1, threads=1, max_retries=2)
        killed = []

        def kill_other(meta):
            if not killed:  # the first finished shard: kill every actor; the pool must replace them
                for a in list(pool.actors):
                    ray.kill(a, no_restart=True)
                killed.append(meta["shard/index"])

        meta = synthesize_on_pool(pool, synth, Context(plan.sweep.data, 0, store, 100), kill_other)
        pool.shutdown()
    finally:
        ray.shutdown()
    assert killed and meta["n"] == 300
    assert [m["index"] for m in store.load_meta(synth.key)["shard_meta"]] == [0, 1, 2]
    got, want = store.load_tensors(synth.key), ref.load_tensors(synth.key)
    assert set(got) == set(want) and all(torch_equal(got[k], want[k]) for k in got)
    assert store.load_meta(synth.key)["hit_rate"] == ref.load_meta(synth.key)["hit_rate"]


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def test_a_shard_that_keeps_failing_fails_the_node_with_a_clear_message(ray_head, tmp_path, capsys):
    """The source model's artifact is intact (checksums match) but holds weights of another shape: every attempt
    at a shard fails to load it, so after the retries the run stops with exit code 5 and a message naming the
    node, the shard and the cause; no shard and no synthesized set is written. (Damaged bytes are a different
    case: the run moves such an artifact aside and computes it again, tests/test_heal.py.)"""
    import torch

    from sweeper.run import kinds

    path = write_sweep(tmp_path, "corrupt")
    plan = build_plan(load(path))
    store = Store(str(tmp_path / "corrupt"))
    std = next(n for n in plan.nodes.values() if n.stage == "std")
    synth = next(n for n in plan.nodes.values() if n.kind == "synthesize")
    meta = kinds.run_train(std, kinds.Context.of(plan, store))
    store.delete(f"nodes/{std.key}")
    store.save(std.key, meta=meta, tensors={"fc.weight": torch.zeros(3, 3)})
    capsys.readouterr()
    assert main(["run", str(path), "--address", ray_head, "--no-report"]) == 5
    err = capsys.readouterr().err
    # whichever shard reaches its retry limit first; the cause is the task's own error, not Ray's frames
    assert re.search(r"d_det: shard \d \(images \d+-\d+\) failed 4 times; last error: RuntimeError: "
                     r"Error\(s\) in loading state_dict", err), err[-3000:]
    assert "run the same command again to resume" in err
    assert "Traceback" not in err and 'File "' not in err
    assert not store.is_done(synth.key) and store.shard_indices(synth.key, size=100) == set()
