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
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import ClusterError

WANDB_ENV = ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY")
# Uploaded with every job: the repo minus anything large or private. Patterns follow .gitignore syntax.
EXCLUDES = [".venv", ".venv/**", "store", "store/**", "data", "data/**", "wandb", "wandb/**", ".git", ".git/**",
            "__pycache__", "**/__pycache__", "*.egg-info", "**/*.egg-info", "*.pyc", ".pytest_cache", ".ci"]
SUBMIT_DIR = ".sweeper-submit"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

# ------------------------------------------------------------------ validation
def _key(path) -> str:
    return ".".join(str(p) for p in path)


COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")
NODE_COMMAND_KEYS = ("initialization_commands", "worker_setup_commands")
# Folders that `ray up` should not copy to every node: validate-cluster warns when a mounted folder holds one of
# these (top-level names, fnmatch patterns) that rsync_exclude / rsync_filter do not exclude.
HEAVY = (".venv", "venv", "store", "runs", "data", "wandb", ".git", ".sweeper-submit", "build", "dist",
         ".pytest_cache", "__pycache__", ".mypy_cache", ".ruff_cache", "node_modules", "*.egg-info")


def _commands(cfg: dict) -> list[tuple[tuple, Any]]:
    """(key path, value) of every command list in the file, top level and per node type."""
    out = [((k,), cfg[k]) for k in COMMAND_KEYS if k in cfg]
    types = cfg.get("available_node_types")
    if isinstance(types, dict):
        out += [(("available_node_types", name, k), nt[k]) for name, nt in types.items()
                if isinstance(nt, dict) for k in NODE_COMMAND_KEYS if k in nt]
    return out


def _command_checks(cfg: dict) -> list[tuple[str, str]]:
    out = []
    for path, value in _commands(cfg):
        key = _key(path)
        if value is None:
            continue
        if isinstance(value, str):
            out.append((key, f"is a string ({value[:40]!r}), not a list of commands; write one `- command` line "
                             "per command under it (a YAML list)"))
        elif not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            out.append((key, "must be a list of shell commands (strings), one `- command` line each"))
    return out


def _count_checks(cfg: dict) -> list[tuple[str, str]]:
    """max_workers / min_workers: whole numbers >= 0, min <= max (Ray's schema checks only the top level)."""
    out = []

    def bad(v) -> bool:
        return v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0)

    if bad(cfg.get("max_workers")):
        out.append(("max_workers", f"{cfg['max_workers']!r} is not a whole number >= 0 (the most worker nodes "
                                   "of all types together)"))
    types = cfg.get("available_node_types")
    for name, nt in (types.items() if isinstance(types, dict) else []):
        if not isinstance(nt, dict):
            continue
        for k in ("min_workers", "max_workers"):
            if bad(nt.get(k)):
                out.append((f"available_node_types.{name}.{k}",
                            f"{nt[k]!r} is not a whole number >= 0 (how many nodes of this type)"))
        lo, hi = nt.get("min_workers"), nt.get("max_workers")
        if isinstance(lo, int) and isinstance(hi, int) and not bad(lo) and not bad(hi) and lo > hi:
            out.append((f"available_node_types.{name}.min_workers",
                        f"{lo} is more than max_workers ({hi}); lower it or raise max_workers"))
    return out


def _excluded(name: str, patterns: list[str]) -> bool:
    """Whether rsync's --exclude patterns (as Ray passes rsync_exclude) exclude a top-level folder ``name`` of a
    mounted folder. Simplified rsync rules: a trailing / means folders only (ours are folders), a leading / anchors
    at the mounted folder, a leading **/ matches at any depth; a pattern with another / cannot match a top-level
    name."""
    for pat in patterns:
        if not isinstance(pat, str):
            continue
        pat = pat.strip()
        if pat.startswith("- "):  # a filter-file rule
            pat = pat[2:].strip()
        pat = pat.rstrip("/")
        if pat.endswith("/***"):
            pat = pat[:-4]
        while pat.startswith("**/"):
            pat = pat[3:]
        pat = pat[1:] if pat.startswith("/") else pat
        if pat and "/" not in pat and fnmatchcase(name, pat):
            return True
    return False


