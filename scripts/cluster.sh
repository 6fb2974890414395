#!/usr/bin/env bash
# A local cluster in one command: PostgreSQL, three scpfleet nodes and HAProxy in front,
# all on 127.0.0.1, until Ctrl-C, which stops them all.
#
#   - PostgreSQL from Debian's binaries (postgresql-15), its own data directory under the
#     run folder, listening on 127.0.0.1:$PG_PORT only, run as an unprivileged account
#     (nobody, or $SCPFLEET_PG_ACCOUNT) when started by root; trust authentication for its
#     one user, which only local processes can reach;
#   - three nodes (node1..node3) on 127.0.0.1:11113-11115, /health and /metrics on
#     9113-9115, one PostgreSQL index for all (SCPFLEET_INDEX), PROXY v2 from HAProxy;
#   - HAProxy with deploy/haproxy.cfg: modalities connect to 127.0.0.1:11112.
#
# The run folder (default: a new one under /tmp) holds the storage of each node, the
# database and every log; it is removed at the end unless SCPFLEET_KEEP=1. Missing
# packages (postgresql-15, haproxy) and the virtualenv are set up as scripts/test.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

PG_PORT=${PG_PORT:-55432}
NODES=3
WORKERS=${SCPFLEET_WORKERS:-1}

install_missing() {
    local wanted=()
    command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || wanted+=(haproxy)
    ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || wanted+=(postgresql-15)
    [ ${#wanted[@]} -eq 0 ] && return
    echo "installing ${wanted[*]} (their system services are not started)"
    local sudo=()
    [ "$(id -u)" = "0" ] || sudo=(sudo)
    # policy-rc.d exit 101 (unless one is there already): the packages' own services are
    # not started by the install, nor at boot.
    local policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        "${sudo[@]}" sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
        policy=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${wanted[@]}" >/dev/null
    [ "$policy" = "0" ] || "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
    for service in postgresql haproxy; do
        [ -e "/etc/init.d/$service" ] && "${sudo[@]}" update-rc.d "$service" disable >/dev/null 2>&1 || true
    done
}
install_missing

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -c 'import psycopg, prometheus_client' 2>/dev/null \
    || .venv/bin/python -m pip install -q -e '.[metrics,postgresql]'

PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
RUN=${SCPFLEET_CLUSTER_DIR:-$(mktemp -d /tmp/scpfleet-cluster.XXXXXX)}
mkdir -p "$RUN"
chmod 711 "$RUN"  # the database's account must reach its folder, nothing more

# PostgreSQL refuses to run as root: an unprivileged account runs it.
AS=()
if [ "$(id -u)" = "0" ]; then
    account=${SCPFLEET_PG_ACCOUNT:-nobody}
    AS=(runuser -u "$account" --)
fi
PGDIR=$RUN/postgres
mkdir -p "$PGDIR"
[ ${#AS[@]} -eq 0 ] || chown "${account}:" "$PGDIR"

node_pids=()
haproxy_pid=
cleanup() {
    trap - INT TERM EXIT
    echo
    echo "stopping the cluster"
    [ -n "$haproxy_pid" ] && kill "$haproxy_pid" 2>/dev/null || true
    for pid in "${node_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${node_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -f "$PGDIR/data/postmaster.pid" ]; then
        "${AS[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" stop -m fast >/dev/null 2>&1 || true
    fi
    if [ "${SCPFLEET_KEEP:-0}" = "1" ]; then
        echo "kept $RUN"
    else
        rm -rf "$RUN"
    fi
}
trap cleanup INT TERM EXIT

echo "PostgreSQL: $PGDIR (127.0.0.1:$PG_PORT)"
"${AS[@]}" "$PGBIN/initdb" -D "$PGDIR/data" -U scpfleet --auth=trust -E UTF8 --locale=C.UTF-8 >"$PGDIR/initdb.log"
"${AS[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/postgres.log" -w \
    -o "-p $PG_PORT -k $PGDIR -c listen_addresses=127.0.0.1" start >/dev/null
"$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U scpfleet scpfleet
export SCPFLEET_INDEX="postgresql://scpfleet@127.0.0.1:$PG_PORT/scpfleet"

# Each node and HAProxy in a session of its own (setsid): Ctrl-C reaches this script
# only, whose clean-up stops them once, in order.
for n in $(seq 1 $NODES); do
    mkdir -p "$RUN/node$n"
    setsid .venv/bin/python -m workers.cli serve --host 127.0.0.1 --port $((11112 + n)) \
        --metrics-host 127.0.0.1 --metrics-port $((9112 + n)) --storage "$RUN/node$n/storage" \
        --node-id "node$n" --workers "$WORKERS" --proxy-protocol-from 127.0.0.1/32 \
        --drain-delay 4 --ready-file "$RUN/node$n/ready.json" >"$RUN/node$n/node.log" 2>&1 &
    node_pids+=($!)
done
for n in $(seq 1 $NODES); do
    for _ in $(seq 1 600); do
        [ -f "$RUN/node$n/ready.json" ] && break
        if ! kill -0 "${node_pids[$((n - 1))]}" 2>/dev/null; then
            echo "node$n did not start:"; tail -n 20 "$RUN/node$n/node.log"; exit 1
        fi
        sleep 0.1
    done
    [ -f "$RUN/node$n/ready.json" ] || { echo "node$n not ready"; tail -n 20 "$RUN/node$n/node.log"; exit 1; }
done

# HAProxy runs in the run folder: its stats socket (haproxy.sock) goes there.
(cd "$RUN" && exec setsid "$HAPROXY" -db -f "$REPO/deploy/haproxy.cfg") >"$RUN/haproxy.log" 2>&1 &
haproxy_pid=$!
sleep 1
kill -0 "$haproxy_pid" 2>/dev/null || { echo "haproxy did not start:"; cat "$RUN/haproxy.log"; exit 1; }

cat <<EOF

scpfleet cluster: $NODES nodes behind HAProxy, one PostgreSQL index

  point a modality at   127.0.0.1:11112, called AE title SCPFLEET
  e.g.                  storescu -aec SCPFLEET 127.0.0.1 11112 FILE.dcm
  node health           http://127.0.0.1:9113/health  (9114, 9115)
  index                 SCPFLEET_INDEX=$SCPFLEET_INDEX .venv/bin/scpfleet stats
  HAProxy's view        echo "show stat" | socat - $RUN/haproxy.sock
  logs and storage      $RUN

Ctrl-C stops everything.
EOF
wait "$haproxy_pid"
