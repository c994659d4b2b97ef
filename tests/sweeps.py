"""Small sweep files and a real multi-node Ray cluster on this machine, shared by the Ray tests."""
import os
import signal
import socket
import subprocess
import sys
import tempfile

SMALL = """
name: small
seed: 0
data: {dataset: fashion_mnist, test_size: 200}
run: {store: STORE, shard_size: 100, synthesis_actors: 2, cpus_per_trial: 1, max_concurrent_trials: 2}
stages:
  std:
    kind: train
    arch: small_cnn
    train_size: 600
    train: &t {epochs: 2, batch_size: 128, optimizer: sgd, lr: 0.05, schedule: cosine}
  d_det: {kind: synthesize, from: std, method: relabel, size: 300, targets: deterministic,
          attack: {norm: l2, eps: 2.0, steps: 4, step_size: 0.5}}
  train_d_det: {kind: train, from: d_det, arch: small_cnn, train: *t}
  probe: {kind: transfer, from: d_det, models: [std]}
  eval: {kind: evaluate, from: [std, train_d_det], attacks: [{norm: l2, eps: 1.0, steps: 3}]}
"""

# The same pipeline with a synthesis node long enough (24 shards) to be interrupted in the middle.
SLOW = (SMALL.replace("shard_size: 100", "shard_size: 50")
        .replace("size: 300, targets", "size: 1200, targets").replace("steps: 4, step_size", "steps: 10, step_size"))

RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_sweep(tmp_path, name: str, text: str = SMALL):
    p = tmp_path / f"{name}.yaml"
    p.write_text(text.replace("STORE", str(tmp_path / name)))
    return p


def results_of(path, store: str | None = None) -> dict:
    """Every node done (checksums verified); the numbers a report is made of, by node label. ``store``
    overrides the file's run.store (as --store does)."""
    from sweeper.sweep.plan import build_plan
    from sweeper.sweep.spec import load
    from sweeper.store.store import Store

    plan = build_plan(load(path))
    store = Store(store or load(path).run.store)
    out = {}
    for key, node in plan.nodes.items():
        assert store.is_done(key, verify=True), node.label
        m = store.load_meta(key)
        if node.kind == "evaluate":
            out[node.label + "/" + plan.nodes[node.inputs["model"]].label] = (
                m["clean_acc"], [r["acc"] for r in m["robust"]])
        elif node.kind == "transfer":
            out[node.label] = (m["target_rate"], m["original_rate"])
        elif node.kind == "synthesize":
            t = store.load_tensors(key)
            out[node.label] = (m["hit_rate"], {k: v.tolist() for k, v in t.items()})
        elif node.kind == "train":
            out[node.label] = [round(r["train_loss"], 6) for r in m["history"]]
    return out


