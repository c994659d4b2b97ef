"""The `ray up` cluster launcher file, checked offline: Ray's own schema, what sweeper needs of it (a GPU worker
type, sweeper installed, shared storage, whole-number resources and counts) and token authentication on every
node. No cluster is touched; `ray up` has no dry run, so `sweeper validate-cluster` is the one.

Ray's schema check uses Ray's private ``prepare_config``/``validate_config`` (pinned to Ray 2.60 in pyproject).
"""

from __future__ import annotations

import copy
import logging
import os
import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Optional

import yaml

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
        if not src.exists() and _is_token_path(str(remote)):
            # a warning: the file is fine, only this machine has no token yet (`ray up` would stop on it)
            warnings.append((key, f"the local token file {local!r} does not exist yet ({where}): before `ray up`, "
                                  f"create the cluster's token once on this machine with `{GENERATE}` (it writes "
                                  "~/.ray/auth_token; RAY_AUTH_TOKEN and RAY_AUTH_TOKEN_PATH unset)"))
            continue
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


# Token authentication on `ray up` clusters (Ray 2.60 turns it on by default only for local clusters): every
# `ray start` needs RAY_AUTH_MODE=token (`ray start --address` on a worker never turns it on by itself) and every
# node needs the token, by Ray's order RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token.
GENERATE = "ray get-auth-token --generate"
DEFAULT_TOKEN = "~/.ray/auth_token"
EXPORT = "export RAY_AUTH_MODE=token; "
_RAY_START = re.compile(r"\bray\s+start\b")
_PROFILE = re.compile(r"(>>?|\btee\b)[^;&|]*?(\.bashrc|\.bash_profile|\.profile|/etc/environment|/etc/profile)")


def _writes_file(cmd: str, path: str) -> bool:
    """Whether a shell command writes the file ending in ``path`` (a redirection, tee, cp/mv/install, -o)."""
    return bool(re.search(r"(>|\btee\b|\bcp\b|\bmv\b|\binstall\b|\s-o\s|--output[= ])[^;&|]*?"
                          + re.escape(path) + r"(?![\w./-])", cmd))


def _is_token_path(remote: str) -> bool:
    return remote.rstrip("/").endswith("/.ray/auth_token")


def _env_value(name: str, text: str) -> Optional[str]:
    """The last value ``text`` assigns to the environment variable ``name`` (NAME=value, quotes stripped)."""
    found = re.findall(rf"(?<![\w$]){name}=(\"[^\"]*\"|'[^']*'|[^\s;&|)\"']*)", text)
    return found[-1].strip("\"'") if found else None


def _str_cmds(value) -> list[str]:
    return [c for c in value if isinstance(c, str)] if isinstance(value, list) else []


def _ray_default(cfg: dict, key: str) -> str:
    """' (KEY's commands)' from Ray's defaults for the file's provider, or '' (private API of ray 2.60)."""
    try:
        from ray.autoscaler._private.providers import _get_default_config

        cmds = _get_default_config(cfg["provider"]).get(key)
    except Exception:  # noqa: BLE001 - no or unknown provider, Ray moved it: the message stays without them
        return ""
    return f" ({', '.join(f'`{c}`' for c in cmds)})" if isinstance(cmds, list) and cmds else ""


