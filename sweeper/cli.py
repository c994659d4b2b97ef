"""The `sweeper` command: argument parsing and error reporting only.

    sweeper plan FILE      print the DAG of unique nodes and which are done; trains nothing
    sweeper run FILE       execute the plan (re-running resumes: finished work is skipped)
    sweeper report FILE    results.csv/json, report.md and figures under <store>/reports/<sweep>/
    sweeper validate-cluster FILE   check a `ray up` cluster file offline (Ray's schema + sweeper's needs)
    sweeper submit FILE --address URL   run a sweep on a Ray cluster as a job (resubmitting resumes)
    sweeper status JOB --address URL / sweeper logs JOB --address URL
    sweeper wandb FILE [--to DIR]   copy the sweep's offline W&B runs out of the store, for `wandb sync`
    sweeper dashboard FILE --entity E --project P [--json OUT] [--publish]   the sweep's W&B report and saved view
    sweeper data push DATASET --store URI [--from DIR]   copy a dataset into the store (data.root: store)
    sweeper data list --store URI                        the datasets pushed into a store
    sweeper migrate-keys FILE [--old-root ROOT]   copy a store's nodes from the old keys (which hashed data.root)
    sweeper schema                 the sweep file's JSON Schema (search_spaces/sweep.schema.json is a copy)

User mistakes (a bad sweep file, missing data) print one clear line and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

PLAN_TABLE_MAX = 200  # `sweeper plan` prints every node up to this many, else a summary (--all: every node)

DESCRIPTION = """\
sweeper runs the experiments of Ilyas et al. 2019, "Adversarial Examples Are Not Bugs, They Are Features", as
sweeps: a YAML sweep file names the data, the models, the attacks and their grids; sweeper plans them as a graph of
content-keyed steps, runs the ones its store does not hold yet (here or on a Ray cluster), and writes the report.

  sweeper run search_spaces/fmnist_demo.yaml      train, synthesize and evaluate (re-running resumes)
  sweeper report search_spaces/fmnist_demo.yaml   results.csv, report.md and figures

Each command has its own help: sweeper COMMAND --help."""

INTERRUPTED = "130 / 143 interrupted by Ctrl-C / SIGTERM (finished work is kept; run the same command again to resume)"
BAD_INPUT = "2 a bad sweep file, --set or store (one line saying where)"
NO_DATA = "3 the dataset is not found or damaged"


def _doc(what: str, codes: list[str], example: str) -> dict:
    """add_parser keywords for a subcommand's help: what it does, its exit codes and one example."""
    return dict(description=what, formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="exit codes:\n" + "".join(f"  {c}\n" for c in codes) + f"\nexample:\n  {example}")


