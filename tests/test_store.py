"""The artifact store: atomic, checksummed writes on a pyarrow filesystem."""
import json

import pytest
import torch

from sweeper.store import store as store_mod
from sweeper.store.store import CorruptArtifact, Store, provenance


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(3, 4, generator=g), "y": torch.arange(7), "m": torch.tensor([True, False])}


def test_round_trip(tmp_path):
    s = Store(str(tmp_path / "store"))
    meta = {"acc": 0.5, "label": "std", "nested": {"a": [1, 2]}}
    assert not s.is_done("k")
    s.save("k", meta=meta, tensors=_tensors(), files={"log.txt": b"hello"})
    assert s.is_done("k") and s.is_done("k", verify=True)
    assert s.load_meta("k") == meta
    out = s.load_tensors("k")
    assert out.keys() == _tensors().keys()
    assert all(torch.equal(out[k], v) for k, v in _tensors().items())
    assert s.load_file("k", "log.txt") == b"hello"
    manifest = json.loads((tmp_path / "store/nodes/k/manifest.json").read_text())
    assert set(manifest["files"]) == {"tensors.safetensors", "log.txt"}
    # the files live in the attempt folder the manifest names; nothing else is left in the node's folder
    assert sorted(p.name for p in (tmp_path / "store/nodes/k").iterdir()) == sorted([manifest["attempt"],
                                                                                     "manifest.json"])


def test_existing_artifact_is_kept(tmp_path):
    s = Store(str(tmp_path))
    s.save("k", meta={"v": 1})
    s.save("k", meta={"v": 2})
    assert s.load_meta("k") == {"v": 1}


def test_rejects_bad_inputs(tmp_path):
    s = Store(str(tmp_path))
    with pytest.raises(ValueError):
        s.save("k", meta={"x": object()})
    with pytest.raises(ValueError):
        s.save("k", meta={}, tensors={"t": torch.zeros(3, 4).t()})  # not contiguous
    assert not s.is_done("k")


def test_interrupted_write_leaves_nothing(store_uri, monkeypatch):
    """A crash before the manifest (the commit point) leaves no node and no shard done, on disk and on S3."""
    s = Store(store_uri)
    real = Store._put_atomic

    def failing(self, path, data):
        if path.endswith("manifest.json"):
            raise OSError("disk full / connection reset (simulated crash before the commit)")
        real(self, path, data)

    monkeypatch.setattr(Store, "_put_atomic", failing)
    with pytest.raises(OSError):
        s.save("k", meta={"a": 1}, tensors=_tensors())
    with pytest.raises(OSError):
        s.save_shard("n", 0, _tensors(), {"index": 0}, size=100)
    monkeypatch.setattr(Store, "_put_atomic", real)
    assert not s.is_done("k") and not s.exists("nodes/k/manifest.json")
    assert s.shard_indices("n", size=100) == set()
    s.save("k", meta={"a": 1}, tensors=_tensors())
    assert s.is_done("k", verify=True) and s.load_meta("k") == {"a": 1}


def test_leftover_dir_without_manifest_is_not_done(tmp_path):
    s = Store(str(tmp_path))
    (tmp_path / "nodes/k").mkdir(parents=True)
    (tmp_path / "nodes/k/tensors.safetensors").write_bytes(b"partial")
    assert not s.is_done("k")
    s.save("k", meta={"ok": True}, tensors=_tensors())
    assert s.is_done("k", verify=True) and s.load_meta("k") == {"ok": True}


@pytest.mark.parametrize("damage", ["not json", "meta edited", "file missing", "file truncated"])
def test_broken_manifest_is_not_done_and_heals(tmp_path, damage):
    """A manifest that is not JSON, whose meta was edited (its digest no longer matches), or whose files are
    gone or short does not count as done; the next save replaces it."""
    s = Store(str(tmp_path))
    s.save("k", meta={"acc": 0.989}, tensors=_tensors())
    mpath = tmp_path / "nodes/k/manifest.json"
    m = json.loads(mpath.read_text())
    tensors = tmp_path / "nodes/k" / m["attempt"] / "tensors.safetensors"
    if damage == "not json":
        mpath.write_text(mpath.read_text()[:-20])
    elif damage == "meta edited":
        mpath.write_text(mpath.read_text().replace("0.989", "0.889"))
    elif damage == "file missing":
        tensors.unlink()
    else:
        tensors.write_bytes(tensors.read_bytes()[:-1])
    assert not s.is_done("k")
    with pytest.raises((FileNotFoundError, CorruptArtifact)):
        s.load_tensors("k")
    assert s.save("k", meta={"acc": 0.989}, tensors=_tensors())
    assert s.is_done("k", verify=True) and s.load_meta("k") == {"acc": 0.989}
    assert torch.equal(s.load_tensors("k")["w"], _tensors()["w"])


