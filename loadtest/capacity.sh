#!/usr/bin/env bash
# The capacity figures docs/PERFORMANCE.md reports, in one bounded run on loopback:
#   1. AMTP (mutual TLS + rDNS identity + MPC) against plain SMTP through the same relay,
#      as messages/s (relay in, queue, deliver to a sink) and as sessions/s (handshakes);
#   2. sessions/s with 1 and with 2 connection workers (TLS arbiters): scaling across cores;
#   3. memory per idle connection with HOLD (10000) open sessions, SMTP and AMTP;
#   4. an HTML report of every blast run, with the relay's /metrics scraped during each.
#
#   bash loadtest/capacity.sh          results and report.html in ./capacity-results/
#   bash loadtest/capacity.sh sweep    only the pool-size sweep: the same SMTP load against
#                                      connection_workers 1..cores, three batch_wait values and
#                                      three concurrency_per_destination values, one setting
#                                      changed at a time; sweep-report.html says what to set
#
# Environment: MESSAGES (default 5000), CONCURRENCY (20), SESSIONS (2000), HOLD (10000),
# CLIENTS (200 client identities), OUT (capacity-results), SWEEP_MESSAGES (3000 per sweep run),
# BATCH_WAITS ("0ms 1ms 4ms"), DEST_CONCURRENCY ("1 4 16"), MAX_WORKERS (8).
# Ports 27025/27026/27053/27125/27465, metrics 27425.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODE=${1:-all}
case "$MODE" in all|sweep) ;; *) echo "usage: $0 [sweep]" >&2; exit 2 ;; esac
MESSAGES=${MESSAGES:-5000}
CONCURRENCY=${CONCURRENCY:-20}
SESSIONS=${SESSIONS:-2000}
HOLD=${HOLD:-10000}
CLIENTS=${CLIENTS:-200}
OUT=${OUT:-capacity-results}
SMTP=127.0.0.1:27025 SINK=127.0.0.1:27026 DNS=127.0.0.1:27053 AMTP=127.0.0.1:27125
TLS=127.0.0.1:27465 METRICS=127.0.0.1:27425
SWEEP_MESSAGES=${SWEEP_MESSAGES:-3000}
BATCH_WAITS=${BATCH_WAITS:-"0ms 1ms 4ms"}
DEST_CONCURRENCY=${DEST_CONCURRENCY:-"1 4 16"}
MAX_WORKERS=${MAX_WORKERS:-8}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

. loadtest/lib.sh
echo "== building release binaries"
cargo build --release --locked -q -p amtp-relay -p amtp-loadtest
RELAY_BIN=$PWD/target/release/amtp-relay
LOAD=$PWD/target/release/amtp-loadtest