def _parser() -> argparse.ArgumentParser:
    from sweeper import __version__

    p = argparse.ArgumentParser(
        prog="sweeper", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: sweeper plan search_spaces/toy.yaml   (print what a sweep would compute; trains nothing)\n\n"
               "exit codes: 0 done (every node of the plan verified in the store); 2 a bad sweep file, --set or "
               "store; 3 data not found or damaged;\n4 a cluster or job problem (address, token); 5 work failed "
               "after its retries (run the same command again to resume);\n6 `sweeper dashboard`: "
               "wandb-workspaces missing or the publish failed;\n130 / 143 interrupted by Ctrl-C / "
               "SIGTERM (run the same command again to resume)")
    p.add_argument("--version", action="version", version=f"sweeper {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    docs = {
        "plan": _doc("Print the sweep's plan: every unique node (key, kind, label, inputs) with a done mark, the edges "
                     "and the counts per kind.\nNothing is trained or written; without the data the keys are "
                     "provisional (a warning says so).",
                     ["0 the plan was printed", BAD_INPUT],
                     "sweeper plan search_spaces/fmnist_demo.yaml --set 'stages.d_det.attack.eps={grid: [0.5, 1.0]}'"),
        "run": _doc("Run the sweep: every node of the plan that the store does not hold yet, dependencies first; then "
                    "write the report.\nRe-running the same command resumes: finished nodes and synthesis shards are "
                    "skipped.",
                    ["0 done: every node of the plan is verified in the store", BAD_INPUT, NO_DATA,
                     "4 a Ray cluster problem (--address, token)",
                     "5 work failed after its retries (run the same command again to resume)", INTERRUPTED],
                    "sweeper run search_spaces/toy.yaml --executor local"),
        "report": _doc("Write the sweep's results from the store: results.csv/json, report.md and figures under "
                       "<store>/reports/<sweep>/,\nthen print report.md. Nodes not done yet are left out (a note "
                       "says how many).",
                       ["0 the report was written", BAD_INPUT, NO_DATA,
                        "5 a stored result is damaged (run `sweeper run` on the same file to redo it)"],
                       "sweeper report search_spaces/fmnist_demo.yaml | head -n 40"),
    }
    for name, help_ in [("plan", "print the plan (nodes, edges, counts, done marks)"),
                        ("run", "run the sweep; re-running resumes"),
                        ("report", "write results tables, report.md and figures")]:
        s = sub.add_parser(name, help=help_, **docs[name])
        s.add_argument("file", help="a sweep file, e.g. search_spaces/fmnist_demo.yaml ('-': read it from stdin)")
        s.add_argument("--store", help="artifact store (path or URI); overrides run.store of the file")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a value of the sweep file (VALUE is YAML), e.g. --set data.root=store; "
                            "repeatable; give the same --set to plan, run and report")
        if name == "plan":
            s.add_argument("--all", dest="show_all", action="store_true",
                           help=f"print every node even when the plan has more than {PLAN_TABLE_MAX} (by default a "
                                "longer plan prints a summary: counts per stage, the first and last nodes)")
        if name == "run":
            s.add_argument("--address", default=None,
                           help="join a running Ray cluster ('auto' or HOST:PORT); default: RAY_ADDRESS if set, "
                                "else a local Ray that sweeper starts and stops")
            s.add_argument("--executor", choices=["ray", "local"], default="ray",
                           help="ray (default): synthesis shards on Ray actors, training and evaluation as Ray "
                                "Tune trials; local: everything in this process, for debugging (no Ray)")
            s.add_argument("--threads", type=int, default=None, help="torch threads (--executor local only)")
            s.add_argument("--wandb", choices=["offline", "online", "disabled"], default=None,
                           help="W&B mode (default: WANDB_MODE, then run.wandb of the file, then offline)")
            s.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    s = sub.add_parser("validate-cluster", help="check a Ray cluster launcher file (cluster.yaml) offline", **_doc(
        "Check a Ray cluster launcher file offline, before `ray up`: Ray's own schema and what sweeper needs on its "
        "nodes\n(sweeper installed, a shared store, token auth). Prints one line per problem, then warnings.",
        ["0 valid (warnings, if any, are printed but allowed)", "1 the file has problems (one line each) or cannot "
         "be read"], "sweeper validate-cluster cluster.yaml"))
    s.add_argument("file", help="e.g. cluster.yaml")
    s = sub.add_parser("submit", help="submit a sweep to a Ray cluster as a job; resubmitting resumes", **_doc(
        "Submit a sweep to a running Ray cluster as a job (the Jobs API); the job runs `sweeper run` on the head.\n"
        "Prints the job id. Submitting the same sweep again resumes it: nodes already in the store are skipped.",
        ["0 submitted (with --wait: the job succeeded)", "1 --wait and the job did not succeed (its log tail is "
         "printed)", BAD_INPUT, "4 a cluster or job problem (address, token, a relative store)"],
        "sweeper submit search_spaces/cifar10_table1.yaml --address http://127.0.0.1:8265 --store s3://bucket/store"))
    s.add_argument("file", help="a sweep file inside this project, e.g. search_spaces/cifar10_table1.yaml")
    s.add_argument("--address", required=True, help="the Ray dashboard, e.g. http://127.0.0.1:8265")
    s.add_argument("--store", help="artifact store URI (shared storage such as s3://bucket/store on a cluster)")
    s.add_argument("--wandb", choices=["offline", "online", "disabled"], default=None, help="W&B mode for the job")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the sweep file (VALUE is YAML), e.g. "
                        "--set 'stages.d_det.attack.eps={grid: [0.25, 0.5]}'; repeatable")
    s.add_argument("--wait", action="store_true", help="wait for the job to end; exit 1 unless it succeeded")
    s.add_argument("--code", choices=["installed", "upload"], default="installed",
                   help="installed (default): the job runs the sweeper installed on the nodes (cluster.yaml installs "
                        "it) and only the sweep file travels, inside the job; upload: this project folder is "
                        "uploaded as the job's working directory, so code changed here since `ray up` runs there")
    s = sub.add_parser("data", help="datasets in the store: push once, every node loads and checks that copy", **_doc(
        "Datasets in the store: `push` copies a dataset's files into it once; a sweep with data.root: store makes "
        "every node\nload and check that copy. `list` prints the datasets a store holds.",
        ["0 done", "2 a bad store (unreachable, not writable)", NO_DATA + " (push)"],
        "sweeper data push fashion_mnist --store s3://bucket/store"))
    dsub = s.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("push", help="copy a dataset's files into <store>/datasets/DATASET (manifest written last)",
                        **_doc("Copy a dataset's files into <store>/datasets/DATASET, its manifest (sha256 of every "
                               "file) written last;\nrunning it again sends only what the store lacks.",
                               ["0 pushed", "2 a bad store (unreachable, not writable)", NO_DATA],
                               "sweeper data push fashion_mnist --store ./store"))
    d.add_argument("dataset", choices=["fashion_mnist", "cifar10"])
    d.add_argument("--store", required=True, help="artifact store (path or URI, e.g. s3://bucket/store)")
    d.add_argument("--from", dest="src", default=None, metavar="DIR",
                   help="fashion_mnist: the folder of the four IDX files (default /usr/share/datasets/fashion-mnist);"
                        " cifar10: the folder holding cifar-10-batches-py, or that folder itself "
                        "(default ~/.cache/sweeper/data)")
    d.add_argument("--force", action="store_true", help="send every file again, even those the store has")
    d = dsub.add_parser("list", help="print the datasets pushed into a store", **_doc(
        "Print the datasets pushed into a store: files, bytes and manifest digest of each.",
        ["0 printed (also when there are none)", "2 a bad store (unreachable, not a sweeper store)"],
        "sweeper data list --store s3://bucket/store"))
    d.add_argument("--store", required=True, help="artifact store (path or URI)")
    s = sub.add_parser(
        "migrate-keys", help="reuse a store written before node keys hashed the data's content: copy its finished "
                             "nodes to the new keys (nothing recomputed; the old entries are kept)",
        description="Node keys hash the data's content (the sha256 of its files), no longer data.root (where it is "
                    "read from). This copies every node of FILE's plan that is done under its old key to its new "
                    "key: files copied (server-side on S3), manifest written last, so an interrupted migration is "
                    "finished by running it again; running it twice copies nothing. The old entries are kept "
                    "unless --remove-old. Needs the data (its checksum makes the new keys).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes:\n  0 migrated (or nothing to copy)\n  " + BAD_INPUT + "\n  " + NO_DATA + "\n  "
               + INTERRUPTED + "\n\nexample:\n  sweeper migrate-keys search_spaces/fmnist_demo.yaml --old-root store")
    s.add_argument("file", help="the sweep file the store's nodes were run with")
    s.add_argument("--store", help="artifact store (path or URI); overrides run.store of the file")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="the same overrides as given to run")
    s.add_argument("--old-root", default=None, metavar="ROOT",
                   help="the data.root the store's nodes were planned with, as YAML (null for none; default: the "
                        "file's data.root after --set), when the data has moved since, e.g. --old-root store")
    s.add_argument("--remove-old", action="store_true",
                   help="delete each old entry once its copy is committed (only when no other sweep file in this "
                        "store still needs it)")
    s = sub.add_parser("wandb", help="copy the offline W&B runs of every node (any store) to a local folder for "
                                     "`wandb sync`", **_doc(
        "Copy the sweep's offline W&B runs out of the store (any store, S3 included) into a local folder, and "
        "print the\n`wandb sync` command that uploads them.",
        ["0 copied", "1 the store holds no offline W&B run of this sweep (run with --wandb offline)", BAD_INPUT,
         NO_DATA], "sweeper wandb search_spaces/fmnist_demo.yaml --to wandb-runs/demo"))
    s.add_argument("file", help="the sweep file")
    s.add_argument("--store", help="artifact store (path or URI); overrides run.store of the file")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="the same overrides as given to run")
    s.add_argument("--to", default=None, metavar="DIR",
                   help="where to put them (default: wandb-runs/<sweep name>)")
    s = sub.add_parser("dashboard", help="build the sweep's W&B report and saved view as code (wandb-workspaces); "
                                         "--json OUT writes them offline, --publish saves them to W&B", **_doc(
        "Build the sweep's W&B report and saved view as code (wandb-workspaces), from its plan and report: "
        "--json OUT\nwrites them offline, --publish saves them to W&B (after `sweeper wandb` and `wandb sync`).",
        ["0 built (and written or published)", BAD_INPUT, NO_DATA,
         "6 wandb-workspaces is missing, or the publish failed"],
        "sweeper dashboard search_spaces/fmnist_demo.yaml --entity me --project sweeper --json dash.json"))
    s.add_argument("file", help="the sweep file")
    s.add_argument("--store", help="artifact store (path or URI); overrides run.store of the file")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="the same overrides as given to run")
    s.add_argument("--entity", required=True, help="the W&B entity (user or team) the runs are synced to")
    s.add_argument("--project", required=True, help="the W&B project the runs are synced to (WANDB_PROJECT of the run)")
    s.add_argument("--json", dest="json_out", default=None, metavar="OUT",
                   help="write the serialised report and view specs to OUT (no network)")
    s.add_argument("--publish", action="store_true",
                   help="save the report and the view to W&B (WANDB_API_KEY; WANDB_BASE_URL for a private server)")
    for name, help_ in [("status", "print a submitted job's status"), ("logs", "print a submitted job's logs")]:
        s = sub.add_parser(name, help=help_, **_doc(
            f"Print a job's {'status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)' if name == 'status' else 'log'}"
            ", as `sweeper submit` printed its id, from the cluster's dashboard.",
            ["0 printed", "4 the cluster cannot be reached, or no such job"],
            f"sweeper {name} raysubmit_XXXXXXXX --address http://127.0.0.1:8265"))
        s.add_argument("job", help="the job id printed by `sweeper submit`")
        s.add_argument("--address", required=True, help="the Ray dashboard, e.g. http://127.0.0.1:8265")
    sub.add_parser("schema", help="print the sweep file's JSON Schema (for editors)", **_doc(
        "Print the JSON Schema of sweep files, generated from the models that validate them; editors with a YAML "
        "language\nserver use it to complete and check sweep files (the shipped ones point at a committed copy, "
        "search_spaces/sweep.schema.json).",
        ["0 printed", "2 a usage error (the command takes no argument)"],
        "sweeper schema > search_spaces/sweep.schema.json"))
    return p


