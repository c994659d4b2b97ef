"""The `sweeper` command: argument parsing and error reporting only.

    sweeper plan FILE      print the DAG of unique nodes and which are done; trains nothing
    sweeper run FILE       execute the plan (re-running resumes: finished work is skipped)
    sweeper report FILE    results.csv/json, report.md and figures under <store>/reports/<sweep>/

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
            s.add_argument("--threads", type=int, default=None, help="torch threads in this process (local)")
            s.add_argument("--executor", choices=["local", "ray"], default=None,
                           help="local: one process; ray: actor-pool synthesis and Tune trials (default: "
                                "ray when --address is given, else local)")
            s.add_argument("--wandb", choices=["offline", "online", "disabled"], default=None,
                           help="W&B mode (default: run.wandb of the file, then WANDB_MODE, then offline)")
            s.add_argument("--address", default=None,
                           help="join a running Ray cluster ('auto' or HOST:PORT) instead of starting one")
            s.add_argument("--no-report", action="store_true", help="do not write the report at the end")
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
    if (args.executor or ("ray" if args.address else "local")) == "ray":
        counts = run_plan_ray(plan, store, address=args.address, wandb_mode=mode)
    else:
        counts = run_plan(plan, store, threads=args.threads, wandb_mode=mode)
    print(f"sweep {plan.sweep.name}: ran {counts['ran']} nodes, skipped {counts['skipped']} already done "
          f"({counts['total']} in the plan) in {time.time() - t0:.0f} s; store: {store.path()}")
    if not args.no_report:
        _print_written(write_report(plan, store))
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


def _print_written(written: dict) -> None:
    for name, path in written.items():
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    from .data import DataNotFoundError
    from .spec import SpecError

    args = _parser().parse_args(argv)
    handler = {"plan": _cmd_plan, "run": _cmd_run, "report": _cmd_report}[args.command]
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
    except KeyboardInterrupt:
        print("\nsweeper: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