rm -rf "$OUT" && mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PIDS=()
RELAY_PID=
cleanup() {
    for pid in "${PIDS[@]}" $RELAY_PID; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

"$LOAD" fixtures --out "$OUT/fixtures" --clients "$CLIENTS" \
    --relay-smtp "$SMTP" --relay-amtp "$AMTP" --relay-tls "$TLS" --dns "$DNS" --sink "$SINK" \
    --relay-metrics "$METRICS"
"$LOAD" dns --zones "$OUT/fixtures/zones" --listen "$DNS" --duration 1h 2> "$OUT/dns.log" &
PIDS+=($!)
"$LOAD" sink --listen "$SINK" --duration 1h 2> "$OUT/sink.log" > "$OUT/sink.txt" &
PIDS+=($!)
wait_port "$SINK"

# start_relay WORKERS [BATCH_WAIT [DEST_CONCURRENCY]]: (re)starts the relay with that many
# connection workers (0 = per core), that [queue] batch_wait and that
# [delivery] concurrency_per_destination, on an empty queue.
start_relay() {
    local workers=$1 batch_wait=${2:-1ms} per_dest=${3:-8}
    if [ -n "$RELAY_PID" ]; then kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true; fi
    rm -rf "$OUT/fixtures/relay-data"
    sed "s/^concurrency_per_destination = .*/concurrency_per_destination = $per_dest/" \
        "$OUT/fixtures/relay.toml" > "$OUT/fixtures/relay-run.toml"
    printf '\n[pools]\nconnection_workers = %s\n\n[queue]\nbatch_wait = "%s"\n' \
        "$workers" "$batch_wait" >> "$OUT/fixtures/relay-run.toml"
    local log="$OUT/relay-w$workers-b$batch_wait-d$per_dest.log"
    (cd "$OUT/fixtures" && exec "$RELAY_BIN" serve --config relay-run.toml) > "$log" 2>&1 &
    RELAY_PID=$!
    wait_port "$AMTP"
    wait_port "$SMTP"
    wait_port "$TLS"
    wait_port "$METRICS"
}

blast() { # blast NAME ARGS...: one JSON result per run, a one-line summary on stdout
    local name=$1; shift
    "$LOAD" blast --label "${name##*/}" --json --duration 300s --identities "$OUT/fixtures/identities.json" \
        --pid "$RELAY_PID" --metrics-url "http://$METRICS/metrics" --relay-commit "$COMMIT" "$@" \
        > "$OUT/$name.json" 2> "$OUT/$name.log" || die "$name failed (see $OUT/$name.log)"
    python3 - "$OUT/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rate = r["sessions_per_s"] if r["messages_per_connection"] == 0 else r["messages_per_s"]
unit = "sessions/s" if r["messages_per_connection"] == 0 else "messages/s"
p = {x["phase"]: x for x in r["phases"]}
lat = " ".join(f'{k} p50 {p[k]["p50_us"]/1000:.2f} ms p99 {p[k]["p99_us"]/1000:.2f} ms' for k in ("tls", "ehlo", "data_end") if k in p)
errs = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "no errors"
cpu = f'relay CPU {r["relay_cpu_us_per_unit"]:.0f} us per {unit.split("/")[0].rstrip("s")}' if r.get("relay_cpu_us_per_unit") else ""
tls = f'TLS {r["tls_full"]} full/{r["tls_resumed"]} resumed' if r["tls_full"] + r["tls_resumed"] else ""
print(f'{r["label"]:<24} {rate:9.1f} {unit:<11} {cpu} ({r["messages_ok"]} ok, {errs}) {tls} {lat}')
PY
}

sweep() {
    local cores workers
    cores=$(nproc)
    [ "$cores" -gt "$MAX_WORKERS" ] && cores=$MAX_WORKERS
    mkdir -p "$OUT/sweep"
    local load=(--protocol smtp --target "$SMTP" --connections "$CONCURRENCY"
        --messages "$SWEEP_MESSAGES" --messages-per-connection 100)
    echo "== sweep: $SWEEP_MESSAGES SMTP messages x 10 KB per run, $CONCURRENCY connections"
    for workers in $(seq 1 "$cores"); do
        start_relay "$workers"
        blast "sweep/workers-$workers" "${load[@]}" --setting "connection_workers=$workers"
    done
    for wait in $BATCH_WAITS; do
        start_relay 0 "$wait"
        blast "sweep/batch_wait-$wait" "${load[@]}" --setting "batch_wait=$wait"
    done
    for per_dest in $DEST_CONCURRENCY; do
        start_relay 0 1ms "$per_dest"
        blast "sweep/per_dest-$per_dest" "${load[@]}" \
            --setting "concurrency_per_destination=$per_dest"
    done
    "$LOAD" report --out "$OUT/sweep-report.html" \
        --title "amtp-relay pool-size sweep ($(nproc) cores)" "$OUT"/sweep/*.json
}

if [ "$MODE" = sweep ]; then
    sweep
    echo "== results in $OUT (sweep-report.html)"
    exit 0
fi

echo "== relay with one connection worker per core"
start_relay 0
echo "-- messages: $MESSAGES x 10 KB, $CONCURRENCY connections, 100 per connection"
blast smtp-messages --protocol smtp --target "$SMTP" --connections "$CONCURRENCY" \
    --messages "$MESSAGES" --messages-per-connection 100
blast amtp-messages --protocol amtp --target "$AMTP" --connections "$CONCURRENCY" \
    --messages "$MESSAGES" --messages-per-connection 100
blast tls-auth-messages --protocol tls --target "$TLS" --auth load:load-password \
    --connections "$CONCURRENCY" --messages "$MESSAGES" --messages-per-connection 100
echo "-- concurrency sweep: messages/s with 1, 5, 10, 20, 50 connections (2000 messages each)"
for c in 1 5 10 20 50; do
    blast "smtp-c$c" --protocol smtp --target "$SMTP" --connections "$c" --messages 2000 \
        --messages-per-connection 100
    blast "amtp-c$c" --protocol amtp --target "$AMTP" --connections "$c" --messages 2000 \
        --messages-per-connection 100
done
echo "-- sessions: $SESSIONS connect + full handshake + EHLO + QUIT, $CONCURRENCY at once"
blast smtp-sessions --protocol smtp --target "$SMTP" --connections "$CONCURRENCY" \
    --messages "$SESSIONS" --messages-per-connection 0
blast tls-sessions --protocol tls --target "$TLS" --connections "$CONCURRENCY" \
    --messages "$SESSIONS" --messages-per-connection 0 --no-resumption
blast amtp-sessions-2w --protocol amtp --target "$AMTP" --connections "$CONCURRENCY" \
    --messages "$SESSIONS" --messages-per-connection 0 --no-resumption
echo "-- the same AMTP sessions with TLS resumption, as returning peers do"
blast amtp-sessions-resumed --protocol amtp --target "$AMTP" --connections "$CONCURRENCY" \
    --messages "$SESSIONS" --messages-per-connection 0

echo "== scaling: the same AMTP sessions with 1 connection worker, then 2"
start_relay 1
blast amtp-sessions-1w --protocol amtp --target "$AMTP" --connections "$CONCURRENCY" \
    --messages "$SESSIONS" --messages-per-connection 0 --no-resumption
start_relay 2
blast amtp-sessions-2w-again --protocol amtp --target "$AMTP" --connections "$CONCURRENCY" \
    --messages "$SESSIONS" --messages-per-connection 0 --no-resumption

summarise_hold() {
    python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f'{r["protocol"]}: {r["opened"]} idle sessions, relay RSS {r["rss_before_kib"] / 1024:.1f} -> '
      f'{r["rss_held_kib"] / 1024:.1f} MiB: {r["kib_per_connection"]:.1f} KiB per connection; errors {r["errors"]}')
PY
}

echo "== memory: $HOLD idle sessions held open"
start_relay 0
sleep 1
"$LOAD" hold --protocol smtp --target "$SMTP" --identities "$OUT/fixtures/identities.json" \
    --connections "$HOLD" --hold 5s --pid "$RELAY_PID" --json > "$OUT/hold-smtp.json"
summarise_hold "$OUT/hold-smtp.json"
start_relay 0
sleep 1
"$LOAD" hold --protocol amtp --target "$AMTP" --identities "$OUT/fixtures/identities.json" \
    --connections "$HOLD" --hold 5s --pid "$RELAY_PID" --json > "$OUT/hold-amtp.json"
summarise_hold "$OUT/hold-amtp.json"

"$LOAD" report --out "$OUT/report.html" --title "amtp-relay capacity ($(nproc) cores)" \
    "$OUT"/*-c[0-9]*.json "$OUT"/tls-auth-messages.json "$OUT"/*-sessions*.json \
    "$OUT"/smtp-messages.json "$OUT"/amtp-messages.json
sweep
echo "== results in $OUT (report.html, sweep-report.html)"