def _auth_checks(cfg: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(problems, warnings): a cluster whose nodes would run without token authentication.

    RAY_AUTH_MODE=token counts when it is set on the command line that runs `ray start` (before it), written
    to a shell profile (~/.bashrc, ...) by a command that runs on those nodes first (Ray runs every command in a
    login shell that sources ~/.bashrc, and Ray's docs show this way, in `initialization_commands`), or given
    to docker's run options (`-e RAY_AUTH_MODE=token`). The token
    counts when RAY_AUTH_TOKEN is set the same ways, or when the file Ray would read (RAY_AUTH_TOKEN_PATH, else
    ~/.ray/auth_token) is a file_mounts target or is written by a setup command. A file without
    head_start_ray_commands / worker_start_ray_commands gets Ray's defaults, which set nothing."""
    problems: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    types = cfg.get("available_node_types") if isinstance(cfg.get("available_node_types"), dict) else {}
    types = {n: t for n, t in types.items() if isinstance(t, dict)}
    head = cfg.get("head_node_type")
    user = (cfg.get("auth") or {}).get("ssh_user") if isinstance(cfg.get("auth"), dict) else None
    docker = cfg["docker"] if isinstance(cfg.get("docker"), dict) else {}

    def run_before_start(role: str) -> list[list[str]]:
        """For each node type of this role: the commands that run on it before its start commands."""
        names = [head] if role == "head" else [n for n in types if n != head] or [None]
        out = []
        for name in names:
            nt = types.get(name, {}) if name is not None else {}
            init = nt.get("initialization_commands", cfg.get("initialization_commands"))
            own = ("head_setup_commands" if role == "head" else "worker_setup_commands")
            setup = nt[own] if role == "worker" and own in nt else cfg.get(own)
            out.append(_str_cmds(init) + _str_cmds(cfg.get("setup_commands")) + _str_cmds(setup))
        return out

    sources: list[tuple[str, str, list[str]]] = []  # per role: how its nodes get the token, what runs first
    for role, key in (("head", "head_start_ray_commands"), ("worker", "worker_start_ray_commands")):
        befores = run_before_start(role)
        # docker's `-e NAME=value` run options reach every command run in the container, as a profile does
        opts = [o for k in ("run_options", f"{role}_run_options") for o in _str_cmds(docker.get(k))]
        persisted = [[c for c in cmds if _PROFILE.search(c)] + opts for cmds in befores]
        # what every node type of this role has in its profile (a type without it decides)
        mode_profile = all(any(_env_value("RAY_AUTH_MODE", c) == "token" for c in p) for p in persisted)
        starts = [c for c in _str_cmds(cfg.get(key)) if _RAY_START.search(c)]
        if key in cfg and cfg[key] is not None and not starts:
            continue  # no `ray start` at all: Ray warns itself; nothing runs unauthenticated
        fix = (f"put `{EXPORT}` at the start of the line that runs `ray start` (each list item runs in its own "
               "shell), as the shipped cluster.yaml does")
        nodes = "head node" if role == "head" else "worker nodes"
        if not starts:
            if not mode_profile:
                default = _ray_default(cfg, key)
                problems.append((key, f"not set, so Ray's default `ray start` runs on the {nodes} without "
                                      "RAY_AUTH_MODE=token: the cluster would run without token authentication "
                                      "(anyone who reaches its dashboard/Jobs port can run code on it); add "
                                      f"{key} with Ray's default commands for your provider{default} and {fix}"))
            lines = [""]
        else:
            lines = [c[:_RAY_START.search(c).start()] for c in starts]
            off = [ln for ln in lines if (_env_value("RAY_AUTH_MODE", ln) or ("token" if mode_profile else None))
                   != "token"]
            if off:
                problems.append((key, "`ray start` runs without RAY_AUTH_MODE=token, so the cluster would run "
                                      "without token authentication (anyone who reaches its dashboard/Jobs port "
                                      f"can run code on it); {fix}"))
        flat = [c for p in persisted for c in p]
        tok = [v for v in (_env_value("RAY_AUTH_TOKEN", ln) for ln in lines + flat) if v]
        path = [v for v in (_env_value("RAY_AUTH_TOKEN_PATH", ln) for ln in lines + flat) if v]
        kind, value = ("env", tok[-1]) if tok else ("path", path[-1] if path else DEFAULT_TOKEN)
        sources.append((kind, value, [c for cmds in befores for c in cmds]))

    mounts = {str(r).rstrip("/") for r in cfg["file_mounts"]} if isinstance(cfg.get("file_mounts"), dict) else set()
    homes = ["~"] + ([f"/home/{user}"] if user and user != "root" else []) + (
        ["/root"] if user == "root" or cfg.get("docker") else [])
    said: set[str] = set()
    for kind, value, before in sources:
        if kind == "env":
            if not value.startswith("$") and "$literal" not in said:
                said.add("$literal")
                warnings.append(("", "RAY_AUTH_TOKEN is set to a literal token in this file: anyone who reads it "
                                     "(or the repository it is committed to) can use the cluster; mount the token "
                                     f"file instead (`/home/<ssh_user>/.ray/auth_token: {DEFAULT_TOKEN}` under "
                                     "file_mounts)"))
            continue
        if value.startswith("~/"):
            targets = [h + value[1:] for h in homes]
        else:
            targets = [value]
        needle = ".ray/auth_token" if value == DEFAULT_TOKEN else value.lstrip("~")
        if mounts & set(targets) or any(_writes_file(c, needle) for c in before) or value in said:
            continue
        said.add(value)
        dest = targets[1] if value.startswith("~/") and len(targets) > 1 else value
        where = ("~/.ray/auth_token (Ray's default: RAY_AUTH_TOKEN and RAY_AUTH_TOKEN_PATH are not set)"
                 if value == DEFAULT_TOKEN else f"{value} (RAY_AUTH_TOKEN_PATH)")
        other = sorted(r for r in mounts if _is_token_path(r) and r not in targets)
        hint = f" ({', '.join(other)} is not in the home of auth.ssh_user {user!r})" if other and user else ""
        problems.append(("file_mounts", f"no entry puts the token at {where} on the nodes{hint}, so `ray start` in "
                                        f"token mode fails there; add `{dest}: {DEFAULT_TOKEN}` under file_mounts "
                                        f"(your token, created once with `{GENERATE}`)"))
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
    except UnicodeDecodeError as exc:  # an image, an archive, a file in another encoding
        return [f"{name}: not a text file (got byte {exc.object[exc.start:exc.start + 1]!r} at offset "
                f"{exc.start}); expected a YAML cluster file in UTF-8"], []
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())  # one line (a ReaderError has two)
        return [f"{name}: {where}YAML syntax error: {problem}"], []
    if not isinstance(cfg, dict):
        return [f"{name}: expected a mapping (cluster_name, provider, available_node_types, ...)"], []
    problems = _sweeper_checks(cfg, text)
    mount_problems, warnings = _mount_checks(cfg)
    problems += mount_problems
    auth_problems, auth_warnings = _auth_checks(cfg)
    problems += auth_problems
    warnings += auth_warnings
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
