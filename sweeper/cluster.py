"""The `ray up` cluster path: check a cluster launcher file offline, submit sweeps as Ray jobs, fetch results.

This is an edge module (it imports Ray). Flow: `validate_cluster("cluster.yaml")` -> `ray up cluster.yaml` ->
`submit(sweep_file, "http://127.0.0.1:8265", store="s3://...")` -> `wait(...)` -> `fetch_results(...)`.

Resubmitting the same sweep resumes it: the job runs `sweeper run`, which skips every node already done in
the store (and every finished synthesis shard), so only unfinished work runs again. That needs the same store,
which is why a cluster with workers must use shared storage (s3://, gs://).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Optional

import yaml

WANDB_ENV = ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY")
# Uploaded with every job: the repo minus anything large or private. Patterns follow .gitignore syntax.
EXCLUDES = [".venv", ".venv/**", "store", "store/**", "data", "data/**", "wandb", "wandb/**", ".git", ".git/**",
            "__pycache__", "**/__pycache__", "*.egg-info", "**/*.egg-info", "*.pyc", ".pytest_cache", ".ci"]
SUBMIT_DIR = ".sweeper-submit"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

AUTH_HELP = ("the Ray cluster refused the request (token authentication). Give sweeper the cluster's token: "
             "export RAY_AUTH_TOKEN=<token> (on the head: `ray get-auth-token`, or `cat ~/.ray/auth_token`), or "
             "put it in ~/.ray/auth_token here, or set RAY_AUTH_TOKEN_PATH to a file holding it")


class ClusterError(Exception):
    """A user-facing problem with the cluster or a job (printed without a traceback)."""


# ------------------------------------------------------------------ validation
def _key(path) -> str:
    return ".".join(str(p) for p in path)


def _sweeper_checks(cfg: dict, text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    types = cfg.get("available_node_types")
    if not isinstance(types, dict) or not types:
        return [("available_node_types", "missing or empty; declare a head type and at least one GPU worker type")]
    head = cfg.get("head_node_type")
    if head not in types:
        out.append(("head_node_type", f"{head!r} is not one of available_node_types ({', '.join(types)}); "
                                      "name the head's type there"))
    gpu_workers = []
    any_workers = False
    for name, nt in types.items():
        if not isinstance(nt, dict):
            continue
        res = nt.get("resources") or {}
        if isinstance(res, dict):
            for k, v in res.items():
                if isinstance(v, bool) or not isinstance(v, int):
                    out.append((f"available_node_types.{name}.resources.{k}",
                                f"{v!r} is not an integer: Ray refuses fractional node resources; give whole "
                                "units (e.g. GPU: 1) and share a GPU per trial with fractional trial resources"))
        if name == head:
            continue
        mw = nt.get("max_workers", cfg.get("max_workers", 0))
        if isinstance(mw, int) and mw > 0:
            any_workers = True
        g = res.get("GPU") if isinstance(res, dict) else None
        if isinstance(g, int) and not isinstance(g, bool) and g >= 1:
            gpu_workers.append(name)
    if not gpu_workers:
        out.append(("available_node_types", "no worker type has integer GPU resources >= 1; add one with "
                                            "`resources: {GPU: 1}` (and a GPU instance type)"))
    cmds = [c for c in (cfg.get("setup_commands") or []) + (cfg.get("worker_setup_commands") or [])
            if isinstance(c, str)]
    if not any("sweeper" in c for c in cmds):
        out.append(("setup_commands", "no command installs sweeper; add e.g. "
                                      "`python3 -m pip install -e /home/ubuntu/sweeper` (with a file_mounts entry)"))
    if any_workers and not re.search(r"\b(s3|gs)://", text):
        out.append(("", "the artifact store must be shared storage (s3://, gs://) when the cluster has workers: "
                        "set run.store in your sweep files / --store, and note the bucket in this file"))
    return out


def _ray_checks(cfg: dict) -> list[tuple[str, str]]:
    """Ray's own schema and defaults, offline (private API of ray 2.60; pinned in pyproject)."""
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as exc:  # pragma: no cover - ray moved its private API
        return [("", f"cannot run Ray's cluster schema check ({exc}); is ray[default]==2.60 installed?")]
    log = logging.getLogger("ray.autoscaler._private.util")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        validate_config(prepare_config(copy.deepcopy(cfg)))
    except Exception as exc:  # noqa: BLE001 - jsonschema.ValidationError, ValueError, KeyError, ...
        path = getattr(exc, "absolute_path", None)
        msg = getattr(exc, "message", None) or str(exc).split("\n")[0] or type(exc).__name__
        key = _key(path) if path else ""
        m = re.search(r"\('([^']+)' was unexpected\)", msg) or re.search(r"'([^']+)' was unexpected", msg)
        if m:
            key = f"{key}.{m.group(1)}" if key else m.group(1)
            msg += "; remove it or fix its spelling (see Ray's cluster YAML reference)"
        return [(key, f"Ray's schema: {msg}")]
    finally:
        log.setLevel(level)
    return []


def validate_cluster(path: str | os.PathLike) -> list[str]:
    """Problems with a Ray cluster launcher file, each as 'FILE: key.path: message; what to do'. Empty = valid."""
    name = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        return [f"{name}: cannot read: {exc}"]
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return [f"{name}: {where}YAML syntax error: {getattr(exc, 'problem', None) or exc}"]
    if not isinstance(cfg, dict):
        return [f"{name}: expected a mapping (cluster_name, provider, available_node_types, ...)"]
    problems = _sweeper_checks(cfg, text)
    seen = {k for k, _ in problems}
    for key, msg in _ray_checks(cfg):
        if key not in seen:  # ours already said it with a fix (e.g. fractional GPU, unknown head type)
            if not (key == "" and "head_node_type" in msg and "head_node_type" in seen):
                problems.append((key, msg))
    return [f"{name}: {k}: {m}" if k else f"{name}: {m}" for k, m in problems]


