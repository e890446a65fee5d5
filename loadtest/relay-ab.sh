#!/usr/bin/env bash
# Two relay binaries, A and B, doing the same relay job in alternation (A, B, A, B, ...), each
# round on a fresh queue: SMTP in (blast, 10 KB, 20 connections, as compare-postfix.sh), out to
# a sink. Per round: end-to-end messages/s (first connection until the sink has the last
# message), and the relay's CPU µs and context switches per relayed message over the same span
# (from /proc, all threads). Prints each round, the medians and the ratios B/A.
#
#   bash loadtest/relay-ab.sh OLD_RELAY_BINARY [NEW_RELAY_BINARY]   (NEW: target/release/amtp-relay)
#
# Environment: ROUNDS (3 per side), MESSAGES (20000), CONCURRENCY (20), SIZE (10k), LEVEL_A and
# LEVEL_B (`[logging] level` of each side, warn; the same binary twice with info and warn
# measures what logging costs),
# PORT_BASE (29100: relay +25, sink +26), OUT (relay-ab: per-round files), LOAD_BIN (else
# target/release/amtp-loadtest, built if missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
A=${1:?usage: relay-ab.sh OLD_RELAY_BINARY [NEW_RELAY_BINARY]}
B=${2:-$PWD/target/release/amtp-relay}
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-20000}
CONCURRENCY=${CONCURRENCY:-20}
SIZE=${SIZE:-10k}
PORT_BASE=${PORT_BASE:-29100}
OUT=${OUT:-relay-ab}
LEVEL_A=${LEVEL_A:-warn}
LEVEL_B=${LEVEL_B:-warn}
RELAY_PORT=$((PORT_BASE + 25))
SINK_PORT=$((PORT_BASE + 26))
. loadtest/lib.sh
LOAD_BIN=${LOAD_BIN:-$PWD/target/release/amtp-loadtest}
[ -x "$LOAD_BIN" ] || cargo build --release --locked -q -p amtp-loadtest
for bin in "$A" "$B"; do [ -x "$bin" ] || die "not an executable: $bin"; done
# Each round runs in its own directory: make the binaries' paths absolute.
A=$(realpath "$A") B=$(realpath "$B")

rm -rf "$OUT" && mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# CPU ticks (utime + stime, 1/100 s) of a process; context switches of all its threads.
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
switches() {
    cat /proc/"$1"/task/*/status 2>/dev/null \
        | awk '/^(non)?voluntary_ctxt_switches:/ { n += $2 } END { print n + 0 }'
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=relay-ab \
    -keyout "$OUT/ca-key.pem" -out "$OUT/ca.pem" 2>/dev/null || die "openssl could not make a CA"
config() { # config LEVEL
    cat <<CONF
[server]
hostname = "relay.load.test"
data_dir = "data"
local_domains = ["sink.load.test"]

[tls]
generate_dev_certificate = true

[logging]
level = "$1"

[[listener]]
name = "mx"
role = "mx"
address = "127.0.0.1:$RELAY_PORT"
max_connections_per_ip = 1000

[delivery]
server_ca = "$OUT/ca.pem"
concurrency_per_destination = $CONCURRENCY
max_messages_per_connection = 1000

[[delivery.route]]
domains = ["sink.load.test"]
host = "127.0.0.1"
port = $SINK_PORT
protocol = "smtp"
tls = "none"
CONF
}

round() { # round N SIDE BINARY LEVEL
    local n=$1 side=$2 bin=$3 dir="$OUT/$2-$1"
    mkdir -p "$dir"
    config "$4" > "$dir/relay.toml"
    "$LOAD_BIN" sink --listen "127.0.0.1:$SINK_PORT" --messages "$MESSAGES" --duration 300s \
        --json > "$dir/sink.json" 2> "$dir/sink.log" &
    local sink=$!
    PIDS+=("$sink")
    wait_port "$SINK_PORT"
    (cd "$dir" && exec "$bin" serve --config relay.toml) > "$dir/relay.log" 2>&1 &
    local relay=$!
    PIDS+=("$relay")
    wait_port "$RELAY_PORT"
    local t0 c0 s0
    t0=$(date +%s.%N); c0=$(cpu_ticks "$relay"); s0=$(switches "$relay")
    "$LOAD_BIN" blast --target "127.0.0.1:$RELAY_PORT" --connections "$CONCURRENCY" \
        --messages "$MESSAGES" --messages-per-connection 1000 --size "$SIZE" --duration 300s \
        --pid "$relay" --progress-every 0 --label "$side-$n" --json > "$dir/blast.json" \
        || die "blast failed ($side $n)"
    wait "$sink" || true
    local t1 c1 s1
    t1=$(date +%s.%N); c1=$(cpu_ticks "$relay"); s1=$(switches "$relay")
    kill "$relay"; wait "$relay" 2>/dev/null || true
    local got
    got=$(grep -o '"messages": *[0-9]*' "$dir/sink.json" | grep -o '[0-9]*$' || echo 0)
    [ "$got" = "$MESSAGES" ] || echo "warning: $side $n: the sink received $got of $MESSAGES" >&2
    awk -v side="$side" -v n="$n" -v m="$got" -v t0="$t0" -v t1="$t1" \
        -v cpu="$((c1 - c0))" -v sw="$((s1 - s0))" 'BEGIN {
            printf "%s %d %.1f %.0f %.2f\n", side, n, m / (t1 - t0), cpu * 10000 / m, sw / m }' \
        | tee -a "$OUT/rounds.txt" \
        | awk '{ printf "round %d %s: %8.1f messages/s end to end, relay CPU %4.0f µs/message, %6.2f context switches/message\n", $2, $1, $3, $4, $5 }'
}

echo "== A: $A (logging $LEVEL_A)"
echo "== B: $B (logging $LEVEL_B)"
echo "== $ROUNDS rounds per side, $MESSAGES x $SIZE, $CONCURRENCY connections, relay -> sink"
for n in $(seq 1 "$ROUNDS"); do
    round "$n" A "$A" "$LEVEL_A"
    round "$n" B "$B" "$LEVEL_B"
done
python3 - "$OUT/rounds.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = lambda side, k: statistics.median(float(r[k]) for r in rows if r[0] == side)
for k, name in [(2, "messages/s end to end"), (3, "relay CPU µs/message"), (4, "context switches/message")]:
    a, b = med("A", k), med("B", k)
    print(f"median {name}: A {a:.2f}, B {b:.2f}, B/A = {b / a:.3f}")
PY