def _load(args, provisional: bool = False):
    """(sweep, plan, store) of a command's file, --set and --store. Without the data (its checksum is part of
    every key) the plan's keys are provisional: ``provisional`` (``plan``) takes it with a warning line, every
    other command stops with the reason (exit 3)."""
    from sweeper.errors import SpecError
    from sweeper.sweep.plan import build_plan
    from sweeper.sweep.spec import load
    from sweeper.store.store import Store

    try:
        overrides = _parse_sets(getattr(args, "overrides", None) or [])
    except ValueError as e:
        raise SpecError(args.file, "", str(e)) from None
    sweep = load(args.file, overrides or None)
    store = Store(args.store or sweep.run.store)
    store.check()  # an unreachable endpoint, no such bucket, a path under a file: one line now, not later
    plan = build_plan(sweep, store)  # data.root: store reads the dataset's manifest from this store
    if plan.data_error and not provisional and _downloadable(sweep.data):
        # not on this machine: torchvision's download (into data.root or ~/.cache/sweeper/data), then the keys
        # hash the downloaded files; a failed download raises DataNotFoundError saying where it looked and why
        from sweeper.science.data import load as load_data

        print(f"sweeper: {plan.data_error}; trying torchvision's download", file=sys.stderr)
        for split in ("train", "test"):
            load_data("fashion_mnist", split, root=sweep.data.root)
        plan = build_plan(sweep, store)
    if not provisional:
        plan.require_data()
    elif plan.data_error:
        print(f"sweeper: warning: {plan.data_error}; the keys below are provisional (no checksum) and no node is "
              "marked done", file=sys.stderr)
    return sweep, plan, store