# ------------------------------------------------------------------ jobs
def _token() -> Optional[str]:
    tok = os.environ.get("RAY_AUTH_TOKEN")
    if tok:
        return tok.strip()
    p = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return p.read_text().strip() or None
    except OSError:
        return None


def _client(address: str):
    """A JobSubmissionClient that sends the cluster token explicitly when one is available (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token): Ray only adds it itself when this process runs in token mode."""
    import requests
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    tok = _token()
    headers = {"Authorization": f"Bearer {tok}"} if tok else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError:
        raise ClusterError(f"{address}: {AUTH_HELP}") from None
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
        raise ClusterError(f"{address}: {AUTH_HELP}") from None
    except RuntimeError as exc:  # unknown job id and other server-side refusals
        raise ClusterError(f"{address}: {str(exc).splitlines()[0]}") from None


def submit(sweep_file: str | os.PathLike, address: str, *, overrides: Optional[dict[str, Any]] = None,
           store: Optional[str] = None, wandb: Optional[str] = None, extra_env: Optional[dict[str, str]] = None,
           wait: bool = False, timeout: float = 24 * 3600) -> str:
    """Submit `sweeper run` of a sweep file as a Ray job; returns the job id.

    The working directory (the project root = cwd; the sweep file must be inside it) is uploaded without
    .venv, store, data, wandb and .git. With `overrides` ({"stages.x.attack.eps": {"grid": [...]}}) the
    overridden sweep is written to .sweeper-submit/<name>.yaml and that file is submitted. Submitting the same
    sweep again resumes it: nodes already in the store are skipped.
    """
    from .spec import SpecError, _yaml, apply_overrides, validate

    root = Path.cwd().resolve()
    src = Path(sweep_file).resolve()
    try:
        rel = src.relative_to(root)
    except ValueError:
        raise ClusterError(f"{sweep_file}: the sweep file must be inside the project directory {root} "
                           "(it is uploaded as the job's working directory)") from None
    text = src.read_text() if src.exists() else None
    if text is None:
        raise SpecError(str(sweep_file), "", "cannot read: no such file")
    raw = _yaml(text, str(sweep_file))
    if overrides:
        raw = apply_overrides(raw, overrides)
        sweep = validate(raw, source=f"{sweep_file} (with overrides)")
        out = root / SUBMIT_DIR / f"{sweep.name}.yaml"
        out.parent.mkdir(exist_ok=True)
        text = yaml.safe_dump(raw, sort_keys=False)
        out.write_text(text)
        rel = out.relative_to(root)
    else:
        sweep = validate(raw, source=str(sweep_file))
    eff = store or sweep.run.store
    if "://" not in eff and not os.path.isabs(os.path.expanduser(eff)):
        raise ClusterError(f"{sweep_file}: run.store is the relative path {eff!r}, which the job would resolve "
                           "inside its temporary copy of the project (and lose); pass --store s3://bucket/store "
                           "(or an absolute path on a single-node cluster)")
    cmd = ["python", "-m", "sweeper.cli", "run", rel.as_posix(), "--address", "auto"]
    if store:
        cmd += ["--store", store]
    if wandb:
        cmd += ["--wandb", wandb]
    env = {k: os.environ[k] for k in WANDB_ENV if os.environ.get(k)}
    env.update(extra_env or {})
    if wandb:
        env["WANDB_MODE"] = wandb
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    job_id = f"sweeper-{sweep.name}-{digest}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    runtime_env = {"working_dir": str(root), "excludes": _excludes(root), "env_vars": env}
    import shlex

    # Ray's packaging honours .gitignore, which may list .sweeper-submit/: package with Ray's .gitignore handling
    # off and the project's top-level .gitignore rules (minus .sweeper-submit) in `excludes` instead.
    saved = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE")
    os.environ["RAY_RUNTIME_ENV_IGNORE_GITIGNORE"] = "1"
    try:
        _submit_retrying(address, shlex.join(cmd), job_id, runtime_env)
    finally:
        if saved is None:
            os.environ.pop("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", None)
        else:
            os.environ["RAY_RUNTIME_ENV_IGNORE_GITIGNORE"] = saved
    if wait:
        globals()["wait"](address, job_id, timeout)
    return job_id


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

    for attempt in range(4):  # a just-started dashboard can drop the package upload
        try:
            _call(address, lambda c: c.submit_job(entrypoint=entrypoint, submission_id=job_id,
                                                  runtime_env=runtime_env), retry_connection=True)
            break
        except requests.ConnectionError as exc:
            if attempt == 3:
                raise ClusterError(f"cannot submit to {address}: {str(exc).splitlines()[0]}") from None
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
    from .spec import _yaml, apply_overrides, validate
    from .store import Store

    raw = _yaml(Path(sweep_file).read_text(), str(sweep_file))
    if overrides:
        raw = apply_overrides(raw, overrides)
    sweep = validate(raw, source=str(sweep_file))
    data = json.loads(Store(store or sweep.run.store).read_bytes(f"reports/{sweep.name}/results.json"))
    if isinstance(data, dict):
        for k in ("rows", "results"):
            if isinstance(data.get(k), list):
                return data[k]
    return data
