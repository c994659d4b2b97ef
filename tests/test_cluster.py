"""The `ray up` path: `sweeper validate-cluster` offline, and `sweeper submit` to a real local head's Jobs API."""
import json
import os
import secrets
import sys
import time
from pathlib import Path

import pytest

from sweeper.cli import main
from sweeps import SMALL, RayCluster, free_port, wait_dashboard

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = (ROOT / "cluster.yaml").read_text()


@pytest.fixture(autouse=True)
def _token_home(request, tmp_path_factory, monkeypatch):
    """cluster.yaml mounts the user's ~/.ray/auth_token: validate-cluster checks that it exists. The offline
    tests get a HOME of their own holding one (never the real ~/.ray); the real-head test keeps its HOME."""
    if request.node.get_closest_marker("ray"):
        return
    home = tmp_path_factory.mktemp("home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("0" * 32)
    monkeypatch.setenv("HOME", str(home))


def _variant(tmp_path, text):
    p = tmp_path / "cluster.yaml"
    p.write_text(text)
    return p


def _validate(path, capsys):
    rc = main(["validate-cluster", str(path)])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_shipped_cluster_is_valid(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # `ray up` runs from the project root: file_mounts' "." is this folder
    rc, out = _validate(ROOT / "cluster.yaml", capsys)
    assert rc == 0 and "valid" in out
    assert "warning" not in out, out  # .venv, store, ... are excluded from the mount


def test_heavy_folders_in_a_mount_warn(tmp_path, capsys, monkeypatch):
    """A mounted folder holding .venv / store / wandb that rsync_exclude does not exclude: valid (exit 0), with
    one warning line naming the file, the key and the folders; excluded ones (also through rsync_filter's
    .gitignore) are not named."""
    proj = tmp_path / "proj"
    for d in (".venv", "store", "wandb", "sweeper", "search_spaces"):
        (proj / d).mkdir(parents=True)
    monkeypatch.chdir(proj)
    head, tail = SHIPPED[:SHIPPED.index("rsync_exclude:")], SHIPPED[SHIPPED.index("\nsetup_commands:"):]
    path = _variant(tmp_path, head + tail)
    assert "rsync_exclude" not in path.read_text()
    rc, out = _validate(path, capsys)
    assert rc == 0, out
    warnings = [ln for ln in out.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, out
    assert warnings[0].startswith(f"warning: {path}: file_mounts./home/ubuntu/sweeper: the mounted folder '.'"), out
    assert "holds .venv, store, wandb, which rsync_exclude does not exclude" in warnings[0], out
    assert f"{path}: valid (1 warning(s) above)" in out
    (proj / ".gitignore").write_text("# local\n/wandb/\n")
    path.write_text(head + "rsync_exclude: [.venv/, /store]\nrsync_filter: [.gitignore]\n" + tail)
    rc, out = _validate(path, capsys)
    assert rc == 0 and "warning" not in out, out
    path.write_text(head + "rsync_exclude: [.venv/]\n" + tail)
    rc, out = _validate(path, capsys)
    assert rc == 0 and "holds store, wandb, which" in out, out


@pytest.mark.parametrize("old,new,expected", [
    ("idle_timeout_minutes: 10", "idle_timeout_minute: 10", "idle_timeout_minute"),
    ("head_node_type: head", "head_node_type: hed", "head_node_type: 'hed' is not one of available_node_types"),
    ("resources: {GPU: 1}", "resources: {GPU: 0.5}",
     "available_node_types.gpu_spot.resources.GPU: 0.5 is not an integer"),
    ("  - python3 -m pip install -q -e /home/ubuntu/sweeper\n", "", "setup_commands: no command installs sweeper"),
    # a string where Ray wants a list (crashed with a TypeError before)
    (SHIPPED[SHIPPED.index("setup_commands:"):SHIPPED.index("\n\n", SHIPPED.index("setup_commands:"))],
     'setup_commands: "python3 -m pip install -e /home/ubuntu/sweeper"',
     "cluster.yaml: setup_commands: is a string ('python3 -m pip install -e /home/ubuntu/"),
    ("max_workers: 8\n    resources", "max_workers: -3\n    resources",
     "cluster.yaml: available_node_types.gpu_spot.max_workers: -3 is not a whole number >= 0"),
    ("max_workers: 2\n", "max_workers: 2\n    min_workers: 3\n",
     "cluster.yaml: available_node_types.gpu_4x.min_workers: 3 is more than max_workers (2)"),
    ("/home/ubuntu/sweeper: .  ", "/home/ubuntu/sweeper: ./no-such-folder  ",
     "cluster.yaml: file_mounts./home/ubuntu/sweeper: the local source './no-such-folder' does not exist"),
])
def test_broken_variants_refused(tmp_path, capsys, old, new, expected):
    assert old in SHIPPED
    text = SHIPPED.replace(old, new)
    rc, out = _validate(_variant(tmp_path, text), capsys)
    assert rc == 1, out
    assert expected in out, out
    assert out.startswith(str(tmp_path / "cluster.yaml") + ": ")
    assert "Traceback" not in out


def test_typo_key_names_the_key(tmp_path, capsys):
    rc, out = _validate(_variant(tmp_path, SHIPPED.replace("max_workers: 8\nidle", "max_worker: 8\nidle")), capsys)
    assert rc == 1 and "cluster.yaml: max_worker: Ray's schema: Additional properties are not allowed" in out, out


def test_workers_need_shared_store(tmp_path, capsys):
    text = "\n".join(line for line in SHIPPED.splitlines() if "s3://" not in line)
    rc, out = _validate(_variant(tmp_path, text), capsys)
    assert rc == 1 and "the artifact store must be shared storage (s3://, gs://)" in out, out
    # no workers at all: no shared store needed (but then no GPU worker type either)
    text = text.replace("max_workers: 8\n    resources", "max_workers: 0\n    resources").replace(
        "max_workers: 2", "max_workers: 0")
    rc, out = _validate(_variant(tmp_path, text), capsys)
    assert "shared storage" not in out, out


def test_yaml_error(tmp_path, capsys):
    rc, out = _validate(_variant(tmp_path, "cluster_name: [x\n"), capsys)
    assert rc == 1 and "YAML syntax error" in out


# ---------------------------------------------------------------- a real head with the Jobs API


@pytest.mark.ray
@pytest.mark.slow  # ~50 s; .ci/run runs the slow tests after `make test`
def test_submit_to_real_head(tmp_path, capsys, monkeypatch):
    """Token authentication on: in Ray 2.60 `ray start --head` turns it on when a token exists (or with
    RAY_AUTH_MODE=token); it does not create one. The token lives in a temp file, not ~/.ray/auth_token."""
    dash = free_port()
    url = f"http://127.0.0.1:{dash}"
    bindir = os.path.dirname(sys.executable)
    token_file = tmp_path / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    cluster = RayCluster(PATH=f"{bindir}:{os.environ.get('PATH', '')}", RAY_AUTH_MODE="token",
                         RAY_AUTH_TOKEN_PATH=str(token_file))
    cluster.env.pop("RAY_AUTH_TOKEN", None)
    cluster.start_head(num_cpus=2, dashboard_port=dash, cwd=ROOT)
    try:
        wait_dashboard(url, token_file.read_text())
        # without the token: refused with a message that says how to fix it
        monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
        assert main(["status", "nosuchjob", "--address", url]) == 4
        assert "export RAY_AUTH_TOKEN=" in capsys.readouterr().err
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
        # the sweep file must live in the uploaded project dir; the store is an absolute path outside it
        monkeypatch.chdir(ROOT)
        sub = ROOT / ".sweeper-submit"
        sub.mkdir(exist_ok=True)
        sweep = sub / f"test-small-{os.getpid()}.yaml"
        store = tmp_path / "store"
        sweep.write_text(SMALL.replace("STORE", str(store)))
        override = ["--set", "stages.eval.attacks=[{norm: l2, eps: 0.5, steps: 2}]"]
        try:
            t0 = time.time()
            # --code upload: the project folder travels as the job's working directory (the default, installed,
            # runs the nodes' own sweeper and sends only the sweep's text: the resubmission below)
            rc = main(["submit", str(sweep.relative_to(ROOT)), "--address", url, "--wait", "--code", "upload",
                       *override])
            out = capsys.readouterr()
            assert rc == 0, out.err[-4000:]
            print(f"first job: {time.time() - t0:.0f} s", file=sys.stderr)
            job = out.out.strip().splitlines()[-1]
            assert job.startswith("sweeper-small-")
            assert main(["status", job, "--address", url]) == 0
            assert capsys.readouterr().out.strip() == "SUCCEEDED"
            rows = json.loads((store / "reports" / "small" / "results.json").read_text())
            assert len(rows) == 2, rows
            assert all("robust_acc[l2_eps0.5_s2]" in r for r in rows), rows[0]  # --set reached the job
            # resubmitting the same sweep resumes: everything is in the store, so the job runs no node
            monkeypatch.chdir(tmp_path)  # installed code: the sweep file may live anywhere
            assert main(["submit", str(sweep), "--address", url, "--wait", *override]) == 0
            job2 = capsys.readouterr().out.strip().splitlines()[-1]
            assert job2 != job
            assert main(["logs", job2, "--address", url]) == 0
            assert "ran 0 nodes" in capsys.readouterr().out
        finally:
            sweep.unlink()
            (sub / "small.yaml").unlink(missing_ok=True)
            if not any(sub.iterdir()):
                sub.rmdir()
    finally:
        cluster.stop()


def test_fake_autoscaling_config_follows_cluster_yaml():
    """The autoscaling tests' cluster (tests/fakecluster.py) has cluster.yaml's node types: the same worker type
    names and counts, a head with nothing for work, one CPU per GPU; Ray's own schema accepts it."""
    import yaml
    from fakecluster import fake_config
    from ray.autoscaler._private.util import prepare_config, validate_config

    shipped = yaml.safe_load(SHIPPED)
    fake = fake_config(ROOT / "cluster.yaml", "127.0.0.1:1", idle_timeout_minutes=0.15)
    workers = {k: v for k, v in shipped["available_node_types"].items() if k != shipped["head_node_type"]}
    assert set(fake["available_node_types"]) == {"ray.head.default", *workers}
    assert fake["max_workers"] == shipped["max_workers"]
    assert fake["available_node_types"]["ray.head.default"]["resources"] == {"CPU": 0}
    for name, nt in workers.items():
        got = fake["available_node_types"][name]
        assert (got["min_workers"], got["max_workers"]) == (nt.get("min_workers", 0), nt["max_workers"])
        assert got["resources"]["CPU"] == nt["resources"]["GPU"]
    assert fake_config(ROOT / "cluster.yaml", "127.0.0.1:1")["idle_timeout_minutes"] == shipped["idle_timeout_minutes"]
    validate_config(prepare_config(fake))


def test_submit_refuses_what_the_job_could_not_resolve(tmp_path, capsys, monkeypatch):
    """Before any request: a relative data.root (the job would read it in its own folder on the head) and '-' are
    refused with one line, exit 4."""
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "rel.yaml"
    sweep.write_text(SMALL.replace("STORE", str(tmp_path / "store")).replace(
        "data: {dataset: fashion_mnist,", "data: {dataset: fashion_mnist, root: ./data/fmnist,"))
    assert main(["submit", str(sweep), "--address", "http://127.0.0.1:9"]) == 4
    err = capsys.readouterr().err
    assert "data.root is the relative path './data/fmnist'" in err and "--set data.root=store" in err, err
    assert main(["submit", "-", "--address", "http://127.0.0.1:9"]) == 4
    assert "needs a sweep file (not '-')" in capsys.readouterr().err