def test_concurrent_writers_leave_one_intact_artifact(tmp_path):
    """Many threads save the same node with different content at once: it ends intact, holding exactly one
    writer's files, and no other attempt folder is left."""
    import threading

    s = Store(str(tmp_path))
    barrier = threading.Barrier(6)

    def write(i):
        barrier.wait()
        Store(str(tmp_path)).save("k", meta={"writer": i}, tensors={"x": torch.full((1000,), float(i))})

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert s.is_done("k", verify=True)
    i = s.load_meta("k")["writer"]
    assert torch.equal(s.load_tensors("k")["x"], torch.full((1000,), float(i)))


def test_corruption_detected(tmp_path):
    s = Store(str(tmp_path))
    s.save("k", meta={}, tensors=_tensors())
    m = json.loads((tmp_path / "nodes/k/manifest.json").read_text())
    f = tmp_path / "nodes/k" / m["attempt"] / "tensors.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    assert s.is_done("k") and not s.is_done("k", verify=True)  # same size: only the sha256 tells
    with pytest.raises(CorruptArtifact, match=r"k.*tensors\.safetensors"):
        s.load_tensors("k")


def test_shards(tmp_path):
    s = Store(str(tmp_path))
    assert s.shard_indices("k", size=2) == set() and not s.has_shard("k", 0, size=2)
    for i in (0, 2):
        s.save_shard("k", i, {"x": torch.full((2,), float(i))}, {"index": i}, size=2)
    assert s.shard_indices("k", size=2) == {0, 2} and s.has_shard("k", 2, size=2) and not s.has_shard("k", 1, size=2)
    assert s.shard_indices("k", size=3) == set()  # another shard size is another partition
    t, m = s.load_shard("k", 2, size=2)
    assert torch.equal(t["x"], torch.full((2,), 2.0)) and m["index"] == 2 and m["attempt"]
    assert (tmp_path / "shards/k/s2/00002/manifest.json").exists()
    s.drop_shards("k")
    assert not (tmp_path / "shards/k").exists()


def test_store_marks_its_folder_and_refuses_a_foreign_one(tmp_path):
    from sweeper.store.store import StoreError

    s = Store(str(tmp_path / "new"))
    s.claim()
    assert (tmp_path / "new/sweeper-store.json").exists()
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    (home / "tmp/notes.txt").write_text("mine")
    (home / "photos").mkdir()
    with pytest.raises(StoreError, match="not a sweeper store"):
        Store(str(home)).claim()
    Store(str(home)).clean_tmp()  # not a marked store: its tmp/ is not sweeper's
    assert (home / "tmp/notes.txt").read_text() == "mine"


def test_uri_paths_keep_the_query():
    s = Store.__new__(Store)
    s.uri = "s3://b/p?endpoint_override=127.0.0.1:9000&scheme=http"
    assert s.path("tune", "x") == "s3://b/p/tune/x?endpoint_override=127.0.0.1:9000&scheme=http"


def test_file_uri(tmp_path):
    s = Store(f"file://{tmp_path}/st")
    s.save("k", meta={"a": 1}, tensors={"x": torch.ones(2)})
    assert Store(str(tmp_path / "st")).is_done("k", verify=True)
    s.write_text("reports/x/report.md", "# hi")
    assert s.read_text("reports/x/report.md") == "# hi" and s.exists("reports/x/report.md")
    assert s.path("tune") == f"{tmp_path}/st/tune"


def test_plain_files_and_pickle(tmp_path):
    import pickle
    s = Store(str(tmp_path))
    s.write_bytes("ckpt/a.pt", b"123")
    assert s.read_bytes("ckpt/a.pt") == b"123"
    s.delete("ckpt/a.pt")
    assert not s.exists("ckpt/a.pt")
    s.delete("ckpt/missing")
    assert pickle.loads(pickle.dumps(s)).uri == s.uri


def test_provenance_keys():
    p = provenance()
    assert {"git_sha", "git_dirty", "versions", "python", "hostname", "utc"} <= set(p)
    assert {"torch", "numpy", "sweeper", "ray", "wandb"} <= set(p["versions"])
    assert p["versions"]["torch"] == torch.__version__.split("+")[0] or p["versions"]["torch"]
    json.dumps(p)
    assert "ray" not in store_mod.__dict__


def test_bytes_are_stored_as_given_whatever_the_name(tmp_path):
    """pyarrow guesses compression from a name's extension; the store must not (a pushed dataset's .gz files)."""
    import gzip

    s = Store(str(tmp_path))
    raw = gzip.compress(b"idx file" * 100)
    s.write_bytes("datasets/x/labels.gz", raw)
    assert (tmp_path / "datasets/x/labels.gz").read_bytes() == raw and s.read_bytes("datasets/x/labels.gz") == raw
