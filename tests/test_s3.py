"""The store on a real S3 API (moto's server on loopback, started by the fixture): artifacts, corruption
(a crash before the commit: test_store.py, on both stores), concurrent writers, the toy sweep end to end on
Ray with Tune and W&B writing there too."""
import json
import os
import pathlib
import re
import subprocess
import sys

import pyarrow.fs as pafs
import pytest
import torch

from sweeper.cli import main
from sweeper.sweep.plan import build_plan
from sweeper.sweep.spec import load
from sweeper.store.store import CorruptArtifact, Store
from sweeps import results_of

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOY = ROOT / "search_spaces" / "toy.yaml"
SWEEPER = os.path.join(os.path.dirname(sys.executable), "sweeper")


def _tensors(v: float = 1.0):
    return {"w": torch.full((64, 64), v), "y": torch.arange(10)}


def _flip_last_byte(store: Store, rel: str) -> None:
    data = bytearray(store.read_bytes(rel))
    data[-1] ^= 0xFF
    with store.fs.open_output_stream(store.fs_path(rel)) as f:
        f.write(bytes(data))


def test_artifacts_on_s3_are_committed_by_their_manifest_and_checked_on_read(s3_uri, s3_server):
    s = Store(s3_uri)
    assert "?endpoint_override=" in s.uri and s.path("tune").endswith("/tune?" + s3_uri.split("?")[1])
    s.claim()
    s3_server.requests(reset=True)
    assert s.save("k", meta={"acc": 0.989}, tensors=_tensors())
    saved = s3_server.requests(reset=True)
    assert s.is_done("k")
    done = s3_server.requests(reset=True)
    assert s.is_done("k", verify=True)
    s3_server.requests(reset=True)
    assert s.load_meta("k") == {"acc": 0.989} and torch.equal(s.load_tensors("k")["w"], _tensors()["w"])
    loaded = s3_server.requests(reset=True)
    print("requests: save", saved, "is_done", done, "load meta + tensors", loaded)
    # a node is a handful of requests: the counts below are what the README's store section quotes
    assert sum(saved.values()) <= 10 and sum(done.values()) <= 3 and sum(loaded.values()) <= 6, (saved, done, loaded)
    assert not s.save("k", meta={"acc": 0.5}, tensors=_tensors(2.0))  # a committed artifact is kept
    assert s.load_meta("k") == {"acc": 0.989}

    m = json.loads(s.read_bytes("nodes/k/manifest.json"))
    _flip_last_byte(s, f"nodes/k/{m['attempt']}/tensors.safetensors")
    assert s.is_done("k") and not s.is_done("k", verify=True)
    with pytest.raises(CorruptArtifact, match="tensors.safetensors fails its sha256 check"):
        s.load_tensors("k")

    s.write_bytes("nodes/k/manifest.json", s.read_bytes("nodes/k/manifest.json")[:-30])  # not JSON any more
    assert not s.is_done("k")
    assert s.save("k", meta={"acc": 0.989}, tensors=_tensors())  # heals
    assert s.is_done("k", verify=True)


def test_concurrent_writers_on_s3_leave_one_intact_artifact(s3_uri):
    import threading

    barrier = threading.Barrier(4)

    def write(i):
        barrier.wait()
        Store(s3_uri).save("k", meta={"writer": i}, tensors=_tensors(float(i)))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    s = Store(s3_uri)
    assert s.is_done("k", verify=True)
    i = s.load_meta("k")["writer"]
    assert torch.equal(s.load_tensors("k")["w"], _tensors(float(i))["w"])


