"""Node keys name the data by its content (the sha256 of its files), never by where it was read from (issue 21)."""
import os
import shutil
import warnings
from pathlib import Path

import pytest

import sweeper
from sweeper.sweep import data_id
from sweeper.science import data_store
from sweeper.cli import main
from sweeper.errors import DataNotFoundError
from sweeper.sweep.plan import build_plan
from sweeper.sweep.spec import loads
from sweeper.store.store import Store
from test_data import FMNIST, _write_cifar, need_fmnist


SWEEP = """
name: keyed
seed: 0
data: {{dataset: {dataset}, root: {root}, test_size: 50}}
run: {{store: "{store}", robust_curve: {{size: 0}}}}
stages:
  std: {{kind: train, arch: small_cnn, train_size: 64, train: {{epochs: 1, batch_size: 32, lr: 0.05}}}}
  d_det: {{kind: synthesize, from: std, method: relabel, size: 32, targets: deterministic,
          attack: {{norm: l2, eps: 1.0, steps: 1}}}}
  eval: {{kind: evaluate, from: [std], attacks: [{{norm: l2, eps: 0.5, steps: 1}}]}}
"""


def _keys(dataset: str, root, run_store, store=None) -> list[str]:
    """The keys of SWEEP on ``dataset`` at ``root``; ``store``: build_plan's (default: ``run_store``)."""
    text = SWEEP.format(dataset=dataset, root="null" if root is None else f'"{root}"', store=run_store)
    plan = build_plan(loads(text), store)
    assert plan.data_error is None, plan.data_error
    assert "root" not in plan.data or plan.data["root"] is None
    return list(plan.nodes)


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


