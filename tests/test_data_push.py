"""Datasets pushed into the store (`sweeper data push`, `data.root: store`): every node loads a checked copy."""
import hashlib
import json
from pathlib import Path

import pytest
import torch

from sweeper.science import data

from sweeper.science import data_store
from sweeper.cli import main
from sweeper.sweep.plan import build_plan
from sweeper.sweep.schema import DataSpec
from sweeper.sweep.spec import loads
from sweeper.store.store import Store
from test_data import FMNIST, _write_cifar, need_fmnist


SWEEP = """
name: pushed
seed: 0
data: {{dataset: {dataset}, root: store, test_size: 50}}
run: {{store: "{store}"}}
stages:
  std: {{kind: train, arch: small_cnn, train_size: 64,
        train: {{epochs: 1, batch_size: 32, optimizer: sgd, lr: 0.05, schedule: cosine}}}}
  eval: {{kind: evaluate, from: [std], attacks: [{{norm: l2, eps: 0.5, steps: 1}}]}}
"""


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    """A node-local cache of this test's own, and no dataset left in this process's load cache."""
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))
    data_store._load_cached.cache_clear()
    yield
    data_store._load_cached.cache_clear()


@pytest.fixture
def small_cifar(tmp_path, monkeypatch):
    """Small CIFAR-10 files in torchvision's format under tmp_path/src (md5 check off: they are not the real ones)."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    _write_cifar(tmp_path / "src")
    return tmp_path / "src"


def _plan(dataset: str, store: str):
    return build_plan(loads(SWEEP.format(dataset=dataset, store=store)))


def _same(a: data.Dataset, b: data.Dataset) -> None:
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.mean == b.mean and a.name == b.name


def _cache_files(tmp_path) -> list[Path]:
    return sorted(p for p in (tmp_path / "cache" / "datasets").rglob("*") if p.is_file())


@need_fmnist
def test_fmnist_push_then_load_via_store_root(tmp_path):
    store = Store(tmp_path / "store")
    lines = []
    m = data_store.push("fashion_mnist", store, log=lines.append)
    assert sorted(m["files"]) == sorted(p.name for p in FMNIST.glob("*-ubyte.gz"))
    assert len(lines) == 5 and all(line.endswith("sent") for line in lines[:4])
    assert "30,878,551 bytes" in lines[-1] and "root: store" in lines[-1]
    for name, info in m["files"].items():  # the store holds exactly the system files, and says so
        raw = (FMNIST / name).read_bytes()
        assert (tmp_path / "store/datasets/fashion_mnist" / name).read_bytes() == raw
        assert info == {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    plan = data_store.resolve_data_root(_plan("fashion_mnist", "unused"), store)
    assert plan.sweep.data.root == (tmp_path / "store/datasets/fashion_mnist").as_uri()
    for split in ("train", "test"):
        _same(data_store.load_split(plan.sweep.data, split), data.load("fashion_mnist", split))
    cached = _cache_files(tmp_path)
    assert [p.name for p in cached] == sorted(m["files"])
    digest = hashlib.sha256((tmp_path / "store/datasets/fashion_mnist/manifest.json").read_bytes()).hexdigest()
    assert cached[0].parent.name == f"fashion_mnist-{digest[:16]}"
    # pushing the same files again sends nothing and leaves the manifest (hence every node's cache) as it is
    lines.clear()
    data_store.push("fashion_mnist", store, log=lines.append)
    assert all(line.endswith("unchanged") for line in lines[:4]) and "(0 sent)" in lines[-1]
    assert hashlib.sha256((tmp_path / "store/datasets/fashion_mnist/manifest.json").read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("src_is_folder_itself", [False, True])
def test_cifar10_push_then_load(tmp_path, small_cifar, src_is_folder_itself):
    src = small_cifar / "cifar-10-batches-py" if src_is_folder_itself else small_cifar
    store = Store(tmp_path / "store")
    m = data_store.push("cifar10", store, str(src), log=lambda s: None)
    assert sorted(m["files"]) == sorted(f"cifar-10-batches-py/{n}" for n in data_store.CIFAR_FILES)
    root = data_store.dataset_uri(store, "cifar10")
    for split in ("train", "test"):
        _same(data_store.load_split(DataSpec(dataset="cifar10", root=root), split),
              data.load("cifar10", split, root=str(small_cifar)))
    assert len(_cache_files(tmp_path)) == 7


def test_concurrent_fetches_share_one_cache(tmp_path, small_cifar):
    """Worker processes of one node fetch at once: each file lands whole (temp name + rename), none is lost."""
    import threading

    store = Store(tmp_path / "my store")  # a space: the file:// URI is percent-encoded and must still resolve
    data_store.push("cifar10", store, str(small_cifar), log=lambda s: None)
    root = data_store.dataset_uri(store, "cifar10")
    assert root.startswith("file://") and "%20" in root
    barrier, results, errors = threading.Barrier(6), [], []

    def worker():
        barrier.wait()
        try:
            results.append(data_store.fetch(root, "cifar10"))
        except Exception as e:  # reported below, not swallowed
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    dest = results[0]
    for name in data_store.CIFAR_FILES:
        rel = f"cifar-10-batches-py/{name}"
        assert (dest / rel).read_bytes() == (small_cifar / rel).read_bytes()
    assert not [p for p in dest.rglob(".*")]  # no temp files left


def test_plain_roots_are_untouched_and_store_must_be_resolved(tmp_path, small_cifar):
    assert data_store.local_root("cifar10", str(small_cifar)) == str(small_cifar)  # no manifest: a plain folder
    assert data_store.local_root("cifar10", None) is None
    with pytest.raises(ValueError, match="resolve_data_root"):
        data_store.load_split(DataSpec(dataset="cifar10", root="store"), "test")
    store = Store(tmp_path / "store")  # a pushed folder given as a plain path is fetched and checked too
    data_store.push("cifar10", store, str(small_cifar), log=lambda s: None)
    folder = str(tmp_path / "store/datasets/cifar10")
    assert data_store.local_root("cifar10", folder).startswith(str(tmp_path / "cache"))
    with pytest.raises(data.DataNotFoundError, match="holds cifar10, not fashion_mnist"):
        data_store.fetch(folder, "fashion_mnist")


def test_cifar_file_list_is_what_torchvision_reads():
    from torchvision.datasets import CIFAR10

    assert data_store.CIFAR_FOLDER == CIFAR10.base_folder
    assert set(data_store.CIFAR_FILES) == {n for n, _ in CIFAR10.train_list + CIFAR10.test_list} | {
        CIFAR10.meta["filename"]}


def test_corrupted_store_copy_is_refused_naming_the_file(tmp_path, small_cifar):
    store = Store(tmp_path / "store")
    data_store.push("cifar10", store, str(small_cifar), log=lambda s: None)
    bad = tmp_path / "store/datasets/cifar10/cifar-10-batches-py/test_batch"
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit, same size
    bad.write_bytes(bytes(raw))
    root = data_store.dataset_uri(store, "cifar10")
    with pytest.raises(data_store.CorruptDataset, match=r"cifar-10-batches-py/test_batch .*fails its check"):
        data_store.load_split(DataSpec(dataset="cifar10", root=root), "test")
    assert not any(p.name == "test_batch" for p in _cache_files(tmp_path))  # nothing bad kept in the cache
    bad.unlink()  # a missing file is named too
    with pytest.raises(data_store.CorruptDataset, match=r"cifar-10-batches-py/test_batch .*missing"):
        data_store.fetch(root, "cifar10")


def test_damaged_cache_file_is_fetched_again(tmp_path, small_cifar):
    store = Store(tmp_path / "store")
    data_store.push("cifar10", store, str(small_cifar), log=lambda s: None)
    root = data_store.dataset_uri(store, "cifar10")
    dest = data_store.fetch(root, "cifar10")
    cached = dest / "cifar-10-batches-py/data_batch_2"
    good = cached.read_bytes()
    cached.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))  # same size: only the sha256 sees it
    (dest / "cifar-10-batches-py/data_batch_3").unlink()
    assert data_store.fetch(root, "cifar10") == dest
    assert cached.read_bytes() == good and (dest / "cifar-10-batches-py/data_batch_3").is_file()
    assert not [p for p in dest.rglob(".*")]  # no temp files left


def test_interrupted_push_leaves_no_dataset(tmp_path, small_cifar, monkeypatch):
    store = Store(tmp_path / "store")
    data_store.push("cifar10", store, str(small_cifar), log=lambda s: None)
    # the source changes (a new copy), and the second push dies after its first file
    (small_cifar / "cifar-10-batches-py/batches.meta").write_bytes(b"changed")
    (small_cifar / "cifar-10-batches-py/test_batch").write_bytes(b"changed too")
    real_put, calls = Store.write_bytes, []

    def dying_put(store_, rel, data):
        calls.append(rel)
        if len(calls) == 2:
            raise OSError("connection lost")
        real_put(store_, rel, data)

    monkeypatch.setattr(Store, "write_bytes", dying_put)
    with pytest.raises(OSError, match="connection lost"):
        data_store.push("cifar10", store, str(small_cifar), log=lambda s: None)
    # no manifest: not a dataset (the old manifest must not vouch for half-new files)
    assert data_store.list_pushed(store) == []
    with pytest.raises(data.DataNotFoundError, match="no pushed dataset"):
        data_store.fetch(data_store.dataset_uri(store, "cifar10"), "cifar10")
    monkeypatch.setattr(Store, "write_bytes", real_put)
    lines = []
    data_store.push("cifar10", store, str(small_cifar), log=lines.append)
    assert sum(line.endswith("sent") for line in lines) == 7  # without a manifest nothing is known to be there
    assert data_store.list_pushed(store)[0]["files"] == 7


def test_node_keys_do_not_depend_on_the_store(tmp_path, small_cifar, capsys):
    keys = []
    for name in ("a", "b"):
        store = Store(tmp_path / name)
        data_store.push("cifar10", store, str(small_cifar), log=lambda s: None)
        plan = _plan("cifar10", str(tmp_path / name))
        resolved = data_store.resolve_data_root(plan, store)
        assert plan.sweep.data.root == "store"  # the plan keeps the literal
        assert resolved.sweep.data.root == (tmp_path / name / "datasets/cifar10").as_uri()
        assert list(resolved.nodes) == list(plan.nodes)
        keys.append(list(plan.nodes))
    assert keys[0] == keys[1]
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(SWEEP.format(dataset="cifar10", store=tmp_path / "a"))
    outs = []
    for name in ("a", "b"):
        assert main(["plan", str(sweep_file), "--store", str(tmp_path / name)]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and keys[0][0] in outs[0]


@need_fmnist
def test_sweep_runs_on_the_pushed_copy(tmp_path, capsys):
    """`sweeper run --executor local` with data.root: store: refused before a push, runs after it."""
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(SWEEP.format(dataset="fashion_mnist", store=tmp_path / "store"))
    assert main(["run", str(sweep_file), "--executor", "local", "--no-report"]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sweeper data push fashion_mnist --store" in err, err
    assert main(["data", "push", "fashion_mnist", "--store", str(tmp_path / "store")]) == 0
    assert main(["run", str(sweep_file), "--executor", "local", "--no-report"]) == 0
    assert "ran 2 nodes" in capsys.readouterr().out
    assert len(_cache_files(tmp_path)) == 4


def test_cli_push_errors_and_list(tmp_path, small_cifar, capsys):
    st = str(tmp_path / "store")
    assert main(["data", "push", "cifar10", "--store", st, "--from", str(tmp_path / "nope")]) == 3
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nope is not a folder" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    for ds in ("cifar10", "fashion_mnist"):
        assert main(["data", "push", ds, "--store", st, "--from", str(tmp_path / "empty")]) == 3
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and str(tmp_path / "empty") in err, err
    (small_cifar / "cifar-10-batches-py/data_batch_4").unlink()
    assert main(["data", "push", "cifar10", "--store", st, "--from", str(small_cifar)]) == 3
    assert "lacks data_batch_4" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()  # nothing written by a refused push
    assert main(["data", "list", "--store", st]) == 0
    assert "no datasets pushed" in capsys.readouterr().out
    _write_cifar(tmp_path / "src2")
    assert main(["data", "push", "cifar10", "--store", st, "--from", str(tmp_path / "src2")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 8 and "root: store" in out[-1]
    assert main(["data", "list", "--store", st]) == 0
    assert capsys.readouterr().out.startswith("cifar10 ") and json.loads(
        (tmp_path / "store/datasets/cifar10/manifest.json").read_text())["dataset"] == "cifar10"


@need_fmnist
def test_fmnist_through_s3(tmp_path, s3_uri):
    store = Store(s3_uri)
    data_store.push("fashion_mnist", store, log=lambda s: None)
    root = data_store.resolve_data_root(_plan("fashion_mnist", s3_uri), Store(s3_uri)).sweep.data.root
    assert root.startswith("s3://") and "/datasets/fashion_mnist?" in root  # the query stays at the end
    m = json.loads(store.read_bytes("datasets/fashion_mnist/manifest.json"))
    for name, info in m["files"].items():  # byte for byte: pyarrow must not gzip a .gz name once more
        assert store.fs.get_file_info(store.fs_path("datasets/fashion_mnist", name)).size == info["size"]
        assert info["size"] == (FMNIST / name).stat().st_size
    _same(data_store.load_split(DataSpec(dataset="fashion_mnist", root=root), "test"), data.load("fashion_mnist", "test"))
    assert len(_cache_files(tmp_path)) == 4


@need_fmnist
@pytest.mark.ray
def test_ray_workers_load_the_pushed_copy(tmp_path, capsys):
    """Tune trials and synthesis actors (other processes) get the resolved root; two stores, same keys, and the
    Ray run gives the numbers of an in-process run on the other store."""
    from sweeps import SMALL, results_of, write_sweep

    text = SMALL.replace("data: {dataset: fashion_mnist,", "data: {dataset: fashion_mnist, root: store,")
    files = {name: write_sweep(tmp_path, name, text) for name in ("inproc", "onray")}
    for name in files:
        assert main(["data", "push", "fashion_mnist", "--store", str(tmp_path / name)]) == 0
    assert main(["run", str(files["inproc"]), "--executor", "local", "--threads", "1", "--no-report"]) == 0
    assert main(["run", str(files["onray"]), "--no-report"]) == 0
    assert "Tune trial(s)" in capsys.readouterr().out
    assert results_of(files["onray"]) == results_of(files["inproc"])