def _downloadable(data) -> bool:
    """Fashion-MNIST read from a local folder (or the default places): torchvision can download it there. Not a
    store copy (`store`, a URI or a folder holding a pushed manifest): that is pushed, never downloaded."""
    from sweeper.sweep.data_id import STORE_ROOT, is_pushed

    root = data.root
    return data.dataset == "fashion_mnist" and (root is None or (root != STORE_ROOT and "://" not in root
                                                                  and not is_pushed(root)))


def _legacy_note(plan, store) -> None:
    from sweeper.sweep.migrate import legacy_hint

    hint = legacy_hint(plan, store)
    if hint:
        print(f"sweeper: note: {hint}", file=sys.stderr)


def _cmd_plan(args) -> int:
    from sweeper.report.report import done_keys

    _, plan, store = _load(args, provisional=True)
    done = set() if plan.data_error else done_keys(store, plan.nodes)
    if args.show_all or len(plan.nodes) <= PLAN_TABLE_MAX:
        print(plan.render(done))
    else:
        print(plan.render_summary(done))
    _legacy_note(plan, store)
    return 0


def _cmd_migrate_keys(args) -> int:
    import yaml

    from sweeper.sweep.migrate import FILE_ROOT, migrate

    _, plan, store = _load(args)
    try:
        old_root = FILE_ROOT if args.old_root is None else yaml.safe_load(args.old_root)
    except yaml.YAMLError:
        old_root = ...  # refused just below, in one line
    if old_root is not FILE_ROOT and old_root is not None and not isinstance(old_root, str):
        from sweeper.errors import SpecError

        raise SpecError(args.file, "", f"--old-root: expected a path, URI, `store` or null, got {args.old_root!r}")
    migrate(plan, store, old_root=old_root, remove_old=args.remove_old)
    return 0