@pytest.mark.ray
def test_toy_sweep_end_to_end_on_s3(s3_uri, tmp_path, monkeypatch, capsys):
    """`sweeper run` (a local Ray: synthesis actors, Tune trials, W&B offline) with an s3:// store: the same
    results as an in-process run on local disk, nothing written to a local ./store, Tune's experiment and
    every W&B run in the bucket, `sweeper wandb` brings the runs down for `wandb sync`, and a re-run does
    nothing."""
    ref = str(tmp_path / "ref")
    assert main(["run", str(TOY), "--store", ref, "--executor", "local", "--no-report"]) == 0
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    capsys.readouterr()
    assert main(["run", str(TOY), "--store", s3_uri, "--wandb", "offline"]) == 0
    out = capsys.readouterr().out
    assert "ran 8 nodes" in out and "results.csv?endpoint_override=" in out
    assert results_of(TOY, s3_uri) == results_of(TOY, ref)
    assert list(work.iterdir()) == []  # no ./store, no wandb folder: everything went to the bucket
    s = Store(s3_uri)
    assert [i for i in s.listdir("tune") if i.type == pafs.FileType.Directory]
    assert s.listdir("shards") == []  # merged and removed
    assert s.exists("reports/toy/report.md") and s.exists("sweeper-store.json")

    dest = tmp_path / "runs"
    # another sweep's run in the same store is not this sweep's to upload
    s.write_text("wandb/wandb/offline-run-20260101_000000-other-0123456789abcdef/run-other.wandb", "x")
    assert main(["wandb", str(TOY), "--store", s3_uri, "--to", str(dest)]) == 0
    runs = sorted(p.name for p in dest.iterdir())
    plan = build_plan(load(TOY))
    assert len(runs) == len(plan.nodes) + 1 and any(r.endswith("-toy-report") for r in runs)
    dry = subprocess.run([os.path.join(os.path.dirname(sys.executable), "wandb"), "sync", "--dry-run",
                          *[str(dest / r) for r in runs]], capture_output=True, text=True, timeout=120)
    assert f"Would sync {len(runs)} run(s)" in dry.stdout + dry.stderr, dry.stdout + dry.stderr

    capsys.readouterr()
    assert main(["run", str(TOY), "--store", s3_uri, "--no-report"]) == 0
    assert "ran 0 nodes" in capsys.readouterr().out


def test_two_drivers_on_one_s3_store_end_with_one_intact_result(s3_uri, tmp_path):
    """Two `sweeper run` processes on the same sweep and S3 store at the same time both succeed, and compute
    every node exactly once between them (node leases; counted from both outputs); every node is intact and
    the results equal a single undisturbed run. (tests/test_leases.py: the same on local disk, dead drivers.)"""
    ref = str(tmp_path / "ref")
    assert main(["run", str(TOY), "--store", ref, "--executor", "local", "--threads", "1", "--no-report"]) == 0
    cmd = [SWEEPER, "run", str(TOY), "--store", s3_uri, "--executor", "local", "--threads", "1", "--no-report",
           "--wandb", "disabled"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    plan = build_plan(load(TOY))
    node_line = re.compile(r"^\[\d+/\d+\] \S+\s+\S+ \(([0-9a-f]{16})\) \.\.\.$", re.M)  # "[2/8] train  std (key) ..."
    started = [k for out in outs for k in node_line.findall(out)]
    assert sorted(started) == sorted(plan.nodes), outs  # each node once, in total
    assert sum(int(re.search(r"ran (\d+) nodes", out).group(1)) for out in outs) == len(plan.nodes), outs
    assert results_of(TOY, s3_uri) == results_of(TOY, ref)
    assert Store(s3_uri).is_done(next(iter(plan.nodes)), verify=True)
    assert not [i for i in Store(s3_uri).listdir("leases") if i.base_name.endswith(".json")]  # all released


def test_a_prefix_holding_other_things_is_not_taken_for_a_store(s3_uri):
    """On S3 as on disk: a non-empty prefix without the store's marker is refused, and nothing is written."""
    from sweeper.store.store import StoreError

    s = Store(s3_uri)
    s.write_text("photos/holiday.txt", "mine")
    with pytest.raises(StoreError, match="not a sweeper store"):
        s.claim()
    assert [i.base_name for i in s.listdir("")] == ["photos"]
    base, query = s3_uri.split("?")
    fresh = Store(f"{base}-new?{query}")
    fresh.claim()
    assert fresh.exists("sweeper-store.json")
