"""The store on an S3 API against local disk: requests per node, and the toy sweep's wall time (ratio).

Starts the tests' S3 server (moto on loopback, with a request counter), then:
  1. one node's save / is_done / load_meta + load_tensors on S3, requests counted per call;
  2. `sweeper run search_spaces/toy.yaml` (a local Ray, W&B offline) with the store on local disk (A) and on
     S3 (B), in the order A B B A, each on a fresh store; wall time of the whole command and the requests
     the S3 runs made, per node of the plan.

    .venv/bin/python benchmarks/bench_store.py
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
TOY = ROOT / "search_spaces" / "toy.yaml"

from _results import record  # noqa: E402


def per_call(server) -> list[tuple[str, dict]]:
    import torch

    from sweeper.store.store import Store

    s = Store(server.uri())
    s.claim()
    tensors = {"w": torch.randn(256, 256), "y": torch.arange(100)}
    out = []
    server.requests(reset=True)
    s.save("k", meta={"acc": 0.5}, tensors=tensors)
    out.append(("save (1 tensor file + manifest)", server.requests(reset=True)))
    s.is_done("k")
    out.append(("is_done", server.requests(reset=True)))
    s.load_meta("k")
    s.load_tensors("k")
    out.append(("load_meta + load_tensors", server.requests(reset=True)))
    s.is_done("missing")
    out.append(("is_done of a node not yet done", server.requests(reset=True)))
    return out


def run_toy(store: str) -> float:
    env = dict(os.environ, WANDB_MODE="offline", RAY_USAGE_STATS_ENABLED="0")
    with tempfile.TemporaryDirectory() as cwd:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "sweeper.cli", "run", str(TOY), "--store", store],
                           cwd=cwd, env=env, capture_output=True, text=True)
        dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"toy sweep failed on {store}:\n{r.stderr[-3000:]}")
    return dt


def main() -> None:
    from s3server import S3Server

    from sweeper.sweep.plan import build_plan
    from sweeper.sweep.spec import load

    server = S3Server()
    try:
        print("## Requests per call on the S3 server (moto, loopback)\n")
        print("| call | requests |\n|---|---|")
        calls = per_call(server)
        for name, counts in calls:
            print(f"| {name} | {sum(counts.values())} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}) |")

        n_nodes = len(build_plan(load(TOY)).nodes)
        walls: dict[str, list[float]] = {"local": [], "s3": []}
        reqs = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, kind in enumerate(["local", "s3", "s3", "local"]):
                if kind == "local":
                    walls["local"].append(run_toy(os.path.join(tmp, f"store{i}")))
                else:
                    server.requests(reset=True)
                    walls["s3"].append(run_toy(server.uri()))
                    areas = server.requests(what="_areas")
                    reqs.append((server.requests(reset=True), areas))
        local, s3 = (sum(v) / len(v) for v in (walls["local"], walls["s3"]))
        print(f"\n## Toy sweep ({n_nodes} nodes, `sweeper run` with a local Ray, W&B offline, order A B B A)\n")
        print("| store | wall (mean of 2) | runs |\n|---|---|---|")
        print(f"| A: local disk | {local:.1f} s | {', '.join(f'{w:.1f}' for w in walls['local'])} |")
        print(f"| B: S3 (moto, loopback) | {s3:.1f} s | {', '.join(f'{w:.1f}' for w in walls['s3'])} |")
        print(f"\nB / A = **{s3 / local:.2f}**")
        for r, areas in reqs:
            total = sum(r.values())
            print(f"\nS3 run: {total} requests ({', '.join(f'{k} {v}' for k, v in sorted(r.items()))}), "
                  f"{total / n_nodes:.0f} per node of the plan; by store area: "
                  + ", ".join(f"{k} {v} ({v / n_nodes:.0f}/node)" for k, v in sorted(areas.items(), key=lambda kv: -kv[1])))
        total = sum(sum(r.values()) for r, _ in reqs) / len(reqs)
        areas_mean: dict[str, float] = {}
        for _, areas in reqs:
            for k, v in areas.items():
                areas_mean[k] = areas_mean.get(k, 0) + v / len(reqs)
        figures = {"toy_s3_over_local": round(s3 / local, 3), "toy_requests_per_node": round(total / n_nodes, 1)}
        figures.update({f"requests_{key}": sum(c.values()) for key, (_, c) in
                        zip(("save", "is_done", "load_meta_and_tensors", "is_done_missing"), calls)})
        record("bench_store", title="The store on an S3 API (moto on loopback, request counter) against local disk: "
               "requests per call, and the toy sweep through `sweeper run` (a local Ray, W&B offline), "
               "order A B B A, each on a fresh store.", figures=figures, params={"toy_nodes": n_nodes},
               tables=[{"title": "Requests per call on the S3 server:", "header": ["call", "requests", "by method"],
                        "rows": [[name, sum(c.values()), ", ".join(f"{k} {v}" for k, v in sorted(c.items()))]
                                 for name, c in calls]},
                       {"title": f"The toy sweep ({n_nodes} nodes):", "header": ["store", "wall (mean of 2)", "runs"],
                        "rows": [["A: local disk", f"{local:.1f} s", ", ".join(f"{w:.1f}" for w in walls["local"])],
                                 ["B: S3 (moto, loopback)", f"{s3:.1f} s",
                                  ", ".join(f"{w:.1f}" for w in walls["s3"])]]},
                       {"title": "Requests of an S3 toy run by store area (mean of the 2 S3 runs):",
                        "header": ["store area", "requests", "per node"],
                        "rows": [[k, round(v), round(v / n_nodes, 1)]
                                 for k, v in sorted(areas_mean.items(), key=lambda kv: -kv[1])]}],
               extra_packages=["moto"])
    finally:
        server.stop()


if __name__ == "__main__":
    main()
