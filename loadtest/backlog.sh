#!/usr/bin/env bash
# What a large backlog costs: disk per deferred message, relay memory per deferred message,
# and the accept rate with the backlog against an empty queue. The next hop is dead (a closed
# port on loopback), as when a large destination is down for hours.
#
# The backlog is made quickly through the storage API (the `queue_tool prefill` example of
# amtp-storage: 1 KB messages committed in batches of 1,000, each then recorded as attempted
# once and deferred for two hours — what the relay itself leaves behind after a first
# attempt), then the release relay is started on it and `amtp-loadtest blast` measures how fast
# it accepts (SMTP, 1 KB, closed loop). Queue sizes are run in alternation, round after round,
# each round on a fresh copy of the empty queue and on the same backlog (which grows by the
# blast's messages: small next to it).
#
#   bash loadtest/backlog.sh            prints each run and the medians; results in ./backlog/
#
# Environment: SIZES ("0 250000 1000000": backlog sizes), ROUNDS (3), MESSAGES (20000 per
# blast), CONCURRENCY (20), OUT (backlog). Loopback ports 28125 (relay), 28199 (the dead hop:
# nothing may listen there). Stops by itself: every blast has a time limit (300 s).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SIZES=${SIZES:-0 250000 1000000}
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-20000}
CONCURRENCY=${CONCURRENCY:-20}
OUT=${OUT:-backlog}
SMTP=127.0.0.1:28125 DEAD=28199

. loadtest/lib.sh
(exec 3<>"/dev/tcp/127.0.0.1/$DEAD") 2>/dev/null && die "something listens on the dead hop's port $DEAD"
echo "== building release binaries"
cargo build --release --locked -q -p amtp-relay -p amtp-loadtest
cargo build --release --locked -q -p amtp-storage --example queue_tool
RELAY_BIN=${RELAY_BIN:-$PWD/target/release/amtp-relay}
LOAD=$PWD/target/release/amtp-loadtest
TOOL=$PWD/target/release/examples/queue_tool

rm -rf "$OUT" && mkdir -p "$OUT/runs"
OUT=$(cd "$OUT" && pwd)
RELAY_PID=
cleanup() {
    if [ -n "$RELAY_PID" ]; then kill "$RELAY_PID" 2>/dev/null || true; fi
    wait 2>/dev/null || true
}
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# Bytes allocated on disk (blocks, not apparent sizes: a 1 KB file takes a whole block).
disk_bytes() { du -s --block-size=1 "$1" | cut -f1; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=backlog \
    -keyout "$OUT/ca-key.pem" -out "$OUT/ca.pem" 2>/dev/null || die "openssl could not make a CA"

config() {
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
first_retry = "2h"

[[delivery.route]]
domains = ["sink.load.test"]
host = "127.0.0.1"
port = $DEAD
protocol = "smtp"
tls = "none"
EOF
}

echo "== backlogs: $SIZES (1 KB messages)"
for size in $SIZES; do
    dir="$OUT/queue-$size"
    mkdir -p "$dir/data"
    config > "$dir/relay.toml"
    if [ "$size" -gt 0 ]; then
        "$TOOL" prefill "$dir/data/queue" "$size" 1024 sink.load.test 7200 | tee "$dir/prefill.txt"
        total=$(disk_bytes "$dir/data/queue") db=$(disk_bytes "$dir/data/queue/db")
        echo "queue-$size: on disk $total bytes ($((total / size)) per message: sled $((db / size)), spool $(((total - db) / size)))" \
            | tee "$dir/disk.txt"
    fi
done
cp -a "$OUT/queue-0" "$OUT/empty-template" 2>/dev/null || true

run() { # run ROUND SIZE
    local n=$1 size=$2 dir="$OUT/queue-$2"
    if [ "$size" -eq 0 ]; then rm -rf "$dir" && cp -a "$OUT/empty-template" "$dir"; fi
    (cd "$dir" && exec "$RELAY_BIN" serve --config relay.toml) > "$dir/relay-$n.log" 2>&1 &
    RELAY_PID=$!
    wait_port "$SMTP" 60
    sleep 3 # the relay reads the queue at start; let its memory settle
    local rss_start; rss_start=$(rss_kib "$RELAY_PID")
    "$LOAD" blast --target "$SMTP" --connections "$CONCURRENCY" --messages "$MESSAGES" \
        --messages-per-connection 50 --size 1k --duration 300s --pid "$RELAY_PID" \
        --label "backlog-$size-$n" --json > "$OUT/runs/blast-$size-$n.json" || die "blast failed ($size $n)"
    local rss_end; rss_end=$(rss_kib "$RELAY_PID")
    kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true; RELAY_PID=
    python3 - "$OUT/runs/blast-$size-$n.json" "$size" "$n" "$rss_start" "$rss_end" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
size, n, rss0, rss1 = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
json.dump({"size": int(size), "rate": r["messages_per_s"], "rss_start_kib": rss0, "rss_end_kib": rss1,
           "cpu_us": r.get("relay_cpu_us_per_unit"), "errors": r["errors"]},
          open(sys.argv[1].replace("blast-", "run-"), "w"))
print(f"round {n} backlog {int(size):>8}: accepted {r['messages_per_s']:7.0f} messages/s"
      + (f", relay CPU {r['relay_cpu_us_per_unit']:.0f} µs/message" if r.get("relay_cpu_us_per_unit") else "")
      + f", relay RSS {rss0 // 1024} MiB at start, {rss1 // 1024} MiB after"
      + (f", errors {r['errors']}" if r["errors"] else ""))
PY
}

echo "== $ROUNDS rounds, $MESSAGES x 1 KB per blast, $CONCURRENCY connections"
for n in $(seq 1 "$ROUNDS"); do
    for size in $SIZES; do run "$n" "$size"; done
done

python3 - "$OUT" "$SIZES" <<'PY'
import glob, json, os, statistics, sys
out, sizes = sys.argv[1], [int(s) for s in sys.argv[2].split()]
runs = {s: [json.load(open(f)) for f in glob.glob(os.path.join(out, f"runs/run-{s}-*.json"))] for s in sizes}
med = lambda xs: statistics.median(xs) if xs else float("nan")
base = runs.get(0) or []
base_rate = med([r["rate"] for r in base])
base_rss = med([r["rss_start_kib"] for r in base])
print("== medians")
for s in sizes:
    rs = runs[s]
    rate, rss = med([r["rate"] for r in rs]), med([r["rss_start_kib"] for r in rs])
    line = f"backlog {s:>8}: {rate:7.0f} messages/s"
    if base and s:
        line += f" ({rate / base_rate:.2f}x empty), RSS {rss / 1024:.0f} MiB: {(rss - base_rss) * 1024 / s:.0f} bytes per deferred message"
    elif not s:
        line += f", RSS {rss / 1024:.0f} MiB"
    print(line)
PY
