"""The `ray up` cluster path: submit sweeps to a running cluster as Ray jobs, follow them, fetch results.

This is an edge module (it imports Ray). Flow: `validate_cluster("cluster.yaml")` (sweeper.cluster.clusterfile, offline)
-> `ray up cluster.yaml` ->
`submit(sweep_file, "http://127.0.0.1:8265", store="s3://...")` -> `wait(...)` -> `fetch_results(...)`.

Resubmitting the same sweep resumes it: the job runs `sweeper run`, which skips every node already done in
the store (and every finished synthesis shard), so only unfinished work runs again. That needs the same store,
which is why a cluster with workers must use shared storage (s3://, gs://).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from sweeper.cluster.clusterfile import check_cluster, validate_cluster  # noqa: F401 - the cluster path's API, in one place
from sweeper.errors import ClusterError

WANDB_ENV = ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY")
# Uploaded with every job: the repo minus anything large or private. Patterns follow .gitignore syntax.
EXCLUDES = [".venv", ".venv/**", "store", "store/**", "data", "data/**", "wandb", "wandb/**", ".git", ".git/**",
            "__pycache__", "**/__pycache__", "*.egg-info", "**/*.egg-info", "*.pyc", ".pytest_cache", ".ci"]
SUBMIT_DIR = ".sweeper-submit"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

# ------------------------------------------------------------------ jobs
def _auth_error(address: str) -> "ClusterError":
    """One line for a request the cluster refused (401/403): no token here, or the wrong one."""
    from sweeper.run.rayauth import find_token, missing_token_message, refused_token_message

    tok, where = find_token()
    return ClusterError(refused_token_message(address, where) if tok else missing_token_message(address, where))


def _client(address: str):
    """A JobSubmissionClient that sends the cluster token explicitly when one is available (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, as rayauth.find_token reads them): Ray only adds it itself when
    this process runs in token mode. A cluster without authentication ignores the header (measured, Ray 2.60)."""
    import requests
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    from sweeper.run.rayauth import find_token

    tok, _ = find_token()
    headers = {"Authorization": f"Bearer {tok}"} if tok else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError:
        raise _auth_error(address) from None
    except (ConnectionError, requests.ConnectionError) as exc:
        raise ClusterError(f"cannot reach the Ray dashboard at {address} ({str(exc).splitlines()[0]}); is the "
                           "cluster up and the port forwarded (`ray dashboard cluster.yaml`)?") from None


def _call(address: str, fn, retry_connection: bool = False):
    import requests
    from ray.exceptions import AuthenticationError

    try:
        return fn(_client(address))
    except requests.ConnectionError as exc:
        if retry_connection:
            raise
        raise ClusterError(f"{address}: connection lost ({str(exc).splitlines()[0]}); try again") from None
    except AuthenticationError:
        raise _auth_error(address) from None
    except RuntimeError as exc:  # unknown job id and other server-side refusals
        raise ClusterError(f"{address}: {str(exc).splitlines()[0]}") from None


CODE_MODES = ("installed", "upload")
SWEEP_ENV = "SWEEPER_SWEEP_YAML"  # the submitted sweep file's text, in the job's environment (code="installed")


def submit(sweep_file: str | os.PathLike, address: str, *, overrides: Optional[dict[str, Any]] = None,
           store: Optional[str] = None, wandb: Optional[str] = None, extra_env: Optional[dict[str, str]] = None,
           wait: bool = False, timeout: float = 24 * 3600, code: str = "installed") -> str:
    """Submit `sweeper run` of a sweep file as a Ray job; returns the job id.

    ``code="installed"`` (default): the job runs the sweeper installed on the cluster's nodes (cluster.yaml's
    setup_commands install it) and uploads nothing: the sweep file's text (with ``overrides`` applied) travels
    in the job's environment and is piped into `sweeper run -`. The job then does not depend on a working
    directory that Ray unpacks on each node, which an autoscaling cluster re-creates when a new node first runs
    the job's work. ``code="upload"``: the project directory (cwd; the sweep file must be inside it) is uploaded
    as the job's working directory without .venv, store, data, wandb and .git, so code changed here since
    `ray up` runs there; with ``overrides`` the overridden file is written to .sweeper-submit/<name>.yaml.
    Submitting the same sweep again resumes it: nodes already in the store are skipped.
    """
    from sweeper.sweep.spec import load_raw

    if code not in CODE_MODES:
        raise ValueError(f"code={code!r}: expected one of {', '.join(CODE_MODES)}")
    if str(sweep_file) == "-":
        raise ClusterError("sweeper submit needs a sweep file (not '-'): its text is sent with the job")
    raw, sweep = load_raw(sweep_file, overrides)
    text = yaml.safe_dump(raw, sort_keys=False) if overrides else Path(sweep_file).read_text()
    eff = store or sweep.run.store
    if "://" not in eff and not os.path.isabs(os.path.expanduser(eff)):
        raise ClusterError(f"{sweep_file}: run.store is the relative path {eff!r}, which the job would resolve "
                           "inside its own folder on the head (and lose); pass --store s3://bucket/store "
                           "(or an absolute path on a single-node cluster)")
    root = sweep.data.root
    if root and root != "store" and "://" not in root and not os.path.isabs(os.path.expanduser(root)):
        raise ClusterError(f"{sweep_file}: data.root is the relative path {root!r}, which the job would resolve in "
                           "its own folder on the head; push the data once (`sweeper data push DATASET --store "
                           "URI`) and submit with --set data.root=store, or give an absolute path on the nodes")
    opts = (["--store", store] if store else []) + (["--wandb", wandb] if wandb else [])
    env = {k: os.environ[k] for k in WANDB_ENV if os.environ.get(k)}
    env.update(extra_env or {})
    if wandb:
        env["WANDB_MODE"] = wandb
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    job_id = f"sweeper-{sweep.name}-{digest}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    import shlex

    if code == "installed":
        env[SWEEP_ENV] = text
        run = shlex.join(["python3", "-m", "sweeper.cli", "run", "-", "--address", "auto", *opts])
        _submit_retrying(address, f'printenv {SWEEP_ENV} | {run}', job_id, {"env_vars": env})
    else:
        rel = _upload_path(sweep_file, text if overrides else None, sweep.name)
        cmd = shlex.join(["python3", "-m", "sweeper.cli", "run", rel, "--address", "auto", *opts])
        root = Path.cwd().resolve()
        runtime_env = {"working_dir": str(root), "excludes": _excludes(root), "env_vars": env}
        # Ray's packaging honours .gitignore, which may list .sweeper-submit/: package with Ray's .gitignore
        # handling off and the project's top-level .gitignore rules (minus .sweeper-submit) in `excludes` instead.
        saved = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE")
        os.environ["RAY_RUNTIME_ENV_IGNORE_GITIGNORE"] = "1"
        try:
            _submit_retrying(address, cmd, job_id, runtime_env)
        finally:
            if saved is None:
                os.environ.pop("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", None)
            else:
                os.environ["RAY_RUNTIME_ENV_IGNORE_GITIGNORE"] = saved
    if wait:
        globals()["wait"](address, job_id, timeout)
    return job_id


def _upload_path(sweep_file, overridden: Optional[str], name: str) -> str:
    """The sweep file's path inside the uploaded project directory (cwd); an overridden sweep is written to
    .sweeper-submit/<name>.yaml first."""
    root = Path.cwd().resolve()
    try:
        rel = Path(sweep_file).resolve().relative_to(root)
    except ValueError:
        raise ClusterError(f"{sweep_file}: with --code upload the sweep file must be inside the project directory "
                           f"{root} (it is uploaded as the job's working directory)") from None
    if overridden is not None:
        out = root / SUBMIT_DIR / f"{name}.yaml"
        out.parent.mkdir(exist_ok=True)
        out.write_text(overridden)
        rel = out.relative_to(root)
    return rel.as_posix()


def _excludes(root: Path) -> list[str]:
    out = list(EXCLUDES)
    try:
        lines = (root / ".gitignore").read_text().splitlines()
    except OSError:
        lines = []
    out += [ln.strip() for ln in lines
            if ln.strip() and not ln.lstrip().startswith("#") and SUBMIT_DIR not in ln and not ln.startswith("!")]
    return out


def _submit_retrying(address: str, entrypoint: str, job_id: str, runtime_env: dict) -> None:
    import requests

    # A just-started dashboard can drop the package upload, or answer 500 "No available agent to submit job"
    # until the head's job agent has registered (seen in tests, seconds after the dashboard first answered).
    for attempt in range(6):
        try:
            _call(address, lambda c: c.submit_job(entrypoint=entrypoint, submission_id=job_id,
                                                  runtime_env=runtime_env), retry_connection=True)
            break
        except requests.ConnectionError as exc:
            if attempt == 5:
                raise ClusterError(f"cannot submit to {address}: {str(exc).splitlines()[0]}") from None
        except ClusterError as exc:
            if "No available agent" not in str(exc) or attempt == 5:
                raise
        time.sleep(2 * (attempt + 1))


def status(address: str, job_id: str) -> str:
    return str(_call(address, lambda c: c.get_job_status(job_id)).value)


def logs(address: str, job_id: str) -> str:
    return _call(address, lambda c: c.get_job_logs(job_id))


def wait(address: str, job_id: str, timeout: float = 24 * 3600, poll: float = 2.0) -> str:
    """Poll until the job ends; returns SUCCEEDED, FAILED or STOPPED (raises ClusterError on timeout)."""
    end = time.time() + timeout
    while True:
        s = status(address, job_id)
        if s in TERMINAL:
            return s
        if time.time() > end:
            raise ClusterError(f"job {job_id} still {s} after {timeout:.0f} s; `sweeper status {job_id}` to check")
        time.sleep(poll)


def fetch_results(sweep_file: str | os.PathLike, store: Optional[str] = None,
                  overrides: Optional[dict[str, Any]] = None) -> list[dict]:
    """The results table (one dict per evaluation row) written by the job's report:
    <store>/reports/<sweep name>/results.json."""
    from sweeper.sweep.spec import load
    from sweeper.store.store import Store

    sweep = load(sweep_file, overrides)
    data = json.loads(Store(store or sweep.run.store).read_bytes(f"reports/{sweep.name}/results.json"))
    if isinstance(data, dict):
        for k in ("rows", "results"):
            if isinstance(data.get(k), list):
                return data[k]
    return data