def _cmd_run(args) -> int:
    from sweeper.run.engines import run_plan, run_plan_ray
    from sweeper.report.report import write_report

    _, plan, store = _load(args)
    _legacy_note(plan, store)
    t0 = time.time()
    mode = args.wandb or os.environ.get("WANDB_MODE") or plan.sweep.run.wandb
    if args.executor == "ray":
        counts = run_plan_ray(plan, store, address=args.address, wandb_mode=mode)
    else:
        counts = run_plan(plan, store, threads=args.threads, wandb_mode=mode)
    print(f"sweep {plan.sweep.name}: ran {counts['ran']} nodes, skipped {counts['skipped']} already done "
          f"({counts['total']} in the plan) in {time.time() - t0:.0f} s; store: {store.path()}")
    if not args.no_report:
        from sweeper.report.tracking import log_report

        _print_written(write_report(plan, store))
        log_report(plan, store, mode)
    return 0


def _cmd_report(args) -> int:
    from sweeper.report.report import done_metas, write_report

    _, plan, store = _load(args)
    metas = done_metas(store, plan.nodes)  # each node's manifest read once; the report takes them over
    missing = len(plan.nodes) - len(metas)
    if missing:
        print(f"note: {missing} of {len(plan.nodes)} nodes are not done yet; the report covers the rest "
              f"(run `sweeper run {args.file}` to finish)", file=sys.stderr)
    written = write_report(plan, store, metas=metas)
    _print_written(written)
    if "report.md" in written:
        print()
        print(store.read_bytes(f"reports/{plan.sweep.name}/report.md").decode())
    return 0


def _cmd_validate_cluster(args) -> int:
    from sweeper.cluster.clusterfile import check_cluster

    problems, warnings = check_cluster(args.file)
    for p in problems:
        print(p, file=sys.stderr)
    for w in warnings:  # printed, but the file is still valid (exit 0) when nothing else is wrong
        print(f"warning: {w}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.file}: valid" + (f" ({len(warnings)} warning(s) above)" if warnings else ""))
    return 0


def _parse_sets(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE (got {item!r})")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(f"--set {key.strip()}: the value is not valid YAML ({problem}; got {value!r}); "
                             "expected a YAML value, e.g. 0.5, [1, 2] or {grid: [0.25, 0.5]}") from None
    return out


def _cmd_submit(args) -> int:
    from sweeper.cluster import cluster
    from sweeper.errors import SpecError

    try:
        overrides = _parse_sets(args.overrides)
    except ValueError as e:  # a malformed --set is the sweep file's mistake (exit 2), not the cluster's
        raise SpecError(args.file, "", str(e)) from None
    job = cluster.submit(args.file, args.address, overrides=overrides or None, store=args.store, wandb=args.wandb,
                         code=args.code)
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
    from sweeper.cluster.cluster import status

    print(status(args.address, args.job))
    return 0


def _cmd_logs(args) -> int:
    from sweeper.cluster.cluster import logs

    print(logs(args.address, args.job), end="")
    return 0


def _cmd_data(args) -> int:
    from sweeper.science.data_store import list_pushed, push
    from sweeper.store.store import Store

    store = Store(args.store)
    if args.data_command == "push":
        push(args.dataset, store, args.src, force=args.force)
        return 0
    found = list_pushed(store)
    for d in found:
        print(f"{d['dataset']:<14} {d['files']} files {d['bytes']:>13,} bytes  manifest {d['digest']}")
    if not found:
        print(f"no datasets pushed into {store.uri} (sweeper data push DATASET --store {store.uri})")
    return 0


