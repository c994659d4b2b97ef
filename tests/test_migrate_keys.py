"""`sweeper migrate-keys`: a store written with the old keys (which hashed data.root) is carried over to the
content keys without computing anything again, on a local folder and on S3."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from sweeper.science import data_store
from sweeper.cli import main
from sweeper.run.engines import run_plan
from sweeper.errors import StoreIOError
from sweeper.sweep.migrate import legacy_plan
from sweeper.sweep.plan import build_plan
from sweeper.sweep.spec import load
from sweeper.store.store import Store
from test_data_keys import FMNIST, SWEEP, need_fmnist

pytestmark = need_fmnist
ROOT = Path(__file__).resolve().parents[1]

# `sweeper plan search_spaces/fmnist_smoke.yaml` before keys hashed the data's content (measured at 795a7a8),
# with data.root unset and with --set data.root=/usr/share/datasets/fashion-mnist
OLD_SMOKE_KEYS = {None: ["64e7b5c10ab61c2e", "61c61c92c12b6309", "9518459d284b7fd8", "0f2cf4cc88702d6b",
                         "33b234ef6fecaa41", "dc53c4f55d016bab"],
                  str(FMNIST): ["947ba94f93fd3bac", "20b56b246a3d6a38", "3e539bb969bfe963", "339d1c73d9d495ee",
                                "ddc442c24edad61c", "ea0abf78433043b5"]}


def _sweep_file(tmp_path, store: str, root=None) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(SWEEP.format(dataset="fashion_mnist", root="null" if root is None else f'"{root}"',
                                 store=store))
    return path


def _old_store(path: Path, root=None) -> dict:
    """Run the sweep as the old code did (its keys hashed data.root, ``root`` unless None: the file's); returns
    {old key: its manifest's bytes}."""
    sweep = load(path)
    old = legacy_plan(sweep) if root is None else legacy_plan(sweep, root)
    store = Store(sweep.run.store)
    assert run_plan(old, store, log=lambda s: None)["ran"] == 3
    return {k: store.read_bytes(f"nodes/{k}/manifest.json") for k in old.nodes}


@pytest.fixture(scope="module")
def old_local(tmp_path_factory):
    """A local store written with the old keys, copied by each test that changes it."""
    base = tmp_path_factory.mktemp("old")
    manifests = _old_store(_sweep_file(base, str(base / "store")))
    return base / "store", manifests


def test_legacy_plan_gives_the_keys_the_old_code_gave():
    for root, keys in OLD_SMOKE_KEYS.items():
        sweep = load(ROOT / "search_spaces/fmnist_smoke.yaml", {"data.root": root} if root else None)
        assert list(legacy_plan(sweep).nodes) == keys
        assert not set(build_plan(sweep).nodes) & set(keys)  # the new keys differ: hence the migration


@pytest.mark.parametrize("where", ["local", "s3"])
def test_migrate_then_run_computes_nothing(tmp_path, where, old_local, s3_uri, capsys):
    if where == "local":
        store_uri = str(tmp_path / "store")
        shutil.copytree(old_local[0], store_uri)
        path, old_manifests = _sweep_file(tmp_path, store_uri), old_local[1]
    else:
        store_uri = s3_uri
        path = _sweep_file(tmp_path, store_uri)
        old_manifests = _old_store(path)
    store, plan = Store(store_uri), build_plan(load(path))
    assert main(["plan", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "done 0/3" in out and len(err.strip().splitlines()) == 1 and "sweeper migrate-keys" in err
    assert main(["migrate-keys", str(path)]) == 0
    assert "3 node(s) copied to their new keys, 0 had them already" in capsys.readouterr().out
    assert main(["plan", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "done 3/3" in out and err == ""
    assert main(["run", str(path), "--executor", "local", "--no-report"]) == 0
    assert "ran 0 nodes, skipped 3 already done" in capsys.readouterr().out
    old_keys = list(old_manifests)
    for old, (new, node) in zip(old_keys, plan.nodes.items()):
        assert store.read_bytes(f"nodes/{old}/manifest.json") == old_manifests[old]  # the old entry: untouched
        assert store.is_done(new, verify=True)  # every file read back against its sha256
        manifest = json.loads(store.read_bytes(f"nodes/{new}/manifest.json"))
        assert manifest["migrated_from"] == old and manifest["key"] == new
        meta, tensors = store.load(new)
        assert meta["key"] == new and meta["inputs"] == node.inputs and meta["label"] == node.label
        old_meta, old_tensors = store.load(old)
        assert meta["wall_s"] == old_meta["wall_s"] and tensors.keys() == old_tensors.keys()
        assert all(torch.equal(tensors[k], old_tensors[k]) for k in tensors)
    evaluate = next(n for n in plan.nodes.values() if n.kind == "evaluate")
    assert store.load_meta(evaluate.key)["model"] == evaluate.inputs["model"]  # its model's new key
    assert main(["migrate-keys", str(path)]) == 0  # idempotent
    assert "0 node(s) copied to their new keys, 3 had them already" in capsys.readouterr().out


def test_data_moved_into_the_store_migrates_with_old_root(tmp_path, capsys):
    """Run with the system folder, then pushed into the store and planned with `root: store`: the old keys are
    found with --old-root; --remove-old deletes them once their copies are committed."""
    store_uri = str(tmp_path / "store")
    _old_store(_sweep_file(tmp_path, store_uri, root=str(FMNIST)))
    assert main(["data", "push", "fashion_mnist", "--store", store_uri]) == 0
    path = _sweep_file(tmp_path, store_uri, root="store")
    capsys.readouterr()
    assert main(["migrate-keys", str(path)]) == 0  # the old keys of `root: store`: none in the store
    assert "0 node(s) copied to their new keys, 0 had them already, 3 done under neither key" in \
        capsys.readouterr().out
    assert main(["migrate-keys", str(path), "--old-root", str(FMNIST), "--remove-old"]) == 0
    out = capsys.readouterr().out
    assert "3 node(s) copied" in out and "3 old entries removed" in out
    assert sorted(p.name for p in (tmp_path / "store/nodes").iterdir()) == sorted(build_plan(load(path)).nodes)
    assert main(["run", str(path), "--executor", "local", "--no-report"]) == 0
    assert "ran 0 nodes, skipped 3 already done" in capsys.readouterr().out


def test_an_interrupted_migration_is_finished_by_running_it_again(tmp_path, old_local, monkeypatch, capsys):
    """The manifest is written last: a migration that dies while committing its second node leaves that node not
    done (its copied files named by no manifest) and the old entries whole; running it again finishes."""
    shutil.copytree(old_local[0], tmp_path / "store")
    path = _sweep_file(tmp_path, str(tmp_path / "store"))
    real_commit, calls = Store._commit, []

    def dying_commit(store, rel, *args, **kw):
        calls.append(rel)
        if len(calls) == 2:  # what a failed write surfaces as (Store._io)
            raise StoreIOError(f"store {store.uri}: cannot write {rel}/manifest.json: connection lost")
        return real_commit(store, rel, *args, **kw)

    monkeypatch.setattr(Store, "_commit", dying_commit)
    assert main(["migrate-keys", str(path)]) == 2
    assert "connection lost" in capsys.readouterr().err
    monkeypatch.setattr(Store, "_commit", real_commit)
    store, keys = Store(tmp_path / "store"), list(build_plan(load(path)).nodes)
    assert [store.is_done(k) for k in keys] == [True, False, False]
    assert [p.name for p in (tmp_path / f"store/nodes/{keys[1]}").iterdir()] != []  # copied, not committed
    assert all(store.read_bytes(f"nodes/{k}/manifest.json") == m for k, m in old_local[1].items())
    capsys.readouterr()
    assert main(["migrate-keys", str(path)]) == 0
    assert "2 node(s) copied to their new keys, 1 had them already" in capsys.readouterr().out
    assert all(store.is_done(k, verify=True) for k in keys)


def test_bad_old_root_is_one_line(tmp_path, capsys):
    path = _sweep_file(tmp_path, str(tmp_path / "store"))
    assert main(["migrate-keys", str(path), "--old-root", "[1, 2]"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--old-root" in err and "Traceback" not in err
