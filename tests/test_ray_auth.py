"""Joining a Ray head that a user started, with or without token authentication (Ray 2.60), without the user
setting anything: `sweeper run --address` and the Jobs API commands (`sweeper status --address`).

Each head is a plain `ray start --head` with RAY_AUTH_MODE unset and HOME set to a temp dir: with a token in
that HOME's .ray/auth_token Ray turns authentication on, without one it stays off. sweeper runs as a
subprocess with the same kind of HOME and no RAY_AUTH_* variables, so nothing reads or writes the real ~/.ray.
"""
import os
import secrets
import subprocess
import sys
import time

import pytest

from sweeper.run.rayauth import probe
from sweeps import TINY, RayCluster, free_port

pytestmark = pytest.mark.ray

AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    """Two HOME dirs: one holding .ray/auth_token (as after any local ray.init()), one without."""
    with_token = tmp_path_factory.mktemp("home-token")
    (with_token / ".ray").mkdir()
    token = secrets.token_hex(32)
    (with_token / ".ray" / "auth_token").write_text(token)
    return {"token": str(with_token), "none": str(tmp_path_factory.mktemp("home-none")), "value": token}


def _head(home: str) -> tuple[RayCluster, str, str]:
    """A plain `ray start --head` as a user runs it (no RAY_AUTH_* set), with the Jobs API; (cluster, GCS
    address, dashboard URL)."""
    bindir = os.path.dirname(sys.executable)
    cluster = RayCluster(unset=AUTH_ENV, HOME=home, PATH=f"{bindir}:{os.environ.get('PATH', '')}")
    dash = free_port()
    address = cluster.start_head(num_cpus=1, dashboard_port=dash)
    return cluster, address, f"http://127.0.0.1:{dash}"


def _wait_dashboard(url: str, token: str | None, timeout: float = 60) -> None:
    import requests

    end = time.time() + timeout
    while time.time() < end:
        try:
            if requests.get(f"{url}/api/jobs/", timeout=5,
                            headers={"Authorization": f"Bearer {token}"} if token else {}).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"dashboard at {url} not ready after {timeout} s")


def _sweeper(home: str, *args, **env) -> subprocess.CompletedProcess:
    """`sweeper ARGS` as a user runs it: this HOME, none of the RAY_AUTH_* variables unless given here."""
    e = {k: v for k, v in os.environ.items() if k not in AUTH_ENV}
    e.update(HOME=home, RAY_USAGE_STATS_ENABLED="0", **env)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "sweeper.cli", *args], env=e, capture_output=True, text=True,
                       timeout=600)
    print(f"sweeper {args[0]} ({'+'.join(env) or 'HOME ' + os.path.basename(home)}): rc {r.returncode} in "
          f"{time.time() - t0:.1f} s", file=sys.stderr)
    return r


def _sweep(tmp_path):
    p = tmp_path / "authcheck.yaml"
    p.write_text(TINY.replace("STORE", str(tmp_path / "store")))
    return str(p)


def test_head_without_auth(homes, tmp_path):
    """A head with authentication off: joined with a token on disk (sweeper must not force token mode on it,
    and the Jobs header is ignored) and without one."""
    cluster, address, url = _head(homes["none"])
    try:
        assert probe(address) == "ok"  # authentication is off on this head
        sweep = _sweep(tmp_path)
        r = _sweeper(homes["token"], "run", sweep, "--address", address, "--no-report")
        assert r.returncode == 0, r.stderr[-3000:]
        assert "ran 1 nodes" in r.stdout, r.stdout[-2000:]
        r = _sweeper(homes["none"], "run", sweep, "--address", address, "--no-report")
        assert r.returncode == 0 and "ran 0 nodes" in r.stdout, r.stderr[-3000:]
        _wait_dashboard(url, None)
        r = _sweeper(homes["token"], "status", "nosuchjob", "--address", url)
        assert r.returncode == 4 and "token" not in r.stderr and "nosuchjob" in r.stderr, r.stderr  # not refused
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def auth_head(homes):
    """A head started as `ray start --head` by a user whose ~/.ray/auth_token exists: authentication on."""
    cluster, address, url = _head(homes["token"])
    try:
        _wait_dashboard(url, homes["value"])
        yield address, url
    finally:
        cluster.stop()


