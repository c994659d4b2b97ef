"""The artifact store: atomic, checksummed writes on a pyarrow filesystem."""
import json

import pytest
import torch

from sweeper import store as store_mod
from sweeper.store import CorruptArtifact, Store, provenance


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
    assert set(manifest["files"]) == {"meta.json", "tensors.safetensors", "log.txt"}
    assert not list((tmp_path / "store/tmp").iterdir())


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


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    s = Store(str(tmp_path))
    real = Store._write

    def failing(self, path, data):
        if path.endswith("manifest.json"):
            raise OSError("disk full (simulated)")
        real(self, path, data)

    monkeypatch.setattr(Store, "_write", failing)
    with pytest.raises(OSError):
        s.save("k", meta={"a": 1}, tensors=_tensors())
    monkeypatch.setattr(Store, "_write", real)
    assert not s.is_done("k") and not (tmp_path / "nodes/k").exists()
    assert list((tmp_path / "tmp").iterdir())  # the leftover is only in tmp/
    s.save("k", meta={"a": 1}, tensors=_tensors())
    assert s.is_done("k", verify=True)
    s.clean_tmp()
    assert not list((tmp_path / "tmp").iterdir())
    assert s.is_done("k", verify=True)


def test_leftover_dir_without_manifest_is_not_done(tmp_path):
    s = Store(str(tmp_path))
    (tmp_path / "nodes/k").mkdir(parents=True)
    (tmp_path / "nodes/k/tensors.safetensors").write_bytes(b"partial")
    assert not s.is_done("k")
    s.save("k", meta={"ok": True}, tensors=_tensors())
    assert s.is_done("k", verify=True) and s.load_meta("k") == {"ok": True}


def test_corruption_detected(tmp_path):
    s = Store(str(tmp_path))
    s.save("k", meta={}, tensors=_tensors())
    f = tmp_path / "nodes/k/tensors.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    assert s.is_done("k") and not s.is_done("k", verify=True)
    with pytest.raises(CorruptArtifact, match=r"k.*tensors\.safetensors"):
        s.load_tensors("k")


def test_shards(tmp_path):
    s = Store(str(tmp_path))
    assert s.shard_indices("k") == set() and not s.has_shard("k", 0)
    for i in (0, 2):
        s.save_shard("k", i, {"x": torch.full((2,), float(i))}, {"index": i})
    assert s.shard_indices("k") == {0, 2} and s.has_shard("k", 2) and not s.has_shard("k", 1)
    t, m = s.load_shard("k", 2)
    assert torch.equal(t["x"], torch.full((2,), 2.0)) and m == {"index": 2}
    assert (tmp_path / "shards/k/00002/manifest.json").exists()


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