def _cmd_wandb(args) -> int:
    from sweeper.report.tracking import download_runs, run_ids

    sweep, plan, store = _load(args)
    # this sweep's runs only (a store may hold several sweeps), copied to one folder of their own
    dest = os.path.abspath(args.to or os.path.join("wandb-runs", sweep.name))
    runs = download_runs(store, dest, run_ids(plan))
    if not runs:
        print(f"no offline W&B runs in {store.path('wandb')} (run with --wandb offline)", file=sys.stderr)
        return 1
    print(f"{len(runs)} offline W&B run(s) in {os.path.dirname(runs[0])}; upload them with:")
    print(f"  wandb sync {os.path.dirname(runs[0])}/offline-run-*")
    return 0


def _cmd_dashboard(args) -> int:
    import json

    from sweeper.report.dashboard import build, panels, publish, report_body, view_body

    _, plan, store = _load(args)
    report, view = build(plan, store, args.entity, args.project)  # wandb-workspaces missing: one line, exit 6
    bodies = {"report": report_body(report), "view": view_body(view)}
    if not any(p["viewType"] == "Media Browser" and p["config"].get("mediaKeys") for p in panels(bodies["report"])):
        print(f"sweeper: note: no report images in {store.path('reports', plan.sweep.name)} yet: the media panel "
              "lists none; run `sweeper dashboard` again after `sweeper report`", file=sys.stderr)
    for what, body in bodies.items():
        kinds = sorted({p["viewType"] for p in panels(body)})
        print(f"{what}: {len(panels(body))} panels ({', '.join(kinds)})")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(bodies, f, indent=1, sort_keys=True)
        print(f"wrote {args.json_out}")
    if args.publish:
        for url in publish(report, view):
            print(f"published {url}")
    elif not args.json_out:
        print("nothing written: give --json OUT and/or --publish")
    return 0


def _cmd_schema(args) -> int:
    from sweeper.sweep.schema_json import dumps

    sys.stdout.write(dumps())
    return 0


def _print_written(written: dict) -> None:
    for name, path in written.items():
        print(f"wrote {path}")


def _stdout_gone() -> bool:
    """Whether stdout's reader went away (`sweeper report FILE | head -n 12`). If so, stdout is pointed at
    /dev/null, so that Python's flush at exit stays quiet too (no BrokenPipeError traceback)."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by something that is no file (a test's capture)
        return False
    try:
        sys.stdout.flush()
        gone = False
    except BrokenPipeError:
        gone = True
    if not gone and hasattr(select, "poll"):  # nothing left to flush: ask the pipe whether it has a reader
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        gone = any(ev & select.POLLERR for _, ev in poll.poll(0))
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return gone


def main(argv: list[str] | None = None) -> int:
    from sweeper.errors import SweeperError, interrupt_code

    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.executor == "local" and args.address:
        parser.error("--executor local runs everything in this process; it cannot take --address")
    handler = {"plan": _cmd_plan, "run": _cmd_run, "report": _cmd_report,
               "validate-cluster": _cmd_validate_cluster, "submit": _cmd_submit, "status": _cmd_status,
               "logs": _cmd_logs, "data": _cmd_data, "wandb": _cmd_wandb, "dashboard": _cmd_dashboard,
               "migrate-keys": _cmd_migrate_keys, "schema": _cmd_schema}[args.command]
    try:
        code = handler(args)
        sys.stdout.flush()  # a reader gone early (`sweeper report FILE | head`) shows here, not at exit
        return code
    except BrokenPipeError:
        if not _stdout_gone():  # a broken pipe elsewhere (a socket) is not the reader going away
            raise
        return 141  # 128 + SIGPIPE, as a shell reports a command stopped by a closed pipe; nothing printed
    except SweeperError as e:  # exit codes: sweeper.errors
        print(f"sweeper: {e.line()}", file=sys.stderr)
        return e.exit_code
    except FileNotFoundError as e:
        print(f"sweeper: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        if args.command != "submit":
            raise
        print(f"sweeper: {e}", file=sys.stderr)
        return 4
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP during a run (errors.Interrupted)
        code, name = interrupt_code(e)
        print(f"\nsweeper: interrupted ({name}); finished work is kept in the store; run the same command "
              "again to resume", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