@need_fmnist
def test_same_fmnist_files_give_the_same_keys_wherever_they_are(tmp_path, s3_uri):
    """Five places, one dataset: the default places, the system folder named, a copy elsewhere, and
    `root: store` after a push into a local folder and into S3. One changed byte gives other keys."""
    local = str(tmp_path / "store")
    for uri in (local, s3_uri):
        data_store.push("fashion_mnist", Store(uri), log=lambda s: None)
    copy = _copy(FMNIST, tmp_path / "copy")
    keys = {
        "default places": _keys("fashion_mnist", None, local),
        "system folder": _keys("fashion_mnist", str(FMNIST), local),
        "a copy": _keys("fashion_mnist", str(copy), local),
        "local store": _keys("fashion_mnist", "store", local),
        "s3 store": _keys("fashion_mnist", "store", "unused", store=s3_uri),
        "pushed folder": _keys("fashion_mnist", str(tmp_path / "store/datasets/fashion_mnist"), local),
    }
    assert len(keys["a copy"]) == 3 and all(k == keys["a copy"] for k in keys.values()), keys
    raw = bytearray((copy / "t10k-labels-idx1-ubyte.gz").read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of one file, same size
    (copy / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(raw))
    os.utime(copy / "t10k-labels-idx1-ubyte.gz", ns=(1, 1))  # an mtime of its own: memoized hashes must see it
    changed = _keys("fashion_mnist", str(copy), local)
    assert not set(changed) & set(keys["a copy"])  # every node: the data is part of every key


@need_fmnist
def test_cli_plan_prints_the_same_keys_for_two_data_locations(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(SWEEP.format(dataset="fashion_mnist", root="null", store=tmp_path / "store"))
    assert main(["data", "push", "fashion_mnist", "--store", str(tmp_path / "store")]) == 0
    capsys.readouterr()
    outs = []
    for root in (str(FMNIST), "store"):
        assert main(["plan", str(sweep), "--set", f"data.root={root}"]) == 0
        out, err = capsys.readouterr()
        assert err == ""
        outs.append(out)
    assert outs[0] == outs[1] and "done 0/3" in outs[0]


def test_cifar_format_sets_key_by_content(tmp_path):
    """The same mini CIFAR set in two folders and pushed: one set of keys; another set of files: other keys."""
    _write_cifar(tmp_path / "a")
    _copy(tmp_path / "a", tmp_path / "b")
    _write_cifar(tmp_path / "other", n_per_batch=5)
    store = str(tmp_path / "store")
    data_store.push("cifar10", Store(store), str(tmp_path / "b"), log=lambda s: None)
    a, b = _keys("cifar10", str(tmp_path / "a"), store), _keys("cifar10", str(tmp_path / "b"), store)
    pushed = _keys("cifar10", "store", store)
    other = _keys("cifar10", str(tmp_path / "other"), store)
    assert a == b == pushed and len(a) == 3
    assert not set(other) & set(a)


def test_toy_keys_are_its_parameters_as_before():
    """The toy is generated: its keys are those of the old keying (a store of toy nodes needs no migration),
    whatever data.root says; another toy parameter changes them."""
    from sweeper.sweep.migrate import legacy_plan
    from sweeper.sweep.spec import load

    sweep = load(Path(__file__).resolve().parents[1] / "search_spaces/toy.yaml")
    plan = build_plan(sweep)
    assert list(plan.nodes) == list(legacy_plan(sweep).nodes) and "sha256" not in plan.data
    moved = build_plan(load(Path(__file__).resolve().parents[1] / "search_spaces/toy.yaml", {"data.root": "/x"}))
    assert list(moved.nodes) == list(plan.nodes)
    other = build_plan(load(Path(__file__).resolve().parents[1] / "search_spaces/toy.yaml", {"data.toy.p": 0.9}))
    assert not set(other.nodes) & set(plan.nodes)


def test_file_hashes_are_memoized_per_file_state(tmp_path):
    _write_cifar(tmp_path / "a")
    data_id._sha_file.cache_clear()
    first = data_id.content_sha256("cifar10", str(tmp_path / "a"), None)
    assert data_id._sha_file.cache_info().misses == 7
    assert data_id.content_sha256("cifar10", str(tmp_path / "a"), None) == first
    assert data_id._sha_file.cache_info().misses == 7  # the second plan reads no file
    meta = tmp_path / "a/cifar-10-batches-py/batches.meta"
    meta.write_bytes(meta.read_bytes()[:-1] + b"\x00")
    os.utime(meta, ns=(5, 5))
    assert data_id.content_sha256("cifar10", str(tmp_path / "a"), None) != first


def test_without_the_data_plan_warns_and_run_refuses_in_one_line(tmp_path, capsys):
    """cifar10 absent: `plan` prints the DAG with a one-line warning (provisional keys, exit 0); run, report
    and migrate-keys stop with one line, exit 3. `root: store` before a push: the same."""
    sweep = tmp_path / "s.yaml"
    sweep.write_text(SWEEP.format(dataset="cifar10", root=f'"{tmp_path / "nothing"}"', store=tmp_path / "store"))
    assert main(["plan", str(sweep)]) == 0
    out, err = capsys.readouterr()
    assert "sweep keyed: 3 nodes" in out
    assert len(err.strip().splitlines()) == 1 and "has none of the CIFAR-10 files" in err and "provisional" in err
    for cmd in (["run", str(sweep), "--executor", "local"], ["report", str(sweep)], ["migrate-keys", str(sweep)]):
        assert main(cmd) == 3, cmd
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "has none of the CIFAR-10 files" in err, err
    assert not (tmp_path / "store").exists()  # nothing written under provisional keys
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sw = sweeper.load(sweep)
    assert len(caught) == 1 and "provisional" in str(caught[0].message)
    assert len(sw.plan_frame()) == 3
    for call in (lambda: sw.run(executor="local"), sw.report):
        with pytest.raises(DataNotFoundError, match="has none of the CIFAR-10 files"):
            call()
    sweep.write_text(SWEEP.format(dataset="cifar10", root="store", store=tmp_path / "store"))
    assert main(["plan", str(sweep)]) == 0
    assert "was never pushed" in capsys.readouterr().err
    assert main(["run", str(sweep), "--executor", "local"]) == 3
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "sweeper data push cifar10 --store" in err


def test_a_store_copy_pushed_again_is_not_taken_for_the_planned_one(tmp_path):
    """The plan keys `root: store` by the manifest it read; if the store's copy changes before the run (pushed
    again, or another --store), the engines refuse the plan instead of computing under the old keys."""
    _write_cifar(tmp_path / "a")
    _write_cifar(tmp_path / "other", n_per_batch=5)
    store = Store(tmp_path / "store")
    data_store.push("cifar10", store, str(tmp_path / "a"), log=lambda s: None)
    plan = build_plan(loads(SWEEP.format(dataset="cifar10", root="store", store=store.uri)))
    assert data_store.resolve_data_root(plan, store).sweep.data.root.startswith("file://")
    data_store.push("cifar10", store, str(tmp_path / "other"), log=lambda s: None)
    with pytest.raises(DataNotFoundError, match="is not the data this plan's keys name"):
        data_store.resolve_data_root(plan, store)


def test_a_store_copy_that_is_not_there_is_never_downloaded(tmp_path, monkeypatch, capsys):
    """data.root naming a store copy (a URI) that was never pushed: one line, exit 3, no torchvision download
    attempted and nothing written where the command runs."""
    from sweeper.cli import main

    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\nseed: 0\ndata: {dataset: fashion_mnist, root: 'file://%s/nothing', test_size: 100}\n"
                     "run: {store: %s}\nstages:\n  a: {kind: train, arch: small_cnn, train_size: 100, "
                     "train: {epochs: 1}}\n" % (tmp_path, tmp_path / "store"))
    assert main(["run", str(sweep), "--executor", "local"]) == 3
    err = capsys.readouterr().err
    assert "trying torchvision's download" not in err, err
    assert len([ln for ln in err.splitlines() if ln.startswith("sweeper:")]) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"], list(tmp_path.iterdir())