def test_plain_head_turns_auth_on_when_a_token_exists(auth_head, homes):
    address, url = auth_head
    assert probe(address) == "unauthenticated"
    assert probe(address, homes["value"]) == "ok"


def test_run_joins_auth_head_with_the_token_on_disk(auth_head, homes, tmp_path):
    """No RAY_AUTH_MODE: sweeper finds ~/.ray/auth_token, sees the cluster requires it, and joins in token mode;
    then the token from RAY_AUTH_TOKEN (no file) works the same."""
    address, _ = auth_head
    sweep = _sweep(tmp_path)
    r = _sweeper(homes["token"], "run", sweep, "--address", address, "--no-report")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ran 1 nodes" in r.stdout, r.stdout[-2000:]
    r = _sweeper(homes["none"], "run", sweep, "--address", address, "--no-report", RAY_AUTH_TOKEN=homes["value"])
    assert r.returncode == 0 and "ran 0 nodes" in r.stdout, r.stderr[-3000:]


def _one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-3000:]
    return lines[0]


def test_run_without_token_says_what_to_set(auth_head, homes, tmp_path):
    address, _ = auth_head
    t0 = time.time()
    r = _sweeper(homes["none"], "run", _sweep(tmp_path), "--address", address, "--no-report")
    assert r.returncode == 4, r.stderr[-3000:]
    line = _one_line(r)
    assert line.startswith(f"sweeper: {address}: the Ray cluster requires token authentication"), line
    assert "export RAY_AUTH_TOKEN=" in line and "RAY_AUTH_TOKEN_PATH" in line and "ray get-auth-token" in line
    assert time.time() - t0 < 30  # said at once (Ray's own connect fails after ~20 s with a bare ConnectionError)
    # a wrong token: refused, naming where it came from
    r = _sweeper(homes["none"], "run", _sweep(tmp_path), "--address", address, "--no-report",
                 RAY_AUTH_TOKEN="0" * 64)
    assert r.returncode == 4 and "refused the token from RAY_AUTH_TOKEN" in _one_line(r), r.stderr[-3000:]


def test_jobs_api_on_auth_head(auth_head, homes):
    """`sweeper status` sends the token found on disk; without one, one line saying what to set."""
    _, url = auth_head
    r = _sweeper(homes["none"], "status", "nosuchjob", "--address", url)
    assert r.returncode == 4 and "export RAY_AUTH_TOKEN=" in _one_line(r), r.stderr[-3000:]
    r = _sweeper(homes["token"], "status", "nosuchjob", "--address", url)
    assert r.returncode == 4 and "token" not in r.stderr and "nosuchjob" in _one_line(r), r.stderr[-3000:]


def test_nothing_listening_fails_at_once(homes, tmp_path):
    """Ray's own connect to a closed port retries for over 10 minutes; sweeper says so in one line."""
    address = f"127.0.0.1:{free_port()}"
    r = _sweeper(homes["none"], "run", _sweep(tmp_path), "--address", address, "--no-report")
    assert r.returncode == 4 and f"cannot reach a Ray cluster at {address}" in _one_line(r), r.stderr[-3000:]


def test_find_token_follows_rays_order(tmp_path, monkeypatch):
    from sweeper.run.rayauth import find_token

    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("fromhome\n")
    (tmp_path / "tok").write_text("frompath")
    for k in AUTH_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(home))
    assert find_token() == ("fromhome", str(home / ".ray" / "auth_token"))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert find_token()[0] == "frompath"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))  # set but missing: no fallback, as Ray
    assert find_token()[0] is None and "missing" in find_token()[1]
    monkeypatch.setenv("RAY_AUTH_TOKEN", "fromenv")
    assert find_token() == ("fromenv", "RAY_AUTH_TOKEN")
