"""Ray's real autoscaler on this machine, configured from the project's cluster.yaml (what `ray up` would run).

`ray up` needs a cloud, but Ray ships a fake multi-node provider: with ``RAY_FAKE_CLUSTER=1`` the head's
autoscaler (v2, as on a launched cluster) "launches" each worker node as one more raylet on this machine. The
node types are cluster.yaml's (same names, worker counts, head with no CPU or GPU for work); each GPU of a type
becomes one CPU here. Everything runs under the cluster's own temp dir and ports, so it is found and stopped by
``RayCluster.processes()/stop()`` and never touches another Ray on the machine (Ray's own
``AutoscalingCluster`` runs ``ray stop --force``, which would).

:class:`Watcher` reads the autoscaler's view from the GCS (the same ``GetClusterResourceState`` call autoscaler v2
makes) in a thread: which nodes of which type were up when, and the largest ``request_resources`` it saw.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import yaml

from sweeps import RAY, RayCluster, free_port

ROOT = Path(__file__).resolve().parent.parent
FAKE_HEAD_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"  # Ray's fake provider's head node id
PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


def fake_config(cluster_yaml: str | os.PathLike, gcs_address: str, idle_timeout_minutes: float | None = None,
                object_store_mb: int = 100) -> dict:
    """The autoscaling config of a fake cluster with cluster.yaml's node types: the same worker type names,
    min/max workers, top-level max_workers and (unless given) idle timeout; each GPU becomes one CPU; the head
    type (Ray's fake provider needs it named ``ray.head.default``) keeps cluster.yaml's head resources with GPU
    mapped to CPU likewise."""
    cfg = yaml.safe_load(Path(cluster_yaml).read_text())
    head = cfg["head_node_type"]

    def here(res: dict) -> dict:
        res = dict(res or {})
        out = {"CPU": int(res.pop("GPU", 0)) + int(res.pop("CPU", 0))} if "GPU" in res or "CPU" in res else {}
        return {**out, **res}

    types = {"ray.head.default": {"resources": here(cfg["available_node_types"][head].get("resources")),
                                  "node_config": {}, "max_workers": 0}}
    for name, nt in cfg["available_node_types"].items():
        if name != head:
            types[name] = {"min_workers": nt.get("min_workers", 0), "max_workers": nt["max_workers"],
                           "node_config": {},
                           "resources": {**here(nt.get("resources")), "object_store_memory": object_store_mb << 20}}
    empty = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
             "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files", "rsync_exclude",
             "rsync_filter")
    return {"cluster_name": f"fake-{cfg['cluster_name']}", "max_workers": cfg["max_workers"],
            "idle_timeout_minutes": (cfg.get("idle_timeout_minutes", 5) if idle_timeout_minutes is None
                                     else idle_timeout_minutes),
            "upscaling_speed": cfg.get("upscaling_speed", 1.0),
            "provider": {"type": "external", "module": PROVIDER, "launch_multiple": True,
                         "head_node_id": FAKE_HEAD_ID, "gcs_address": gcs_address},
            "available_node_types": types, "head_node_type": "ray.head.default", "auth": {"ssh_user": "ubuntu"},
            "file_mounts": {}, "file_mounts_sync_continuously": False, **{k: [] for k in empty}}


class AutoscalingCluster(RayCluster):
    """A head whose autoscaler (v2) launches and removes fake worker nodes on demand; see the module doc."""

    def __init__(self, cluster_yaml=ROOT / "cluster.yaml", idle_timeout_minutes: float = 0.15, **env):
        bindir = os.path.dirname(RAY)
        # health checks every second: a killed node is declared dead (and replaced) in seconds, not ~30 s
        super().__init__(PATH=f"{bindir}:{os.environ.get('PATH', '')}", RAY_FAKE_CLUSTER="1",
                         RAY_enable_autoscaler_v2="1", RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_ID,
                         RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_ID, AUTOSCALER_UPDATE_INTERVAL_S="1",
                         RAY_health_check_period_ms="1000", RAY_health_check_timeout_ms="1000",
                         RAY_health_check_failure_threshold="3", **env)
        self.cluster_yaml, self.idle_timeout = cluster_yaml, idle_timeout_minutes
        self.config: dict = {}
        self.dashboard = None

    def start(self, dashboard_port: int | None = None, cwd=None) -> str:
        port = free_port()
        self.config = fake_config(self.cluster_yaml, f"127.0.0.1:{port}", self.idle_timeout)
        path = Path(self.temp_dir) / "autoscaling.json"
        path.write_text(json.dumps(self.config))
        head = dict(self.config["available_node_types"]["ray.head.default"]["resources"])
        dash = free_port() if dashboard_port is None else dashboard_port
        self._ray("start", "--head", f"--port={port}", f"--num-cpus={head.pop('CPU', 0)}", "--num-gpus=0",
                  *([f"--resources={json.dumps(head)}"] if head else []), "--node-ip-address=127.0.0.1",
                  f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
                  f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
                  "--disable-usage-stats", f"--temp-dir={self.temp_dir}", f"--autoscaling-config={path}", cwd=cwd)
        self.address, self.dashboard = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
        return self.address

    def raylets(self) -> list:
        """This cluster's raylet processes (the head's first), as psutil.Process."""
        return [p for p in self.processes() if "raylet" in " ".join(_cmd(p)[:1])]

    def node_of(self, proc) -> "object | None":
        """The raylet a worker process (an actor, a trial) runs under, i.e. its node."""
        raylets = {p.pid: p for p in self.raylets()}
        p = proc
        while p is not None and p.pid not in raylets:
            p = p.parent()
        return p

    def kill_raylet(self, raylet) -> int:
        """SIGKILL one node: its raylet and every process under it, as a spot reclaim does. Returns how many."""
        import psutil

        victims = raylet.children(recursive=True) + [raylet]
        for p in victims:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        return len(victims)


def _cmd(p) -> list[str]:
    import psutil

    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


class Watcher(threading.Thread):
    """Polls the GCS for the autoscaler's view (``GetClusterResourceState``, with the cluster token): every
    worker node seen (id -> type, first and last time alive) and the most bundles asked by request_resources."""

    def __init__(self, address: str, token: str, period: float = 0.5):
        super().__init__(daemon=True)
        self.address, self.token, self.period = address, token, period
        self.nodes: dict[str, dict] = {}  # node id (hex) -> {"type", "first", "last", "status"}
        self.max_requested = 0  # bundles in the largest cluster resource constraint seen
        # (time, bundles, nodes with a CPU in use) each time the request changed
        self.requests: list[tuple[float, int, int]] = []
        self.errors = 0
        self._halt = threading.Event()

    def run(self) -> None:
        import grpc
        from ray.core.generated import autoscaler_pb2, autoscaler_pb2_grpc

        with grpc.insecure_channel(self.address) as channel:
            stub = autoscaler_pb2_grpc.AutoscalerStateServiceStub(channel)
            while not self._halt.is_set():
                try:
                    reply = stub.GetClusterResourceState(autoscaler_pb2.GetClusterResourceStateRequest(),
                                                         timeout=5,
                                                         metadata=[("authorization", f"Bearer {self.token}")])
                    self._record(reply.cluster_resource_state, time.time())
                except grpc.RpcError:
                    self.errors += 1
                self._halt.wait(self.period)

    def _record(self, state, now: float) -> None:
        from ray.core.generated import autoscaler_pb2

        for n in state.node_states:
            nid = n.node_id.hex()
            if nid.endswith(FAKE_HEAD_ID[-5:]) and n.ray_node_type_name in ("", "ray.head.default"):
                continue
            rec = self.nodes.setdefault(nid, {"type": n.ray_node_type_name, "first": now, "last": None,
                                              "status": None})
            rec["status"] = autoscaler_pb2.NodeStatus.Name(n.status)
            if n.status != autoscaler_pb2.NodeStatus.DEAD:
                rec["last"] = now
        asked = sum(r.count for c in state.cluster_resource_constraints for r in c.resource_requests)
        if not self.requests or self.requests[-1][1] != asked:
            # how many nodes had work (a CPU in use) at that moment
            busy = sum(1 for n in state.node_states
                       if n.available_resources.get("CPU", 0) < n.total_resources.get("CPU", 0))
            self.requests.append((now, asked, busy))
        self.max_requested = max(self.max_requested, asked)

    def alive(self) -> list[str]:
        return [k for k, v in self.nodes.items() if v["status"] != "DEAD"]

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def wait_for(cond, timeout: float, what: str, poll: float = 0.5):
    end = time.time() + timeout
    while time.time() < end:
        got = cond()
        if got:
            return got
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def ray_status(cluster: AutoscalingCluster) -> str:
    """`ray status` of this cluster (for failure messages)."""
    r = subprocess.run([RAY, "status", f"--address={cluster.address}"], env=cluster.env, capture_output=True,
                       text=True, timeout=60)
    return r.stdout[-3000:] + r.stderr[-1000:]
