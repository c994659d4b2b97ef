"""The `sweeper` command: argument parsing and error reporting only.

    sweeper plan FILE      print the DAG of unique nodes and which are done; trains nothing
    sweeper run FILE       execute the plan (re-running resumes: finished work is skipped)
    sweeper report FILE    results.csv/json, report.md and figures under <store>/reports/<sweep>/
    sweeper validate-cluster FILE   check a `ray up` cluster file offline (Ray's schema + sweeper's needs)
    sweeper submit FILE --address URL   run a sweep on a Ray cluster as a job (resubmitting resumes)
    sweeper status JOB --address URL / sweeper logs JOB --address URL

User mistakes (a bad sweep file, missing data) print one clear line and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sweeper", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in [("plan", "print the plan (nodes, edges, counts, done marks)"),
                        ("run", "run the sweep; re-running resumes"),
                        ("report", "write results tables, report.md and figures")]:
        s = sub.add_parser(name, help=help_)
        s.add_argument("file", help="a sweep file, e.g. search_spaces/fmnist_demo.yaml")
        s.add_argument("--store", help="artifact store (path or URI); overrides run.store of the file")
        if name == "run":
            s.add_argument("--address", default=None,
                           help="join a running Ray cluster ('auto' or HOST:PORT); default: RAY_ADDRESS if set, "
                                "else a local Ray that sweeper starts and stops")
            s.add_argument("--executor", choices=["ray", "local"], default="ray",
                           help="ray (default): synthesis shards on Ray actors, training and evaluation as Ray "
                                "Tune trials; local: everything in this process, for debugging (no Ray)")
            s.add_argument("--threads", type=int, default=None, help="torch threads (--executor local only)")
            s.add_argument("--wandb", choices=["offline", "online", "disabled"], default=None,
                           help="W&B mode (default: run.wandb of the file, then WANDB_MODE, then offline)")
            s.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    s = sub.add_parser("validate-cluster", help="check a Ray cluster launcher file (cluster.yaml) offline")
    s.add_argument("file", help="e.g. cluster.yaml")
    s = sub.add_parser("submit", help="submit a sweep to a Ray cluster as a job; resubmitting resumes")
    s.add_argument("file", help="a sweep file inside this project, e.g. search_spaces/cifar10_table1.yaml")
    s.add_argument("--address", required=True, help="the Ray dashboard, e.g. http://127.0.0.1:8265")
    s.add_argument("--store", help="artifact store URI (shared storage such as s3://bucket/store on a cluster)")
    s.add_argument("--wandb", choices=["offline", "online", "disabled"], default=None, help="W&B mode for the job")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the sweep file (VALUE is YAML), e.g. "
                        "--set 'stages.d_det.attack.eps={grid: [0.25, 0.5]}'; repeatable")
    s.add_argument("--wait", action="store_true", help="wait for the job to end; exit 1 unless it succeeded")
    for name, help_ in [("status", "print a submitted job's status"), ("logs", "print a submitted job's logs")]:
        s = sub.add_parser(name, help=help_)
        s.add_argument("job", help="the job id printed by `sweeper submit`")
        s.add_argument("--address", required=True, help="the Ray dashboard, e.g. http://127.0.0.1:8265")
    return p


def _load(args):
    from .plan import build_plan
    from .spec import load
    from .store import Store

    sweep = load(args.file)
    plan = build_plan(sweep)
    store = Store(args.store or sweep.run.store)
    return sweep, plan, store


def _cmd_plan(args) -> int:
    _, plan, store = _load(args)
    done = {k for k in plan.nodes if store.is_done(k)}
    print(plan.render(done))
    return 0


def _cmd_run(args) -> int:
    from .executor import run_plan, run_plan_ray
    from .report import write_report

    _, plan, store = _load(args)
    t0 = time.time()
    mode = args.wandb or os.environ.get("WANDB_MODE") or plan.sweep.run.wandb
    if args.executor == "ray":
        counts = run_plan_ray(plan, store, address=args.address, wandb_mode=mode)
    else:
        counts = run_plan(plan, store, threads=args.threads, wandb_mode=mode)
    print(f"sweep {plan.sweep.name}: ran {counts['ran']} nodes, skipped {counts['skipped']} already done "
          f"({counts['total']} in the plan) in {time.time() - t0:.0f} s; store: {store.path()}")
    if not args.no_report:
        from .tracking import log_report

        _print_written(write_report(plan, store))
        log_report(plan, store, mode)
    return 0


def _cmd_report(args) -> int:
    from .report import write_report

    _, plan, store = _load(args)
    missing = [n.label for n in plan.nodes.values() if not store.is_done(n.key)]
    if missing:
        print(f"note: {len(missing)} of {len(plan.nodes)} nodes are not done yet; the report covers the rest "
              f"(run `sweeper run {args.file}` to finish)", file=sys.stderr)
    written = write_report(plan, store)
    _print_written(written)
    if "report.md" in written:
        print()
        print(store.read_bytes(f"reports/{plan.sweep.name}/report.md").decode())
    return 0


def _cmd_validate_cluster(args) -> int:
    from .cluster import validate_cluster

    problems = validate_cluster(args.file)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"{args.file}: valid")
    return 0


def _parse_sets(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE (got {item!r})")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _cmd_submit(args) -> int:
    from . import cluster

    overrides = _parse_sets(args.overrides)
    job = cluster.submit(args.file, args.address, overrides=overrides or None, store=args.store, wandb=args.wandb)
    print(job)
    if not args.wait:
        print(f"follow it: sweeper status {job} --address {args.address}; sweeper logs {job} --address "
              f"{args.address}", file=sys.stderr)
        return 0
    final = cluster.wait(args.address, job)
    print(f"job {job}: {final}", file=sys.stderr)
    if final != "SUCCEEDED":
        print(cluster.logs(args.address, job)[-4000:], file=sys.stderr)
        return 1
    return 0


def _cmd_status(args) -> int:
    from .cluster import status

    print(status(args.address, args.job))
    return 0


def _cmd_logs(args) -> int:
    from .cluster import logs

    print(logs(args.address, args.job), end="")
    return 0


def _print_written(written: dict) -> None:
    for name, path in written.items():
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    from .data import DataNotFoundError
    from .spec import SpecError

    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.executor == "local" and args.address:
        parser.error("--executor local runs everything in this process; it cannot take --address")
    handler = {"plan": _cmd_plan, "run": _cmd_run, "report": _cmd_report,
               "validate-cluster": _cmd_validate_cluster, "submit": _cmd_submit, "status": _cmd_status,
               "logs": _cmd_logs}[args.command]
    try:
        return handler(args)
    except SpecError as e:
        print(f"sweeper: invalid sweep file: {e}", file=sys.stderr)
        return 2
    except DataNotFoundError as e:
        print(f"sweeper: {e}", file=sys.stderr)
        return 3
    except FileNotFoundError as e:
        print(f"sweeper: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if type(e).__name__ in ("ShardFailed", "TrialsFailed"):  # work failed after its retries
            print(f"sweeper: {e}\nsweeper: finished work is kept in the store; run the same command again to "
                  "resume", file=sys.stderr)
            return 5
        if type(e).__name__ == "ClusterError" or (isinstance(e, ValueError) and args.command == "submit"):
            print(f"sweeper: {e}", file=sys.stderr)
            return 4
        raise
    except KeyboardInterrupt:
        print("\nsweeper: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