def _mount_checks(cfg: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(problems, warnings) about file_mounts: a local source that does not exist (`ray up` would fail after
    starting the head), and a mounted folder holding heavy folders (.venv, store, wandb, ...) that rsync_exclude
    and rsync_filter do not exclude (`ray up` would copy them to every node). Relative sources are resolved
    from the current directory, as `ray up` does."""
    mounts = cfg.get("file_mounts")
    if not isinstance(mounts, dict):
        return [], []
    excludes = cfg.get("rsync_exclude") if isinstance(cfg.get("rsync_exclude"), list) else []
    filters = cfg.get("rsync_filter") if isinstance(cfg.get("rsync_filter"), list) else []
    problems, warnings = [], []
    for remote, local in mounts.items():
        key = f"file_mounts.{remote}"
        if not isinstance(local, str) or not local.strip():
            problems.append((key, f"{local!r} is not a local path"))
            continue
        src = Path(os.path.expanduser(local))
        where = src if src.is_absolute() else Path.cwd() / src
        if not src.exists():
            problems.append((key, f"the local source {local!r} does not exist ({where}; `ray up` resolves relative "
                                  "paths from the directory it runs in): fix the path or run from the project "
                                  "root"))
            continue
        if not src.is_dir():
            continue
        patterns = list(excludes)
        for f in filters:  # per-folder filter files (e.g. .gitignore): their lines are exclude rules
            if isinstance(f, str):
                try:
                    patterns += [ln for ln in (src / f).read_text().splitlines()
                                 if ln.strip() and not ln.lstrip().startswith(("#", "!", "+"))]
                except OSError:
                    pass
        try:
            names = sorted(e.name for e in src.iterdir() if e.is_dir())
        except OSError:
            continue
        heavy = [n for n in names if any(fnmatchcase(n, h) for h in HEAVY) and not _excluded(n, patterns)]
        if heavy:
            warnings.append((key, f"the mounted folder {local!r} ({where}) holds {', '.join(heavy)}, which "
                                  "rsync_exclude does not exclude: `ray up` would copy them to every node; add "
                                  f"them to rsync_exclude (e.g. {', '.join(repr(h + '/') for h in heavy[:3])})"))
    return problems, warnings


def _sweeper_checks(cfg: dict, text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = _command_checks(cfg) + _count_checks(cfg)
    types = cfg.get("available_node_types")
    if not isinstance(types, dict) or not types:
        return out + [("available_node_types",
                       "missing or empty; declare a head type and at least one GPU worker type")]
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
    cmds = [c for k in ("setup_commands", "worker_setup_commands") if isinstance(cfg.get(k), list) for c in cfg[k] if isinstance(c, str)]
    if not any("sweeper" in c for c in cmds) and not any(k == "setup_commands" for k, _ in out):
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
    cfg = copy.deepcopy(cfg)
    for path, value in _commands(cfg):  # reported by _command_checks; Ray's prepare_config crashes on a string
        if isinstance(value, str):
            node = cfg
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = [value]
    try:
        validate_config(prepare_config(cfg))
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


def check_cluster(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a Ray cluster launcher file, each as 'FILE: key.path: message; what to do'.
    Problems make it invalid; warnings (e.g. heavy folders that `ray up` would copy to every node) do not."""
    name = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        return [f"{name}: cannot read: {exc}"], []
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return [f"{name}: {where}YAML syntax error: {getattr(exc, 'problem', None) or exc}"], []
    if not isinstance(cfg, dict):
        return [f"{name}: expected a mapping (cluster_name, provider, available_node_types, ...)"], []
    problems = _sweeper_checks(cfg, text)
    mount_problems, warnings = _mount_checks(cfg)
    problems += mount_problems
    seen = {k for k, _ in problems}
    for key, msg in _ray_checks(cfg):
        if key not in seen:  # ours already said it with a fix (e.g. fractional GPU, unknown head type)
            if not (key == "" and "head_node_type" in msg and "head_node_type" in seen):
                problems.append((key, msg))

    def fmt(items):
        return [f"{name}: {k}: {m}" if k else f"{name}: {m}" for k, m in items]

    return fmt(problems), fmt(warnings)


def validate_cluster(path: str | os.PathLike) -> list[str]:
    """Problems with a Ray cluster launcher file, each as 'FILE: key.path: message; what to do'. Empty = valid
    (warnings aside: see check_cluster)."""
    return check_cluster(path)[0]


# ------------------------------------------------------------------ jobs
def _auth_error(address: str) -> "ClusterError":
    """One line for a request the cluster refused (401/403): no token here, or the wrong one."""
    from .rayauth import find_token, missing_token_message, refused_token_message

    tok, where = find_token()
    return ClusterError(refused_token_message(address, where) if tok else missing_token_message(address, where))


def _client(address: str):
    """A JobSubmissionClient that sends the cluster token explicitly when one is available (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, as rayauth.find_token reads them): Ray only adds it itself when
    this process runs in token mode. A cluster without authentication ignores the header (measured, Ray 2.60)."""
    import requests
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    from .rayauth import find_token

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


def submit(sweep_file: str | os.PathLike, address: str, *, overrides: Optional[dict[str, Any]] = None,
           store: Optional[str] = None, wandb: Optional[str] = None, extra_env: Optional[dict[str, str]] = None,
           wait: bool = False, timeout: float = 24 * 3600) -> str:
    """Submit `sweeper run` of a sweep file as a Ray job; returns the job id.

    The working directory (the project root = cwd; the sweep file must be inside it) is uploaded without
    .venv, store, data, wandb and .git. With `overrides` ({"stages.x.attack.eps": {"grid": [...]}}) the
    overridden sweep is written to .sweeper-submit/<name>.yaml and that file is submitted. Submitting the same
    sweep again resumes it: nodes already in the store are skipped.
    """
    from .spec import load_raw

    root = Path.cwd().resolve()
    src = Path(sweep_file).resolve()
    try:
        rel = src.relative_to(root)
    except ValueError:
        raise ClusterError(f"{sweep_file}: the sweep file must be inside the project directory {root} "
                           "(it is uploaded as the job's working directory)") from None
    raw, sweep = load_raw(sweep_file, overrides)
    if overrides:
        out = root / SUBMIT_DIR / f"{sweep.name}.yaml"
        out.parent.mkdir(exist_ok=True)
        text = yaml.safe_dump(raw, sort_keys=False)
        out.write_text(text)
        rel = out.relative_to(root)
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
    from .spec import load
    from .store import Store

    sweep = load(sweep_file, overrides)
    data = json.loads(Store(store or sweep.run.store).read_bytes(f"reports/{sweep.name}/results.json"))
    if isinstance(data, dict):
        for k in ("rows", "results"):
            if isinstance(data.get(k), list):
                return data[k]
    return data