class RayCluster:
    """A real Ray cluster from `ray start`: a head and optional worker nodes, all on loopback, token auth as
    the environment sets it (the test conftest turns token mode on with a temp token file)."""

    def __init__(self, unset: tuple[str, ...] = (), **env):
        """``env``: variables to set for `ray start` (over this process's environment); ``unset``: variables to
        remove from it (e.g. the conftest's RAY_AUTH_MODE, to start a head as a user's plain `ray start`)."""
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **env)
        for k in unset:
            self.env.pop(k, None)
        self.address = None
        # its own temp dir (short: Ray's unix socket paths are limited), so that stop() can find this cluster's
        # processes and leave any other Ray on the machine alone (`ray stop` would kill every one of them)
        self.temp_dir = tempfile.mkdtemp(prefix="rt-")

    def _ray(self, *args, cwd=None) -> None:
        r = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=180, cwd=cwd)
        assert r.returncode == 0, f"ray {' '.join(args)}: {r.stderr[-3000:]}"

    def start_head(self, num_cpus: int, dashboard_port: int | None = None, cwd=None) -> str:
        """The head; with ``dashboard_port`` it serves the dashboard and the Jobs API on 127.0.0.1."""
        port = free_port()
        dash = ([f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1"] if dashboard_port
                else ["--include-dashboard=false"])
        # every port its own (a user's Ray beside the tests holds the defaults, e.g. 52365 and 10001)
        own_ports = [f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}"]
        self._ray("start", "--head", f"--port={port}", f"--num-cpus={num_cpus}", "--node-ip-address=127.0.0.1",
                  *dash, *own_ports, "--disable-usage-stats", f"--temp-dir={self.temp_dir}", cwd=cwd)
        self.address = f"127.0.0.1:{port}"
        return self.address

    def add_node(self, num_cpus: int, cwd=None, temp_dir: str | None = None) -> int:
        """A second raylet on this machine joined to the head; returns its node-manager port (its handle).
        ``cwd`` and ``temp_dir`` make it a node that shares no folder with the head (as another machine)."""
        port = free_port()
        own = [f"--temp-dir={temp_dir}"] if temp_dir else []
        self._ray("start", f"--address={self.address}", f"--num-cpus={num_cpus}", "--node-ip-address=127.0.0.1",
                  f"--node-manager-port={port}", f"--dashboard-agent-listen-port={free_port()}",
                  "--disable-usage-stats", *own, cwd=cwd)
        return port

    def processes(self, title: str | None = None) -> list:
        """This cluster's processes only (psutil.Process): every process whose command line names its temp dir
        or its head's GCS port (GCS, raylets of the head and of added nodes, dashboard, monitors, the client
        server), and all their descendants (agents, workers, Tune trial actors). Other Rays on the machine (a
        user's sweep beside the tests) are never listed. With ``title``: only those whose command line (a Ray
        worker's process title, e.g. ``ray::ImplicitFunc``) contains it."""
        import psutil

        if self.address is None:
            return []
        port = self.address.rsplit(":", 1)[1]
        roots = []
        for p in psutil.process_iter(["cmdline"]):
            args = p.info["cmdline"] or []
            if p.pid != os.getpid() and any(self.temp_dir in a or a.endswith(f":{port}") for a in args):
                roots.append(p)
        found = {p.pid: p for p in roots}
        for p in roots:
            try:
                found.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
        found.pop(os.getpid(), None)
        out = list(found.values())
        if title is not None:
            out = [p for p in out if title in " ".join(_cmdline(p))]
        return out

    def kill_node(self, port: int) -> int:
        """SIGKILL a worker node's raylet (one of this cluster's processes, told apart by its node-manager port)
        and every process under it (its workers, its agents), as when a machine disappears. Returns how many
        processes were killed."""
        import psutil

        raylets = [p for p in self.processes()
                   if f"--node_manager_port={port}" in _cmdline(p) and "raylet" in " ".join(_cmdline(p)[:1])]
        assert len(raylets) == 1, f"expected one raylet on port {port} in this cluster, found {len(raylets)}"
        victims = raylets[0].children(recursive=True) + raylets
        for p in victims:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        return len(victims)

    def stop(self) -> None:
        """Stop this cluster only (its processes(), see there); `ray stop` would stop every Ray on the machine.
        In `ray stop`'s order: raylets, then the rest, then the GCS (a GCS terminated beside its raylets
        outlived a 15 s wait here)."""
        import psutil

        victims = self.processes()
        first = lambda p: " ".join(_cmdline(p)[:1])  # noqa: E731
        raylets = [p for p in victims if "raylet" in first(p)]
        gcs = [p for p in victims if "gcs_server" in first(p)]
        rest = [p for p in victims if p not in raylets and p not in gcs]
        for bucket in (raylets, rest, gcs):
            for p in bucket:
                try:
                    p.terminate()
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(bucket, timeout=10)
            for p in alive:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
        self.address = None


def _cmdline(p) -> list[str]:
    import psutil

    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


# A source model that trains long enough (6 epochs on 2,000 images) to be killed in the middle, then the rest.
LONG_TRAIN = """
name: longtrain
seed: 0
data: {dataset: fashion_mnist, test_size: 200}
run: {store: STORE, shard_size: 100, cpus_per_trial: 1, max_concurrent_trials: 2, max_failures: 2}
stages:
  std:
    kind: train
    arch: small_cnn
    train_size: 2000
    train: {epochs: 6, batch_size: 128, optimizer: sgd, lr: 0.05, schedule: cosine}
  eval: {kind: evaluate, from: std, attacks: [{norm: l2, eps: 1.0, steps: 3}]}
"""


# One tiny Tune trial (the theory toy, a linear model, one epoch): for tests of joining a cluster and of the Jobs
# API, where the cluster path is tested, not training.
TINY = """
name: authcheck
seed: 0
data: {dataset: toy, toy: {d: 10, p: 0.95, n_train: 200, n_test: 100}}
run: {store: STORE, cpus_per_trial: 1, max_concurrent_trials: 1}
stages:
  std: {kind: train, arch: linear, train: {epochs: 1, batch_size: 100, optimizer: sgd, lr: 0.1, schedule: constant}}
"""


def wait_dashboard(url: str, token: str, timeout: float = 60) -> None:
    """Until the dashboard at ``url`` answers the Jobs API with the token (a just-started head needs seconds)."""
    import time

    import requests

    end = time.time() + timeout
    while time.time() < end:
        try:
            if requests.get(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"dashboard at {url} not ready after {timeout} s")
