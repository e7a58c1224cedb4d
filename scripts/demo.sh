#!/usr/bin/env bash
# The main job without Docker: a throwaway PostgreSQL with the legacy shop schema (docker/postgres/init.sql), the
# test broker (noida-db), ficus with config/shop.yaml, the workload (docker/workload.sh) writing legacy rows, and a
# live view of the business events as they arrive in Kafka. Ctrl-C stops everything and removes what it made.
#
# Installs what is missing first (scripts/install-test-deps.sh: PostgreSQL 15 server binaries and the broker; kcat
# for the live view), then builds ficus. Environment: DEMO_SECONDS=N stops the demo by itself after N seconds (for
# a non-interactive check); FICUS_PG_BIN as in install-test-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bash scripts/install-test-deps.sh >/dev/null
if ! command -v kcat >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "demo: installing kcat (the live view's Kafka client)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq --no-install-recommends kcat >/dev/null
    else
        echo "demo: kcat is missing: sudo apt-get install kcat" >&2
        exit 1
    fi
fi
echo "demo: building ficus (cargo build --locked)"
cargo build --locked --quiet --bin ficus
ficus=$root/target/debug/ficus
pg_bin=${FICUS_PG_BIN:-/usr/lib/postgresql/15/bin}
noida=$root/.venv/noida/bin/noida-db

work=$(mktemp -d /tmp/ficus-demo.XXXXXX)
chmod 755 "$work"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pg_port=$(free_port)
kafka_port=$(free_port)
health_port=$(free_port)
# As root, PostgreSQL runs as the postgres user (it refuses root).
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" -eq 0 ] && chown postgres "$work"

# Job control: every background component runs in a process group of its own, so stopping it stops its children
# too (noida-db's server process, the kcat readers); `disown` keeps bash's job notices off the screen.
set -m
pids=()
cleanup() {
    trap - EXIT INT TERM
    echo
    echo "demo: stopping"
    # ficus first (it confirms what Kafka holds), then the rest.
    for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 100); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    as_pg "$pg_bin/pg_ctl" -D "$work/pg" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$work"
    echo "demo: stopped and cleaned up"
}
trap cleanup EXIT INT TERM

echo "demo: PostgreSQL on 127.0.0.1:$pg_port (data in $work)"
as_pg "$pg_bin/initdb" -D "$work/pg" -U postgres --auth=trust --no-sync >"$work/initdb.log" 2>&1
as_pg "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w start \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work -c wal_level=logical" >/dev/null
export PGHOST=127.0.0.1 PGPORT=$pg_port PGUSER=postgres
psql -q -d postgres -c "CREATE DATABASE shop"
psql -q -d shop -v ON_ERROR_STOP=1 -f docker/postgres/init.sql >/dev/null

echo "demo: Kafka-protocol broker (noida-db) on 127.0.0.1:$kafka_port"
mkdir -p "$work/kafka"
"$noida" start --only kafka --host 127.0.0.1 --kafka-port "$kafka_port" --data-dir "$work/kafka" >"$work/kafka.log" 2>&1 &
pids+=($!); disown
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$kafka_port") 2>/dev/null && break; sleep 0.1; done

echo "demo: ficus run --config config/shop.yaml (log: $work/ficus.log; health: http://127.0.0.1:$health_port/status)"
mkdir -p "$work/ficus"
sed "s|listen: 0.0.0.0:8080|listen: 127.0.0.1:$health_port|" config/shop.yaml >"$work/ficus/shop.yaml"
(cd "$work/ficus" && PGPASSWORD=ficus FICUS_PG_HOST=127.0.0.1 FICUS_PG_PORT=$pg_port FICUS_KAFKA=127.0.0.1:$kafka_port \
    RUST_LOG=info exec "$ficus" run --config shop.yaml) >"$work/ficus.log" 2>&1 &
pids+=($!); disown
for _ in $(seq 300); do grep -q "ficus::pipeline::session: streaming" "$work/ficus.log" && break; sleep 0.1; done
grep -q "ficus::pipeline::session: streaming" "$work/ficus.log" || { echo "demo: ficus did not start:" >&2; cat "$work/ficus.log" >&2; exit 1; }

echo "demo: workload writing legacy rows (docker/workload.sh)"
bash docker/workload.sh >"$work/workload.log" 2>&1 &
pids+=($!); disown

echo "demo: business events as they arrive (Ctrl-C to stop):"
echo
# One line per event: type, version, key, data. The topics appear with their first event; each is read from the
# beginning by its own kcat (simple consumers: no group protocol needed).
for topic in shop.orders shop.customers; do
    for _ in $(seq 300); do kcat -L -b "127.0.0.1:$kafka_port" -t "$topic" 2>/dev/null | grep -q "partition 0" && break; sleep 0.2; done
done
{
    kcat -q -u -C -b "127.0.0.1:$kafka_port" -t shop.customers -o beginning -f '%s\n' 2>/dev/null &
    kcat -q -u -C -b "127.0.0.1:$kafka_port" -t shop.orders -o beginning -f '%s\n' 2>/dev/null &
    wait
} |
    python3 -u -c '
import json, sys
for line in sys.stdin:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    data = json.dumps(e.get("data"), separators=(",", ":"))
    print("%-20s v%s  key=%-6s %s" % (e.get("eventType", "?"), e.get("eventVersion", "?"), e.get("key"), data))
' &
pids+=($!); disown
# Runs until Ctrl-C (or DEMO_SECONDS); the trap stops and removes everything.
end=$(( SECONDS + ${DEMO_SECONDS:-315360000} ))
while [ "$SECONDS" -lt "$end" ]; do sleep 1; done
