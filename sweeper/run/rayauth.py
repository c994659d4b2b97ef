"""Ray token authentication for sweeper's clients of a running cluster (Ray 2.60; measured, see README).

An edge module: it imports Ray, including private modules (the GCS health-check stub, ``ray._raylet.Config``,
``ray._private.services``) that Ray 2.60 offers no public API for; pyproject pins Ray to 2.60.x for that reason.

A Ray head runs with token authentication on when it was started in token mode: `ray start --head` turns it on
by itself once a token exists (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, which any local
`ray.init()` writes). A client that joins it by explicit address (`ray.init(address="HOST:PORT")`) does *not*
turn token mode on by itself, even with the token on disk: it fails after ~20 s with a bare
`ConnectionError: Failed to connect to Ray cluster`. Token mode on a client against a head without
authentication works (the head ignores the token), and a wrong token fails like a missing one.

So before joining, :func:`prepare_join` asks the cluster's GCS once (a gRPC health check, milliseconds)
whether it requires a token; if it does and RAY_AUTH_MODE is unset here, it turns token mode on for this
process with the token Ray itself would load. It never turns authentication off. When the cluster requires a
token that cannot be found (or refuses the one found), it raises ClusterError with one line that says what to
set. The Jobs API client (sweeper.cluster.cluster) sends the same token as a header. It also checks first that
something listens at the address: Ray's own connect to a closed port retries for many minutes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

MODE_ENV = "RAY_AUTH_MODE"
HOW = ("get it on the head with `ray get-auth-token` and export RAY_AUTH_TOKEN=<token> here (or set "
       "RAY_AUTH_TOKEN_PATH to a file holding it)")


def find_token() -> tuple[Optional[str], str]:
    """The token Ray would load, in Ray's own order, and where it came from: RAY_AUTH_TOKEN, else the file
    RAY_AUTH_TOKEN_PATH (when set, Ray does not fall back to the default file), else ~/.ray/auth_token.
    (None, a description of where it looked) when there is none."""
    tok = (os.environ.get("RAY_AUTH_TOKEN") or "").strip()
    if tok:
        return tok, "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        where = f"RAY_AUTH_TOKEN_PATH={path}"
    else:
        path = str(Path.home() / ".ray" / "auth_token")
        where = path
    try:
        tok = Path(path).expanduser().read_text().strip()
    except OSError:
        tok = ""
    if tok:
        return tok, where
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return None, f"RAY_AUTH_TOKEN unset, {where} missing or empty"
    return None, f"RAY_AUTH_TOKEN and RAY_AUTH_TOKEN_PATH unset, no {where}"


def missing_token_message(address: str, looked: str) -> str:
    return f"{address}: the Ray cluster requires token authentication and no token was found here ({looked}); {HOW}"


def refused_token_message(address: str, where: str) -> str:
    return f"{address}: the Ray cluster refused the token from {where} (token authentication); {HOW}"


def probe(gcs_address: str, token: Optional[str] = None, timeout: float = 5.0) -> str:
    """Ask the GCS at HOST:PORT whether it accepts a request with this token (None: without one), by a gRPC
    health check. Returns "ok", "unauthenticated", or "unknown" (unreachable, TLS, an API change): then the
    caller cannot tell and Ray's own connect decides."""
    try:
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:  # pragma: no cover - Ray moved its generated modules
        return "unknown"
    metadata = [("authorization", f"Bearer {token}")] if token else None
    try:
        with grpc.insecure_channel(gcs_address) as channel:
            stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
            stub.CheckAlive(gcs_service_pb2.CheckAliveRequest(), timeout=timeout, metadata=metadata)
        return "ok"
    except grpc.RpcError as exc:
        return "unauthenticated" if exc.code() == grpc.StatusCode.UNAUTHENTICATED else "unknown"
    except Exception:  # noqa: BLE001 - a malformed address and the like: leave it to ray.init
        return "unknown"


def _gcs_address(address: str) -> Optional[str]:
    """HOST:PORT of the cluster that ray.init(address=...) would join (resolving "auto" the way Ray does)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(address)
    except Exception:  # noqa: BLE001 - no cluster found for "auto", a bad address: ray.init says so itself
        return None


def _reachable(gcs_address: str, tries: int = 3) -> Optional[str]:
    """None when something accepts TCP connections at HOST:PORT, else why not (a head just starting gets a few
    seconds). Ray's own connect to a closed port retries for many minutes (measured: over 10 min)."""
    import socket

    host, _, port = gcs_address.rpartition(":")
    why = "no answer"
    for attempt in range(tries):
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
                return None
        except ValueError:
            return None  # not HOST:PORT after all: leave it to ray.init
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
        if attempt < tries - 1:
            time.sleep(2)
    return why


def enable_token_mode() -> None:
    """Token mode for this process (and the processes it starts), as Ray does for a local `ray.init()`."""
    os.environ[MODE_ENV] = "token"
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")  # Ray caches its config (auth mode included) per process
        AuthenticationTokenLoader.instance().reset_cache()
    except Exception:  # pragma: no cover - Ray's private API moved; the env var still reaches ray.init
        pass


def prepare_join(address: str) -> None:
    """Call before ``ray.init(address=...)`` that joins a running cluster ("auto" or HOST:PORT; not "local").

    RAY_AUTH_MODE set here is the user's choice and is kept; unset, token mode is turned on exactly when the
    cluster requires it and accepts the token found. Raises ClusterError (one line: what to set) when the
    cluster requires a token that is not here or refuses the one found, or when nothing listens at the
    address; does nothing when it cannot tell (ray.init then decides).
    """
    from sweeper.errors import ClusterError

    gcs = _gcs_address(address)
    if not gcs:
        return
    why = _reachable(gcs)
    if why:
        raise ClusterError(f"cannot reach a Ray cluster at {address} ({gcs}: {why}); is the cluster up, and is this "
                           "its head's address (HOST:PORT, the port of `ray start --head --port`, default 6379)?")
    mode = (os.environ.get(MODE_ENV) or "").lower()
    token, where = find_token()
    if mode == "token":  # Ray itself refuses to connect in token mode without a token, whatever the cluster
        if token is None:
            raise ClusterError(f"{address}: {MODE_ENV}=token is set here but no token was found ({where}); {HOW}")
        if probe(gcs, token) == "unauthenticated":
            raise ClusterError(refused_token_message(address, where))
        return
    if probe(gcs) != "unauthenticated":
        return  # no authentication (or cannot tell): connect as Ray would
    if mode:  # RAY_AUTH_MODE=disabled (or another value) set by the user, against a cluster that needs a token
        raise ClusterError(f"{address}: the Ray cluster requires token authentication but {MODE_ENV}={mode} is set "
                           f"here; unset it (sweeper then uses the token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                           f"~/.ray/auth_token) or set {MODE_ENV}=token; {HOW}")
    if token is None:
        raise ClusterError(missing_token_message(address, where))
    if probe(gcs, token) == "unauthenticated":
        raise ClusterError(refused_token_message(address, where))
    enable_token_mode()
