#!/usr/bin/env bash
# What metrics cost: the same SMTP load through the relay with `[metrics]` off and on, in
# alternation (off, on, off, on, ...), each round on a fresh queue. With metrics on, the
# endpoint is also scraped once a second during the run (15x a usual scrape interval), so the
# figure includes recording *and* exposition. The relay accepts, queues and delivers to a
# sink, as in production.
#
#   bash loadtest/metrics-ab.sh          prints each round and the medians; results in ./metrics-ab/
#
# Environment: SCRAPE (1: scrape once a second while on; 0: never), ROUNDS (3 per side), MESSAGES (25000: runs of 10 s or more), CONCURRENCY (20), SIZE (10k),
# OUT (metrics-ab). Loopback ports 28025 (relay), 28026 (sink), 28425 (metrics).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${ROUNDS:-3}
SCRAPE=${SCRAPE:-1}
MESSAGES=${MESSAGES:-25000}
CONCURRENCY=${CONCURRENCY:-20}
SIZE=${SIZE:-10k}
OUT=${OUT:-metrics-ab}
SMTP=127.0.0.1:28025 SINK=127.0.0.1:28026 METRICS=127.0.0.1:28425

. loadtest/lib.sh
echo "== building release binaries"
cargo build --release --locked -q -p amtp-relay -p amtp-loadtest
RELAY_BIN=$PWD/target/release/amtp-relay
LOAD=$PWD/target/release/amtp-loadtest

rm -rf "$OUT" && mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SINK_PID= RELAY_PID= SCRAPER_PID=
cleanup() {
    for pid in $SCRAPER_PID $RELAY_PID $SINK_PID; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# Delivery needs trust anchors for outbound AMTP (check-config refuses it otherwise); this run
# only delivers over plain SMTP to the sink, so a throwaway CA does.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=metrics-ab \
    -keyout "$OUT/ca-key.pem" -out "$OUT/ca.pem" 2>/dev/null || die "openssl could not make a CA"

"$LOAD" sink --listen "$SINK" --duration 1h 2> "$OUT/sink.log" > /dev/null &
SINK_PID=$!
wait_port "$SINK"

config() { # config on|off
    cat <<EOF
[server]
hostname = "relay.load.test"
data_dir = "data"
local_domains = ["sink.load.test"]

[logging]
level = "warn"

[[listener]]
name = "mx"
role = "mx"
address = "$SMTP"
max_connections_per_ip = 1000

[delivery]
server_ca = "$OUT/ca.pem"

[[delivery.route]]
domains = ["sink.load.test"]
host = "127.0.0.1"
port = ${SINK#*:}
protocol = "smtp"
tls = "none"
EOF
    if [ "$1" = on ]; then printf '\n[metrics]\nlisten = "%s"\n' "$METRICS"; fi
}

round() { # round N on|off
    local n=$1 side=$2 dir="$OUT/$2-$1"
    mkdir -p "$dir"
    config "$side" > "$dir/relay.toml"
    (cd "$dir" && exec "$RELAY_BIN" serve --config relay.toml) > "$dir/relay.log" 2>&1 &
    RELAY_PID=$!
    wait_port "$SMTP"
    if [ "$side" = on ] && [ "$SCRAPE" = 1 ]; then
        wait_port "$METRICS"
        (while sleep 1; do curl -s -o /dev/null "http://$METRICS/metrics" || true; done) &
        SCRAPER_PID=$!
    fi
    "$LOAD" blast --target "$SMTP" --connections "$CONCURRENCY" --messages "$MESSAGES" \
        --messages-per-connection 50 --size "$SIZE" --duration 300s --pid "$RELAY_PID" \
        --label "metrics-$side-$n" --json > "$dir/blast.json" || die "blast failed ($side $n)"
    if [ -n "$SCRAPER_PID" ]; then kill "$SCRAPER_PID"; wait "$SCRAPER_PID" 2>/dev/null || true; SCRAPER_PID=; fi
    kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true; RELAY_PID=
    python3 - "$dir/blast.json" "$side" "$n" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
cpu = r.get("relay_cpu_us_per_unit")
print(f"round {sys.argv[3]} metrics {sys.argv[2]:>3}: {r['messages_per_s']:8.0f} messages/s"
      + (f", relay CPU {cpu:.0f} µs/message" if cpu else "")
      + (f", errors {r['errors']}" if r["errors"] else ""))
PY
}

echo "== $ROUNDS rounds per side, $MESSAGES x $SIZE messages, $CONCURRENCY connections"
for n in $(seq 1 "$ROUNDS"); do
    round "$n" off
    round "$n" on
done

python3 - "$OUT" <<'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
def runs(side):
    return [json.load(open(f)) for f in sorted(glob.glob(os.path.join(out, f"{side}-*/blast.json")))]
off, on = runs("off"), runs("on")
rate = lambda rs: statistics.median(r["messages_per_s"] for r in rs)
cpu = lambda rs: statistics.median(r.get("relay_cpu_us_per_unit") or 0 for r in rs)
print(f"median messages/s: off {rate(off):.0f}, on {rate(on):.0f}, on/off = {rate(on) / rate(off):.3f}")
if cpu(off) and cpu(on):
    print(f"median relay CPU µs/message: off {cpu(off):.0f}, on {cpu(on):.0f}, on/off = {cpu(on) / cpu(off):.3f}")
PY
