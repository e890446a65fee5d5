#!/usr/bin/env bash
# What recording metrics costs per message, counted in instructions rather than seconds:
# the relay runs under valgrind's callgrind (which counts every instruction it executes,
# the same on a busy or an idle machine), once with `[metrics]` off and once on, for two
# message counts each. The per-message cost is the slope between the two counts, so start-up
# and shutdown cancel out. No scrapes during the runs: this is the recording cost alone
# (metrics-ab.sh measures throughput with scrapes).
#
#   bash loadtest/metrics-cost.sh        needs valgrind; results in ./metrics-cost/
#
# Environment: SMALL (200) and LARGE (1200) messages, SIZE (10k), OUT (metrics-cost).
# Loopback ports 28125 (relay), 28126 (sink), 28127 (metrics).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SMALL=${SMALL:-200}
LARGE=${LARGE:-1200}
SIZE=${SIZE:-10k}
OUT=${OUT:-metrics-cost}
SMTP=127.0.0.1:28125 SINK=127.0.0.1:28126 METRICS=127.0.0.1:28127

. loadtest/lib.sh
command -v valgrind >/dev/null || die "valgrind is not installed"
echo "== building release binaries"
cargo build --release --locked -q -p amtp-relay -p amtp-loadtest
RELAY_BIN=$PWD/target/release/amtp-relay
LOAD=$PWD/target/release/amtp-loadtest

rm -rf "$OUT" && mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SINK_PID= RELAY_PID=
cleanup() {
    for pid in $RELAY_PID $SINK_PID; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=metrics-cost \
    -keyout "$OUT/ca-key.pem" -out "$OUT/ca.pem" 2>/dev/null || die "openssl could not make a CA"
"$LOAD" sink --listen "$SINK" --duration 1h 2> "$OUT/sink.log" > /dev/null &
SINK_PID=$!
wait_port "$SINK" 60

run() { # run on|off MESSAGES: prints the relay's instruction count
    local side=$1 n=$2 dir="$OUT/$1-$2"
    mkdir -p "$dir"
    cat > "$dir/relay.toml" <<EOF
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

[delivery]
server_ca = "$OUT/ca.pem"

[[delivery.route]]
domains = ["sink.load.test"]
host = "127.0.0.1"
port = ${SINK#*:}
protocol = "smtp"
tls = "none"
EOF
    if [ "$side" = on ]; then printf '\n[metrics]\nlisten = "%s"\n' "$METRICS" >> "$dir/relay.toml"; fi
    (cd "$dir" && exec valgrind --tool=callgrind --callgrind-out-file=callgrind.out \
        "$RELAY_BIN" serve --config relay.toml) > "$dir/relay.log" 2>&1 &
    RELAY_PID=$!
    wait_port "$SMTP" 60
    "$LOAD" blast --target "$SMTP" --connections 4 --messages "$n" --messages-per-connection 50 \
        --size "$SIZE" --duration 600s --json > "$dir/blast.json" || die "blast failed ($side $n)"
    # Let delivery finish: the queue is empty when the sink has them all.
    for _ in $(seq 1 600); do
        [ -z "$(ls "$dir/data/queue/spool" 2>/dev/null)" ] && break
        sleep 0.2
    done
    kill -TERM "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true; RELAY_PID=
    sed -n 's/^summary: //p' "$dir/callgrind.out"
}

declare -A IR
for side in off on; do
    for n in "$SMALL" "$LARGE"; do
        IR[$side-$n]=$(run "$side" "$n")
        echo "metrics $side, $n messages: ${IR[$side-$n]} instructions"
    done
done
python3 - "${IR[off-$SMALL]}" "${IR[off-$LARGE]}" "${IR[on-$SMALL]}" "${IR[on-$LARGE]}" "$SMALL" "$LARGE" <<'PY'
import sys
off_s, off_l, on_s, on_l, small, large = map(int, sys.argv[1:])
n = large - small
off, on = (off_l - off_s) / n, (on_l - on_s) / n
print(f"instructions per message: metrics off {off:,.0f}, on {on:,.0f}, "
      f"on/off = {on / off:.4f} (+{on - off:,.0f} per message)")
PY
