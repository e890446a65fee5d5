#!/usr/bin/env bash
# Two (or more) relay binaries under the same SMTP load, in alternation (a, b, a, b, ...), each
# run on a fresh queue: the relay accepts, queues and delivers to an `amtp-loadtest sink`, as
# in production. Reports messages/s and relay CPU per message (`blast --pid`) per side, and
# the medians' ratios to the first side. For comparing a change against the commit before it
# (build the old binary in a worktree of its own and pass its path).
#
#   SIDES="old=/tmp/old/amtp-relay new=target/release/amtp-relay" bash loadtest/binaries-ab.sh
#
# A side may add environment for its relay: `name=/path/to/amtp-relay@VAR=value`.
# Environment: SIDES (required), ROUNDS (3 per side), MESSAGES (20000), CONCURRENCY (20),
# SIZE (10k), OUT (binaries-ab). Loopback ports 28225 (relay), 28226 (sink). Stops by itself:
# every blast has a time limit (300 s).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -n "${SIDES:-}" ] || { echo "binaries-ab: set SIDES=\"a=/path/amtp-relay b=/path/amtp-relay\"" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-20000}
CONCURRENCY=${CONCURRENCY:-20}
SIZE=${SIZE:-10k}
OUT=${OUT:-binaries-ab}
SMTP=127.0.0.1:28225 SINK=127.0.0.1:28226

. loadtest/lib.sh
cargo build --release --locked -q -p amtp-loadtest
LOAD=$PWD/target/release/amtp-loadtest

rm -rf "$OUT" && mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SINK_PID= RELAY_PID=
cleanup() {
    for pid in $RELAY_PID $SINK_PID; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=binaries-ab \
    -keyout "$OUT/ca-key.pem" -out "$OUT/ca.pem" 2>/dev/null || die "openssl could not make a CA"

"$LOAD" sink --listen "$SINK" --duration 1h 2> "$OUT/sink.log" > /dev/null &
SINK_PID=$!
wait_port "$SINK"

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

[[delivery.route]]
domains = ["sink.load.test"]
host = "127.0.0.1"
port = ${SINK#*:}
protocol = "smtp"
tls = "none"
EOF
}

round() { # round N SIDE-SPEC
    local n=$1 name=${2%%=*} spec=${2#*=}
    local bin=${spec%%@*} env=
    [ "$spec" != "$bin" ] && env=${spec#*@}
    local dir="$OUT/$name-$n"
    mkdir -p "$dir"
    config > "$dir/relay.toml"
    bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
    (cd "$dir" && exec env $env "$bin" serve --config relay.toml) > "$dir/relay.log" 2>&1 &
    RELAY_PID=$!
    wait_port "$SMTP"
    "$LOAD" blast --target "$SMTP" --connections "$CONCURRENCY" --messages "$MESSAGES" \
        --messages-per-connection 50 --size "$SIZE" --duration 300s --pid "$RELAY_PID" \
        --label "$name-$n" --json > "$dir/blast.json" || die "blast failed ($name $n)"
    kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true; RELAY_PID=
    python3 - "$dir/blast.json" "$name" "$n" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
cpu = r.get("relay_cpu_us_per_unit")
print(f"round {sys.argv[3]} {sys.argv[2]:>8}: {r['messages_per_s']:8.0f} messages/s"
      + (f", relay CPU {cpu:.0f} µs/message" if cpu else "")
      + (f", errors {r['errors']}" if r["errors"] else ""))
PY
}

echo "== $ROUNDS rounds per side, $MESSAGES x $SIZE messages, $CONCURRENCY connections"
for n in $(seq 1 "$ROUNDS"); do
    for side in $SIDES; do round "$n" "$side"; done
done

python3 - "$OUT" $SIDES <<'PY'
import glob, json, os, statistics, sys
out, sides = sys.argv[1], [s.split("=", 1)[0] for s in sys.argv[2:]]
def runs(side):
    return [json.load(open(f)) for f in sorted(glob.glob(os.path.join(out, f"{side}-*/blast.json")))]
rate = lambda rs: statistics.median(r["messages_per_s"] for r in rs)
cpu = lambda rs: statistics.median(r.get("relay_cpu_us_per_unit") or 0 for r in rs)
first = runs(sides[0])
print("== medians (ratio to " + sides[0] + ")")
for s in sides:
    rs = runs(s)
    line = f"{s:>8}: {rate(rs):8.0f} messages/s ({rate(rs) / rate(first):.2f}x)"
    if cpu(rs) and cpu(first):
        line += f", relay CPU {cpu(rs):.0f} µs/message ({cpu(rs) / cpu(first):.2f}x)"
    print(line)
PY
