"""Token authentication on the cluster that `ray up cluster.yaml` starts (issue 21).

Offline: `sweeper validate-cluster` passes the shipped file and flags one whose nodes would run without token
authentication, naming the keys to add. Real: a head (and a worker) started with the very `ray start` lines of
cluster.yaml's head_start_ray_commands / worker_start_ray_commands, on this test's own ports, temp dir, HOME and
token file, refuses the Jobs API without the token and runs `sweeper submit`/`status`/`logs` with it.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sweeper.cli import main
from sweeper.run.rayauth import probe
from sweeps import TINY, RayCluster, free_port, wait_dashboard

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = (ROOT / "cluster.yaml").read_text()
CFG = yaml.safe_load(SHIPPED)
MOUNT = "  /home/ubuntu/.ray/auth_token: ~/.ray/auth_token   # the cluster's token: yours, copied to every node\n"
HEAD_LINE = next(c for c in CFG["head_start_ray_commands"] if "ray start" in c)
WORKER_LINE = next(c for c in CFG["worker_start_ray_commands"] if "ray start" in c)
EXPORT = "export RAY_AUTH_MODE=token; "
# the ~/.bashrc line for the shells of `ray exec` / `ray attach` (comment and key)
PROFILE = SHIPPED[SHIPPED.index("# Shells that `ray exec`"):SHIPPED.index("setup_commands:")]
START_ONLY = SHIPPED.replace(PROFILE, "")  # token mode from the start lines alone


@pytest.fixture
def home(tmp_path, monkeypatch):
    """HOME with .ray/auth_token, as after `ray get-auth-token --generate` (never the real ~/.ray)."""
    h = tmp_path / "home"
    (h / ".ray").mkdir(parents=True)
    (h / ".ray" / "auth_token").write_text("0" * 32)
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.chdir(ROOT)  # `ray up` runs from the project root: file_mounts' "." is this folder
    return h


def _validate(tmp_path, text, capsys):
    p = tmp_path / "cluster.yaml"
    p.write_text(text)
    rc = main(["validate-cluster", str(p)])
    out = capsys.readouterr()
    return rc, out.out + out.err, str(p)


def _without_auth(text: str) -> str:
    """The shipped file with its auth settings removed: no token mount, no ~/.bashrc line, Ray's default start
    commands."""
    assert MOUNT in text and PROFILE in text
    text = text.replace(MOUNT, "").replace(PROFILE, "")
    start, end = text.index("head_start_ray_commands:"), text.index("# The artifact store")
    return text[:start] + text[end:]


def test_shipped_cluster_is_valid(home, tmp_path, capsys):
    rc, out, _ = _validate(tmp_path, SHIPPED, capsys)
    assert rc == 0 and out.strip().endswith(": valid"), out
    # the token is mounted, never written in the file; every `ray start` line turns token mode on
    assert "RAY_AUTH_TOKEN=" not in SHIPPED and MOUNT in SHIPPED
    assert HEAD_LINE.startswith(EXPORT) and WORKER_LINE.startswith(EXPORT)
    assert CFG["initialization_commands"] == [
        "grep -qxF 'export RAY_AUTH_MODE=token' ~/.bashrc || echo 'export RAY_AUTH_MODE=token' >> ~/.bashrc"]
    rc, out, _ = _validate(tmp_path, START_ONLY, capsys)  # the start lines alone are enough
    assert rc == 0, out
    assert CFG["available_node_types"][CFG["head_node_type"]]["resources"] == {"CPU": 0}  # no sweep work on it


def test_auth_removed_is_flagged_naming_the_keys(home, tmp_path, capsys):
    """The issue's "done when": the same file without its auth settings (Ray's default start commands, no
    token mount) fails, one line per key to add, each naming the file."""
    rc, out, path = _validate(tmp_path, _without_auth(SHIPPED), capsys)
    assert rc == 1, out
    lines = out.strip().splitlines()
    assert [ln.split(": ")[1] for ln in lines] == ["head_start_ray_commands", "worker_start_ray_commands",
                                                   "file_mounts"], out
    assert all(ln.startswith(f"{path}: ") for ln in lines) and "Traceback" not in out
    assert "not set, so Ray's default `ray start` runs on the head node without RAY_AUTH_MODE=token" in lines[0]
    assert f"put `{EXPORT}` at the start of the line that runs `ray start`" in lines[0]
    # Ray's own defaults for the provider, to copy
    assert "for your provider (`ray stop`, `ulimit -n 65536; ray start --head --port=6379 " in lines[0]
    assert "(`ray stop`, `ulimit -n 65536; ray start --address=$RAY_HEAD_IP:6379 --object-manager-port=8076`)" \
        in lines[1]
    assert "no entry puts the token at ~/.ray/auth_token" in lines[2]
    assert "add `/home/ubuntu/.ray/auth_token: ~/.ray/auth_token` under file_mounts" in lines[2]
    assert "ray get-auth-token --generate" in lines[2]


@pytest.mark.parametrize("old,new,key", [
    (HEAD_LINE, HEAD_LINE.replace(EXPORT, ""), "head_start_ray_commands"),
    (WORKER_LINE, WORKER_LINE.replace(EXPORT, ""), "worker_start_ray_commands"),
    (HEAD_LINE, HEAD_LINE.replace(EXPORT, "export RAY_AUTH_MODE=disabled; "), "head_start_ray_commands"),
    # the export in a list item of its own does not reach `ray start` (each item runs in its own shell)
    ("  - " + WORKER_LINE, "  - export RAY_AUTH_MODE=token\n  - " + WORKER_LINE.replace(EXPORT, ""),
     "worker_start_ray_commands"),
])
def test_start_line_without_token_mode_is_flagged(home, tmp_path, capsys, old, new, key):
    """Without the ~/.bashrc line, each `ray start` line must turn token mode on itself."""
    assert old in START_ONLY
    rc, out, path = _validate(tmp_path, START_ONLY.replace(old, new), capsys)
    assert rc == 1, out
    assert out.strip().splitlines() == [
        f"{path}: {key}: `ray start` runs without RAY_AUTH_MODE=token, so the cluster would run without token "
        "authentication (anyone who reaches its dashboard/Jobs port can run code on it); put "
        f"`{EXPORT}` at the start of the line that runs `ray start` (each list item runs in its own shell), as "
        "the shipped cluster.yaml does"], out


def test_token_mount_missing_or_misplaced(home, tmp_path, capsys):
    rc, out, path = _validate(tmp_path, SHIPPED.replace(MOUNT, ""), capsys)
    assert rc == 1 and out.strip().splitlines() == [
        f"{path}: file_mounts: no entry puts the token at ~/.ray/auth_token (Ray's default: RAY_AUTH_TOKEN and "
        "RAY_AUTH_TOKEN_PATH are not set) on the nodes, so `ray start` in token mode fails there; add "
        "`/home/ubuntu/.ray/auth_token: ~/.ray/auth_token` under file_mounts (your token, created once with "
        "`ray get-auth-token --generate`)"], out
    # another user's home: not where Ray looks on nodes logged into as ec2-user
    rc, out, _ = _validate(tmp_path, SHIPPED.replace("ssh_user: ubuntu", "ssh_user: ec2-user"), capsys)
    assert rc == 1 and "(/home/ubuntu/.ray/auth_token is not in the home of auth.ssh_user 'ec2-user')" in out, out
    assert "add `/home/ec2-user/.ray/auth_token: ~/.ray/auth_token`" in out
    # "~/.ray/auth_token" as the target is the same place
    rc, out, _ = _validate(tmp_path, SHIPPED.replace("/home/ubuntu/.ray/auth_token:", "~/.ray/auth_token:"), capsys)
    assert rc == 0, out


def test_no_local_token_says_how_to_create_it(home, tmp_path, capsys):
    """A machine that has no token yet: the file is still valid (exit 0), with a warning that says how to create
    the token before `ray up` (which would stop on the missing file)."""
    (home / ".ray" / "auth_token").unlink()
    rc, out, path = _validate(tmp_path, SHIPPED, capsys)
    assert rc == 0, out
    assert sorted(out.strip().splitlines()) == [
        f"{path}: valid (1 warning(s) above)",
        f"warning: {path}: file_mounts./home/ubuntu/.ray/auth_token: the local token file '~/.ray/auth_token' does "
        f"not exist yet ({home}/.ray/auth_token): before `ray up`, create the cluster's token once on this machine "
        "with `ray get-auth-token --generate` (it writes ~/.ray/auth_token; RAY_AUTH_TOKEN and RAY_AUTH_TOKEN_PATH "
        "unset)"], out


def test_other_valid_ways_are_not_flagged(home, tmp_path, capsys):
    """Valid Ray usage that is not the shipped way: Ray's documented `initialization_commands` line (a ~/.bashrc
    export, which Ray's login shells source before Ray's default start commands), RAY_AUTH_TOKEN_PATH with
    the token mounted there, docker's `-e RAY_AUTH_MODE=token`, and a setup command that fetches the token onto
    each node."""
    no_auth = _without_auth(SHIPPED)
    docs = no_auth.replace("file_mounts:\n", "file_mounts:\n  /home/ubuntu/.ray/auth_token: ~/.ray/auth_token\n")
    docs = docs.replace("setup_commands:\n", "initialization_commands:\n"
                        "  - echo \"export RAY_AUTH_MODE=token\" >> ~/.bashrc\nsetup_commands:\n", 1)
    rc, out, _ = _validate(tmp_path, docs, capsys)
    assert rc == 0, out
    # ... but a worker type with initialization_commands of its own replaces that line for its nodes
    assert "    max_workers: 2\n" in docs
    own = docs.replace("    max_workers: 2\n", "    max_workers: 2\n    initialization_commands: [echo hi]\n")
    rc, out, _ = _validate(tmp_path, own, capsys)
    assert rc == 1 and out.strip().split(": ")[1] == "worker_start_ray_commands", out

    # the shipped ~/.bashrc line alone turns token mode on for Ray's login shells (the start lines too)
    rc, out, _ = _validate(tmp_path, SHIPPED.replace(HEAD_LINE, HEAD_LINE.replace(EXPORT, "")), capsys)
    assert rc == 0, out

    path_way = START_ONLY.replace(MOUNT, "  /opt/ray/token: ~/.ray/auth_token\n").replace(
        EXPORT, "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/opt/ray/token; ")
    rc, out, _ = _validate(tmp_path, path_way, capsys)
    assert rc == 0, out
    rc, out, path = _validate(tmp_path, path_way.replace("/opt/ray/token: ", "/opt/ray/other: "), capsys)
    assert rc == 1 and out.startswith(f"{path}: file_mounts: no entry puts the token at /opt/ray/token "
                                      "(RAY_AUTH_TOKEN_PATH) on the nodes"), out

    docker = no_auth.replace("file_mounts:\n", "file_mounts:\n  ~/.ray/auth_token: ~/.ray/auth_token\n") + (
        "docker: {image: rayproject/ray-ml:2.60.0-gpu, container_name: ray, run_options: [-e RAY_AUTH_MODE=token]}\n")
    rc, out, _ = _validate(tmp_path, docker, capsys)
    assert rc == 0, out

    fetched = START_ONLY.replace(MOUNT, "").replace(
        "setup_commands:\n", "setup_commands:\n  - aws ssm get-parameter --name ray-token --with-decryption "
        "--query Parameter.Value --output text > ~/.ray/auth_token\n", 1)
    rc, out, _ = _validate(tmp_path, fetched, capsys)
    assert rc == 0, out


def test_literal_token_in_the_file_warns(home, tmp_path, capsys):
    text = START_ONLY.replace(MOUNT, "").replace(EXPORT, "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=abc123; ")
    rc, out, path = _validate(tmp_path, text, capsys)
    assert rc == 0, out  # valid Ray usage (the nodes have the token), but the token is in the file
    warnings = [ln for ln in out.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"warning: {path}: RAY_AUTH_TOKEN is set to a literal token in this file"), out
    text = START_ONLY.replace(MOUNT, "").replace(EXPORT, "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(cat /etc/t); ")
    rc, out, _ = _validate(tmp_path, text, capsys)
    assert rc == 0 and "warning" not in out, out


def test_cli_exit_code_and_one_line_per_problem(home, tmp_path):
    """As a user runs it: exit 1, the problems on stderr, no traceback."""
    p = tmp_path / "noauth.yaml"
    p.write_text(_without_auth(SHIPPED))
    env = dict(os.environ, HOME=str(home))
    r = subprocess.run([sys.executable, "-m", "sweeper.cli", "validate-cluster", str(p)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 3, r.stderr
    r = subprocess.run([sys.executable, "-m", "sweeper.cli", "validate-cluster", "cluster.yaml"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "cluster.yaml: valid\n" and r.stderr == "", r.stderr


# ---------------------------------------------------------------- a real head started as cluster.yaml starts it


def _own_ports(line: str, swaps: dict[str, str], drop: tuple[str, ...] = (), add: tuple[str, ...] = ()) -> str:
    """cluster.yaml's `ray start` line with this test's ports: each ``--flag=value`` of ``swaps`` must be there
    and gets the new value; ``drop`` flags are removed; ``add`` flags appended. Everything else stays."""
    for flag, value in swaps.items():
        line, n = re.subn(rf"{flag}=\S+", f"{flag}={value}", line)
        assert n == 1, f"{flag} not in {line!r}"
    for flag in drop:
        line, n = re.subn(rf"\s{flag}=\S+", "", line)
        assert n == 1, f"{flag} not in {line!r}"
    return " ".join([line, *add])


def _run_line(cluster: RayCluster, line: str, **env) -> subprocess.CompletedProcess:
    """One start command as `ray up`'s node updater runs it: a bash command line, with the variables `ray up`
    exports for it (RAY_OVERRIDE_RESOURCES: the node type's resources)."""
    return subprocess.run(["bash", "-c", line], env={**cluster.env, **env}, capture_output=True, text=True,
                          timeout=180, cwd=cluster.temp_dir)


def _node_env(tmp_path, token_file) -> dict:
    """A node's environment: the venv first on PATH (a job's `python` is the head's), no RAY_AUTH_* but the
    token file (RAY_AUTH_MODE must come from cluster.yaml's line), an empty HOME of the test's own."""
    node_home = tmp_path / "node-home"
    node_home.mkdir(exist_ok=True)
    env = {"PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}", "HOME": str(node_home)}
    if token_file:
        env["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    return env


@pytest.fixture
def own_cluster(tmp_path):
    """``make(token_file)``: a RayCluster (its own temp dir; nothing started yet) whose nodes get _node_env;
    at teardown only its own processes are stopped (RayCluster.stop) and its temp dir is removed."""
    made = []

    def make(token_file) -> RayCluster:
        cluster = RayCluster(unset=("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"))
        cluster.env.update(_node_env(tmp_path, token_file))  # after `unset`, which drops the conftest's token
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def _head_line(cluster: RayCluster, dashboard_port: int | None) -> str:
    """cluster.yaml's `ray start --head` line on this test's own ports and temp dir, on loopback, without the
    cloud autoscaler (`--autoscaling-config` names the file `ray up` writes on a real head); sets
    cluster.address so that its stop() finds this cluster's processes (and only those)."""
    port = free_port()
    dash = ([f"--dashboard-port={dashboard_port}"] if dashboard_port else ["--include-dashboard=false"])
    cluster.address = f"127.0.0.1:{port}"
    return _own_ports(HEAD_LINE, {"--port": str(port), "--object-manager-port": str(free_port()),
                                  "--dashboard-host": "127.0.0.1"},
                      drop=("--autoscaling-config",),
                      add=(*dash, f"--dashboard-agent-listen-port={free_port()}",
                           f"--ray-client-server-port={free_port()}", "--node-ip-address=127.0.0.1",
                           f"--temp-dir={cluster.temp_dir}", "--disable-usage-stats"))


@pytest.mark.ray
@pytest.mark.slow  # ~40 s (a head, a worker, a job); .ci/run runs the slow tests after `make test`
def test_head_from_cluster_yaml_requires_the_token(own_cluster, tmp_path, monkeypatch, capsys):
    """cluster.yaml's head and worker `ray start` lines, verbatim but for ports, temp dir and the cloud
    autoscaler (`--autoscaling-config` names the file `ray up` writes on a real head): the Jobs API and the
    GCS refuse requests without the token, sweeper says so in one line (exit 4), and with the token a tiny
    sweep is submitted, followed and read back. The head offers no CPU (cluster.yaml's `resources: {CPU: 0}`,
    which `ray up` passes as RAY_OVERRIDE_RESOURCES), so the sweep's trial runs on the worker."""
    import requests

    token_file = tmp_path / "auth_token"
    token = "5" * 32
    token_file.write_text(token)
    cluster = own_cluster(token_file)
    dash = free_port()
    url = f"http://127.0.0.1:{dash}"
    head = _head_line(cluster, dash)
    port = cluster.address.rsplit(":", 1)[1]
    worker = _own_ports(WORKER_LINE.replace(":6379", f":{port}"), {"--object-manager-port": str(free_port())},
                        add=("--num-cpus=1", "--node-ip-address=127.0.0.1", f"--node-manager-port={free_port()}",
                             f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"))
    head_resources = CFG["available_node_types"][CFG["head_node_type"]]["resources"]
    times = {}
    t0 = time.time()
    r = _run_line(cluster, head, RAY_OVERRIDE_RESOURCES=json.dumps(head_resources))
    assert r.returncode == 0, r.stderr[-3000:]
    times["head"] = time.time() - t0
    r = _run_line(cluster, worker, RAY_HEAD_IP="127.0.0.1")
    assert r.returncode == 0, r.stderr[-3000:]
    times["worker"] = time.time() - t0 - times["head"]
    wait_dashboard(url, token)
    times["dashboard"] = time.time() - t0 - times["head"] - times["worker"]

    # the head requires the token: on the Jobs API (HTTP) and on the GCS (gRPC)
    assert requests.get(f"{url}/api/jobs/", timeout=10).status_code == 401
    assert requests.get(f"{url}/api/jobs/", headers={"Authorization": "Bearer " + "6" * 32},
                        timeout=10).status_code == 403
    assert probe(cluster.address) == "unauthenticated" and probe(cluster.address, token) == "ok"
    # the head offers no CPU or GPU; the worker's CPU is what the sweep gets
    nodes = requests.get(f"{url}/api/v0/nodes", headers={"Authorization": f"Bearer {token}"},
                         timeout=10).json()["data"]["result"]["result"]
    by_role = {n["is_head_node"]: n["resources_total"] for n in nodes if n["state"] == "ALIVE"}
    assert by_role[True].get("CPU", 0) == 0 and "GPU" not in by_role[True], by_role
    assert by_role[False].get("CPU") == 1, by_role

    project = tmp_path / "project"  # the job's working directory (uploaded); the store lies outside it
    project.mkdir()
    (project / "authcheck.yaml").write_text(TINY.replace("STORE", str(tmp_path / "store")))
    monkeypatch.chdir(project)

    # sweeper without the token: refused, one line, exit 4
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "client-home"))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "no-token-here"))
    for cmd in (["submit", "authcheck.yaml"], ["status", "nosuchjob"], ["logs", "nosuchjob"]):
        assert main([*cmd, "--address", url]) == 4
        out = capsys.readouterr()
        err = out.err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(
            f"sweeper: {url}: the Ray cluster requires token authentication and no token was found here"), err
        assert out.out == ""

    # with the token: submit a tiny sweep, follow it, read its logs
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    t0 = time.time()
    rc = main(["submit", "authcheck.yaml", "--address", url, "--wait"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-4000:]
    times["job"] = time.time() - t0
    job = out.out.strip().splitlines()[-1]
    assert job.startswith("sweeper-authcheck-")
    assert main(["status", job, "--address", url]) == 0
    assert capsys.readouterr().out.strip() == "SUCCEEDED"
    assert main(["logs", job, "--address", url]) == 0
    assert "ran 1 nodes" in capsys.readouterr().out
    print(" ".join(f"{k} {v:.1f} s" for k, v in times.items()), file=sys.stderr)


@pytest.mark.ray
def test_head_line_refuses_to_start_without_a_token(own_cluster):
    """Token mode comes from cluster.yaml's line itself: on a node where the token did not arrive (no
    ~/.ray/auth_token, no RAY_AUTH_TOKEN*), its `ray start --head` stops with an error rather than running a
    cluster without authentication (Ray 2.60 would start one, with a warning, without RAY_AUTH_MODE=token)."""
    cluster = own_cluster(None)
    r = _run_line(cluster, _head_line(cluster, None))
    assert r.returncode != 0, "the head started without a token"
    assert "Token authentication is enabled but no authentication token was found" in r.stderr + r.stdout
    assert cluster.processes() == []
