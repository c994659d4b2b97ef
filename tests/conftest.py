import os
import secrets
import shutil
import tempfile

import pytest
import torch

# One temp folder for the whole test session, removed when it ends: TMPDIR points here, so pytest's tmp_path
# folders, every Ray the tests start (sweeper's local Ray under $TMPDIR/ray, `ray start` clusters' --temp-dir),
# W&B's and multiprocessing's temp files all land inside it, and nothing is left in /tmp. Short, because Ray's
# unix socket paths (under a session folder of ~40 characters) must stay under 108 characters.
_SESSION_TMP = tempfile.mkdtemp(prefix="swt-", dir="/tmp")
os.environ["TMPDIR"] = _SESSION_TMP
os.environ["SWEEPER_CACHE"] = os.path.join(_SESSION_TMP, "cache")  # datasets fetched from stores: not ~/.cache
tempfile.tempdir = None  # re-read TMPDIR

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray token authentication, handled explicitly: every Ray the tests start (sweeper's own local Ray, `ray start`
# heads and worker nodes) runs in token mode with one token in a temp file, so nothing reads or writes
# ~/.ray/auth_token (Ray 2.60 creates that file on a plain ray.init() and then turns auth on for `ray start`).
_TOKEN_DIR = _SESSION_TMP
with open(os.path.join(_TOKEN_DIR, "auth_token"), "w") as _f:
    _f.write(secrets.token_hex(32))
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = os.path.join(_TOKEN_DIR, "auth_token")
os.environ.pop("RAY_AUTH_TOKEN", None)
os.environ.pop("RAY_ADDRESS", None)  # `sweeper run` in the tests starts its own local Ray unless told otherwise
os.environ["WANDB_MODE"] = "disabled"  # the W&B tests turn it on with --wandb offline
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_SWEEP = """
name: tiny
seed: 0
data: {dataset: fashion_mnist, test_size: 200}
run: {store: STORE, shard_size: 100}
stages:
  std:
    kind: train
    arch: small_cnn
    train_size: 1000
    train: &t {epochs: 2, batch_size: 128, optimizer: sgd, lr: 0.05, schedule: cosine}
  std_b: {kind: train, arch: small_cnn, train_size: 1000, seed: 1, train: *t}
  robust:
    kind: train
    arch: small_cnn
    train_size: 1000
    train: *t
    adversarial: {norm: l2, eps: 1.0, steps: 2, step_size: 0.5}
  d_r: {kind: synthesize, from: robust, method: inversion, size: 200,
        inversion: {steps: 5, step_size: 0.5, start: other_image, loss: l2}}
  d_nr: {kind: synthesize, from: std, method: inversion, size: 200,
         inversion: {steps: 5, step_size: 0.5, start: other_image, loss: l2}}
  d_rand: {kind: synthesize, from: std, method: relabel, size: 200, targets: random,
           attack: {norm: l2, eps: 2.0, steps: 5, step_size: 0.5}}
  d_det: {kind: synthesize, from: std, method: relabel, size: 200, targets: deterministic,
          attack: {norm: l2, eps: 2.0, steps: 5, step_size: 0.5}}
  baseline: {kind: train, arch: small_cnn, train_size: 200, train: *t}
  train_d_r: {kind: train, from: d_r, arch: small_cnn, train: *t}
  train_d_nr: {kind: train, from: d_nr, arch: small_cnn, train: *t}
  train_d_rand: {kind: train, from: d_rand, arch: small_cnn, train: *t}
  train_d_det: {kind: train, from: d_det, arch: small_cnn, train: *t}
  probe: {kind: transfer, from: d_det, models: [robust, std_b]}
  eval:
    kind: evaluate
    from: [std, robust, baseline, train_d_r, train_d_nr, train_d_rand, train_d_det]
    attacks: [{norm: l2, eps: 0.5, steps: 3}, {norm: l2, eps: 1.0, steps: 3}]
"""


@pytest.fixture
def tiny_sweep(tmp_path):
    """A tiny sweep file over real Fashion-MNIST subsets, with its store under tmp_path."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SWEEP.replace("STORE", str(tmp_path / "store")))
    return path


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API server (moto) on loopback, a child process of this test run, with one bucket."""
    from s3server import S3Server

    server = S3Server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_uri(s3_server):
    """A fresh, empty store URI on the S3 server: s3://bucket/<unique>?endpoint_override=...&scheme=http."""
    return s3_server.uri()


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path):
    """The same test on a local folder and on the S3 server."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_uri")


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's temp folder (see the top of this file) with everything the tests left in it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    import time
    import warnings

    for attempt in range(5):  # a Ray process still stopping may write a log file while the folder goes
        try:
            shutil.rmtree(_SESSION_TMP, onerror=_gone_is_fine)
            return
        except OSError as e:
            error = e
            time.sleep(1)
    warnings.warn(f"could not remove the test session's temp folder {_SESSION_TMP}: {error}")


def _gone_is_fine(func, path, exc_info):
    """rmtree: a file that a process still stopping removed meanwhile is fine; anything else is raised."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]
