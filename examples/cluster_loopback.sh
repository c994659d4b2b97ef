#!/usr/bin/env bash
# The README's cluster walkthrough on one machine, with loopback stand-ins for the cloud parts:
#   S3                 -> an S3-compatible server on 127.0.0.1 (moto_server, from the test dependencies)
#   `ray up`           -> a `ray start --head` and a `ray start --address` worker, each from its own folder
#                         with its own --temp-dir (they share no folder; everything goes through the store)
# then the same commands a cluster user runs: data push, submit, status, logs, report, wandb + `wandb sync`.
#
#   examples/cluster_loopback.sh            (after `make setup`; about 1.5 minutes on 2 cores)
#
# It stops only what it started (its own Ray processes, found by its own temp folder; never `ray stop`).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
BIN="$REPO/.venv/bin"
WORK="$(mktemp -d /tmp/swl-XXXX)"   # short: Ray's socket paths are limited
mkdir -p "$WORK/head" "$WORK/worker" "$WORK/here"
port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
S3_PORT=$(port); GCS_PORT=$(port); DASH_PORT=$(port); CLIENT_PORT=$(port); AGENT1=$(port); AGENT2=$(port)
export RAY_USAGE_STATS_ENABLED=0
export PATH="$BIN:$PATH"   # a job's `python3` is the head's (on cluster.yaml's nodes: the one setup_commands installs into)
# moto accepts any credentials; on AWS these come from `aws configure` or the nodes' instance role
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true

cleanup() {
  "$BIN/python" - "$WORK" "$GCS_PORT" <<'EOF' || true
import os, sys, psutil
work = sys.argv[1]
port = sys.argv[2]  # the head's GCS port: Ray's client server names only that, not the temp folder
me = {os.getpid(), os.getppid()}  # this cleanup names the folder too
mine = [p for p in psutil.process_iter(["cmdline"]) if p.pid not in me
        and any(work in a or a.endswith(":" + port) for a in (p.info["cmdline"] or []))]
procs = {p.pid: p for p in mine}
for p in mine:
    try:
        procs.update({c.pid: c for c in p.children(recursive=True)})
    except psutil.NoSuchProcess:
        pass
for p in procs.values():
    try:
        p.terminate()
    except psutil.NoSuchProcess:
        pass
_, alive = psutil.wait_procs(list(procs.values()), timeout=15)
for p in alive:
    try:
        p.kill()
    except psutil.NoSuchProcess:
        pass
EOF
  if [ -n "${S3_PID:-}" ]; then kill "$S3_PID" 2>/dev/null; wait "$S3_PID" 2>/dev/null; fi
  if [ "${OK:-}" = 1 ]; then rm -rf "$WORK"; else echo "kept for a look: $WORK" >&2; fi
}
trap cleanup EXIT
step() { echo; echo "=== $*"; }

step "S3-compatible server on 127.0.0.1:$S3_PORT, bucket 'sweeper'"
"$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$WORK/s3.log" 2>&1 &
S3_PID=$!
for _ in $(seq 100); do curl -s "http://127.0.0.1:$S3_PORT" >/dev/null && break; sleep 0.1; done
"$BIN/python" -c "import pyarrow.fs as f; f.S3FileSystem(endpoint_override='127.0.0.1:$S3_PORT', scheme='http', allow_bucket_creation=True).create_dir('sweeper')"
STORE="s3://sweeper/store?endpoint_override=127.0.0.1:$S3_PORT&scheme=http"

step "the cluster: a head and a worker node (stand-in for ray up cluster.yaml), token authentication on"
# the cluster's own token (on a `ray up` cluster Ray puts it on every node); kept out of ~/.ray
"$BIN/python" -c 'import secrets; print(secrets.token_hex(32))' >"$WORK/token"
export RAY_AUTH_TOKEN_PATH="$WORK/token"
(export RAY_AUTH_MODE=token; cd "$WORK/head" && "$BIN/ray" start --head --port="$GCS_PORT" --num-cpus=1 --node-ip-address=127.0.0.1 \
   --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" --dashboard-agent-listen-port="$AGENT1" \
   --ray-client-server-port="$CLIENT_PORT" --temp-dir="$WORK/th" --disable-usage-stats >/dev/null)
(export RAY_AUTH_MODE=token; cd "$WORK/worker" && "$BIN/ray" start --address="127.0.0.1:$GCS_PORT" --num-cpus=1 --node-ip-address=127.0.0.1 \
   --dashboard-agent-listen-port="$AGENT2" --temp-dir="$WORK/tw" --disable-usage-stats >/dev/null)
DASH="http://127.0.0.1:$DASH_PORT"
# from here on the user's side: RAY_AUTH_MODE is not set; sweeper sends the token it finds (RAY_AUTH_TOKEN,
# RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), as after `export RAY_AUTH_TOKEN=$(ray get-auth-token)`

cd "$WORK/here"   # a folder of the user's; nothing may be written here but the W&B copy asked for below
step "sweeper data push fashion_mnist --store \$STORE"
"$BIN/sweeper" data push fashion_mnist --store "$STORE"

step "sweeper submit (the nodes run their installed sweeper; only the sweep file travels, inside the job)"
JOB=$("$BIN/sweeper" submit "$REPO/search_spaces/fmnist_smoke.yaml" --address "$DASH" --store "$STORE" \
      --set data.root=store --wandb offline)
echo "job: $JOB"
for _ in $(seq 600); do
  S=$("$BIN/sweeper" status "$JOB" --address "$DASH")
  case "$S" in SUCCEEDED|FAILED|STOPPED) break;; esac
  sleep 1
done
step "sweeper status: $S"
step "sweeper logs (last lines)"
"$BIN/sweeper" logs "$JOB" --address "$DASH" | tail -n 12
[ "$S" = SUCCEEDED ]

step "sweeper report (from the store)"
# head leaves after 12 lines: sweeper then ends quietly with 141 (128 + SIGPIPE), as git does in `git log | head`;
# under pipefail that is the pipeline's status, so it is accepted here, and only it
"$BIN/sweeper" report "$REPO/search_spaces/fmnist_smoke.yaml" --store "$STORE" --set data.root=store | head -n 12 \
  || [ "${PIPESTATUS[0]}" = 141 ]

step "W&B: the offline runs of every node, out of the store, then wandb sync (dry run: no network here)"
"$BIN/sweeper" wandb "$REPO/search_spaces/fmnist_smoke.yaml" --store "$STORE" --set data.root=store --to wandb-runs
"$BIN/wandb" sync --dry-run wandb-runs/offline-run-* >"$WORK/sync.txt" 2>&1
head -n 3 "$WORK/sync.txt"

step "local folders (user, head, worker): $(ls -A "$WORK/here") | $(ls -A "$WORK/head") | $(ls -A "$WORK/worker")"
[ "$(ls -A "$WORK/here")" = "wandb-runs" ] && [ -z "$(ls -A "$WORK/head")" ] && [ -z "$(ls -A "$WORK/worker")" ]
echo "loopback walkthrough: OK"
OK=1
