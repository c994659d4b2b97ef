"""A store that cannot be used ends `sweeper plan/run/report` with one line on stderr naming the store and the
cause, exit 2, no traceback, and nothing half-written that looks finished: a path under a regular file, a real
read-only mount and a real full disk (tmpfs in a private mount namespace, where the system allows one), an S3
endpoint with nothing listening (fails in seconds), a bucket that does not exist."""
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import pytest

from sweeper.sweep.plan import build_plan
from sweeper.sweep.spec import load
from sweeper.store.store import Store

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOY = ROOT / "search_spaces" / "toy.yaml"
SWEEPER = os.path.join(os.path.dirname(sys.executable), "sweeper")
PLAN = build_plan(load(TOY))


def _sweeper(cmd: str, store: str, cwd, *extra: str, prefix: tuple = ()) -> tuple[int, str, str, float]:
    args = [SWEEPER, cmd, str(TOY), "--store", store, *extra]
    if cmd == "run":
        args += ["--executor", "local", "--threads", "1", "--no-report", "--wandb", "disabled"]
    t0 = time.time()
    r = subprocess.run([*prefix, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr, time.time() - t0


def _one_line(stderr: str, *needles: str) -> str:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    assert lines[0].startswith("sweeper: store ") and all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def test_a_store_path_under_a_regular_file(tmp_path):
    """Root ignores chmod, so an unwritable path that stays unwritable for root: a folder inside a file."""
    (tmp_path / "afile").write_text("not a folder\n")
    store = str(tmp_path / "afile" / "store")
    for cmd in ("run", "plan", "report"):
        rc, out, err, _ = _sweeper(cmd, store, tmp_path)
        assert rc == 2, (cmd, out, err)
        _one_line(err, store, "is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "not a folder\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_s3_endpoint_with_nothing_listening_fails_fast(tmp_path, s3_server):
    uri = f"s3://sweeper-test/x?endpoint_override=127.0.0.1:{_free_port()}&scheme=http"
    for cmd in ("run", "plan", "report"):
        rc, out, err, took = _sweeper(cmd, uri, tmp_path)
        assert rc == 2, (cmd, out, err)
        _one_line(err, uri, "NETWORK_CONNECTION", "Could not connect", "is the endpoint up")
        print(f"{cmd}: {took:.1f} s")
        assert took < 30
    assert list(tmp_path.iterdir()) == []  # nothing local either


def test_an_s3_bucket_that_does_not_exist(tmp_path, s3_server):
    uri = f"s3://no-such-bucket/x?endpoint_override={s3_server.endpoint}&scheme=http"
    for cmd in ("run", "plan", "report"):
        rc, out, err, _ = _sweeper(cmd, uri, tmp_path)
        assert rc == 2, (cmd, out, err)
        _one_line(err, uri, "NO_SUCH_BUCKET", "create the bucket")


def test_a_uri_pyarrow_refuses(tmp_path, s3_server):
    uri = f"s3://sweeper-test/x?endpoint_override={s3_server.endpoint}&timeout=3"
    rc, out, err, _ = _sweeper("plan", uri, tmp_path)
    assert rc == 2
    _one_line(err, "not a usable store URI", "timeout")


# -------------------------------------------------------------- real read-only and full filesystems (Linux)
def _can_mount() -> bool:
    if not shutil.which("unshare") or not sys.platform.startswith("linux"):
        return False
    r = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                       capture_output=True, timeout=30)
    return r.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs `unshare -m` and mount (root on Linux)")


def _in_namespace(setup: str, then: str) -> list[str]:
    """A command line that runs ``setup`` (mounts) and then ``then`` in a private mount namespace."""
    return ["unshare", "-m", "sh", "-c", f"{setup} && exec {then}"]


@needs_mount
def test_a_read_only_store(tmp_path):
    """An existing store bind-mounted read-only (one node still to do): `plan` reads it; `run` and `report`
    end with one line naming the place and EROFS; the store is unchanged."""
    store = tmp_path / "store"
    rc, out, err, _ = _sweeper("run", str(store), tmp_path)
    assert rc == 0, out + err
    last = list(PLAN.nodes)[-1]
    shutil.rmtree(store / "nodes" / last)  # one node to do
    before = sorted(str(p.relative_to(store)) for p in store.rglob("*"))
    ro = tmp_path / "ro"
    ro.mkdir()
    setup = f"mount --bind {store} {ro} && mount -o remount,bind,ro {ro}"
    for cmd in ("plan", "run", "report"):
        args = [SWEEPER, cmd, str(TOY), "--store", str(ro)]
        if cmd == "run":
            args += ["--executor", "local", "--threads", "1", "--no-report", "--wandb", "disabled"]
        r = subprocess.run(_in_namespace(setup, " ".join(args)), cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
        if cmd == "plan":
            assert r.returncode == 0 and "done 7/8" in r.stdout, r.stdout + r.stderr
            continue
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        err = r.stderr.strip().splitlines()
        if cmd == "report":  # its note on the missing node comes first
            assert err[0].startswith("note: 1 of 8 nodes")
            err = err[1:]
        _one_line("\n".join(err), str(ro), "Read-only file system (EROFS)", "pick a writable --store")
    assert sorted(str(p.relative_to(store)) for p in store.rglob("*")) == before


@needs_mount
@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.ray)])
def test_a_full_disk_mid_run(tmp_path, executor):
    """A 1 MiB tmpfs as the store: the first two models fit, the synthesized set does not. One line naming the
    file and ENOSPC; every node that has a manifest is intact, the rest are not done, no temp file is left. On
    Ray the failing write happens in a synthesis actor or a Tune trial and still ends the run the same way."""
    mnt, copy = tmp_path / "mnt", tmp_path / "copy"
    mnt.mkdir()
    args = [SWEEPER, "run", str(TOY), "--store", str(mnt / "store"), "--executor", executor,
            *(["--threads", "1"] if executor == "local" else []), "--no-report", "--wandb", "disabled"]
    script = f"mount -t tmpfs -o size=1m tmpfs {mnt} && {{ {' '.join(args)}; rc=$?; cp -a {mnt}/store {copy}; " \
             "exit $rc; }"
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    _one_line(r.stderr, str(mnt / "store"), "No space left on device (ENOSPC)")
    s = Store(str(copy))
    done = [k for k in PLAN.nodes if s.is_done(k)]
    assert done and len(done) < len(PLAN.nodes)
    assert all(s.damage(k) is None for k in done)
    assert not [p for p in copy.rglob("*") if p.name.endswith(".tmp")]
    assert not [p for p in copy.rglob("*.json") if p.parent.name == "leases"]  # released on the way out


def test_an_unreachable_store_is_never_taken_for_not_done_or_damaged(s3_uri, s3_server):
    """Reads that fail for a reason other than a missing file raise StoreIOError: a node is not reported as
    "not done" (computed again) nor "damaged" (moved aside) because the endpoint went away."""
    import torch

    from sweeper.store.store import StoreIOError

    Store(s3_uri).save("k", meta={"a": 1}, tensors={"w": torch.zeros(3)})
    gone = Store(s3_uri.replace(s3_server.endpoint, f"127.0.0.1:{_free_port()}"))
    for probe in (lambda: gone.is_done("k"), lambda: gone.damage("k"), lambda: gone.load_meta("k")):
        with pytest.raises(StoreIOError, match="NETWORK_CONNECTION"):
            probe()
    assert Store(s3_uri).damage("k") is None
