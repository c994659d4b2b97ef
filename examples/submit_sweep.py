"""Submit a sweep to a Ray cluster from Python, wait for it, and print its results table.

    python examples/submit_sweep.py search_spaces/cifar10_table1.yaml \\
        --address http://127.0.0.1:8265 --store s3://my-bucket/store

Run it from the project root (the job uploads the current directory). `ray dashboard cluster.yaml` forwards
the head's dashboard to 127.0.0.1:8265. If the cluster uses token authentication, export RAY_AUTH_TOKEN (or
put the token in ~/.ray/auth_token). Running it again resumes: nodes already in the store are skipped.
"""

import argparse
import sys

import yaml

from sweeper.cluster import cluster
from sweeper.sweep.spec import load


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", help="a sweep file inside the project, e.g. search_spaces/cifar10_table1.yaml")
    p.add_argument("--address", default="http://127.0.0.1:8265", help="the Ray dashboard")
    p.add_argument("--store", required=True, help="shared artifact store, e.g. s3://my-bucket/store")
    p.add_argument("--key", default="stages.d_det.attack.eps", help="a dotted key to turn into a grid")
    p.add_argument("--grid", default="[0.25, 0.5]", help="the grid's values (YAML list)")
    args = p.parse_args()

    sweep = load(args.sweep)  # validates the file before anything is uploaded
    print(f"sweep {sweep.name}: {len(sweep.stages)} stages")
    overrides = {args.key: {"grid": yaml.safe_load(args.grid)}}

    try:
        job = cluster.submit(args.sweep, args.address, overrides=overrides, store=args.store)
        print(f"submitted {job}; waiting (follow with: sweeper logs {job} --address {args.address})")
        final = cluster.wait(args.address, job)
    except cluster.ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"job {job}: {final}")
    if final != "SUCCEEDED":
        print(cluster.logs(args.address, job)[-3000:], file=sys.stderr)
        return 1

    rows = cluster.fetch_results(args.sweep, store=args.store, overrides=overrides)
    if not rows:
        print("no evaluation rows")
        return 0
    cols = [c for c in ("model_label", "train_set", "target_arch", "synth_eps", "clean_acc", "shifted_acc",
                        "worst_acc") if c in rows[0]] or list(rows[0])[:6]
    print("\t".join(cols))
    for r in rows:
        print("\t".join(f"{r.get(c):.4f}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
