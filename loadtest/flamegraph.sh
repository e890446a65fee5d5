#!/usr/bin/env bash
# A CPU flame graph of the relay relaying SMTP mail to a sink: where its CPU goes per message.
#
#   bash loadtest/flamegraph.sh [out.svg]      (default out: flame-smtp.svg; needs perf, root
#                                               or kernel.perf_event_paranoid <= 1)
#
# What it does, all on loopback and in a temporary directory it removes afterwards:
#   1. builds the release amtp-relay and amtp-loadtest (RELAY_BIN/LOAD_BIN skip that);
#   2. installs inferno (inferno-collapse-perf, inferno-flamegraph) into target/tools with
#      `cargo install --locked` if it is not on PATH: a developer tool, not a dependency;
#   3. starts a sink and the relay (config as compare-postfix.sh: `[logging] level = "warn"`
#      unless LEVEL says otherwise,
#      one route to the sink over plain SMTP, CONCURRENCY connections per destination);
#   4. runs `blast` (MESSAGES messages of SIZE at CONCURRENCY connections, WARMUP messages
#      first, unrecorded) and, while it runs, `perf record -a -e cpu-clock --call-graph dwarf`
#      for at most RECORD_SECONDS (perf stops by itself; it is stopped early when blast ends);
#      only the relay's samples are unwound and drawn;
#   5. folds the stacks, drops frames narrower than MINWIDTH (% of the width) so the SVG stays
#      small, and writes the SVG; prints blast's CPU µs and context switches per message.
#
# cpu-clock (a software clock) because hardware counters are not available in every VM.
# DWARF unwinding because release builds have no frame pointers (and `line-tables-only` debug
# info gives file and line names). System-wide recording (-a) and unwinding only the relay's
# samples keeps perf's own cost low: per-thread recording (-p) followed every short-lived
# storage thread and cost more CPU than the relay.
#
# Environment: MESSAGES (20000), WARMUP (2000), CONCURRENCY (20), SIZE (10k), RECORD_SECONDS (30,
# the most perf records), FREQ (499 samples/s per CPU), STACK (8192: bytes of stack
# copied per sample for DWARF unwinding), MINWIDTH (0.5), PORT_BASE (29000:
# relay on +25, sink on +26), LEVEL (the relay's `[logging] level`, warn), RELAY_BIN / LOAD_BIN
# (use these binaries instead of building),
# KEEP=1 keeps the work directory (perf.data, folded stacks, relay log).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_SVG=${1:-flame-smtp.svg}
MESSAGES=${MESSAGES:-20000}
WARMUP=${WARMUP:-2000}
CONCURRENCY=${CONCURRENCY:-20}
SIZE=${SIZE:-10k}
RECORD_SECONDS=${RECORD_SECONDS:-30}
FREQ=${FREQ:-499}
STACK=${STACK:-8192}
MINWIDTH=${MINWIDTH:-0.5}
PORT_BASE=${PORT_BASE:-29000}
LEVEL=${LEVEL:-warn}
RELAY_PORT=$((PORT_BASE + 25))
SINK_PORT=$((PORT_BASE + 26))

. loadtest/lib.sh
command -v perf >/dev/null || die "perf is not installed (Debian: apt-get install linux-perf)"
case $OUT_SVG in /*) ;; *) OUT_SVG=$PWD/$OUT_SVG ;; esac

if [ -z "${RELAY_BIN:-}" ] || [ -z "${LOAD_BIN:-}" ]; then
    echo "== building release binaries"
    cargo build --release --locked -q -p amtp-relay -p amtp-loadtest
fi
RELAY_BIN=${RELAY_BIN:-$PWD/target/release/amtp-relay}
LOAD_BIN=${LOAD_BIN:-$PWD/target/release/amtp-loadtest}

TOOLS=$PWD/target/tools/bin
export PATH="$PATH:$TOOLS"
if ! command -v inferno-flamegraph >/dev/null || ! command -v inferno-collapse-perf >/dev/null; then
    echo "== installing inferno into target/tools (once)"
    cargo install --locked --quiet --root target/tools inferno
fi

WORK=$(mktemp -d /tmp/amtp-flame.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Delivery needs trust anchors for outbound AMTP (check-config refuses it otherwise); this run
# only delivers over plain SMTP to the sink, so a throwaway CA does.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=flame \
    -keyout "$WORK/ca-key.pem" -out "$WORK/ca.pem" 2>/dev/null || die "openssl could not make a CA"
cat > "$WORK/relay.toml" <<CONF
[server]
hostname = "relay.load.test"
data_dir = "data"
local_domains = ["sink.load.test"]

[tls]
generate_dev_certificate = true

[logging]
level = "$LEVEL"

[[listener]]
name = "mx"
role = "mx"
address = "127.0.0.1:$RELAY_PORT"
max_connections_per_ip = 1000

[delivery]
server_ca = "ca.pem"
concurrency_per_destination = $CONCURRENCY
max_messages_per_connection = 1000

[[delivery.route]]
domains = ["sink.load.test"]
host = "127.0.0.1"
port = $SINK_PORT
protocol = "smtp"
tls = "none"
CONF

"$LOAD_BIN" sink --listen "127.0.0.1:$SINK_PORT" --duration "$((RECORD_SECONDS * 4 + 120))s" \
    > "$WORK/sink.out" 2> "$WORK/sink.log" &
PIDS+=($!)
wait_port "$SINK_PORT"
(cd "$WORK" && exec "$RELAY_BIN" serve --config relay.toml) > "$WORK/relay.log" 2>&1 &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
wait_port "$RELAY_PORT"

blast() { # blast MESSAGES LABEL
    "$LOAD_BIN" blast --target "127.0.0.1:$RELAY_PORT" --connections "$CONCURRENCY" \
        --messages "$1" --messages-per-connection 1000 --size "$SIZE" \
        --duration "$((RECORD_SECONDS * 2))s" --pid "$RELAY_PID" --label "$2" --progress-every 0
}
if [ "$WARMUP" -gt 0 ]; then
    echo "== warm-up: $WARMUP messages (not recorded)"
    blast "$WARMUP" warmup > "$WORK/warmup.txt"
fi

echo "== recording the relay (pid $RELAY_PID) for at most ${RECORD_SECONDS} s while blast sends $MESSAGES x $SIZE"
perf record -a -e cpu-clock -F "$FREQ" -g --call-graph "dwarf,$STACK" -m 1024 \
    -o "$WORK/perf.data" -- sleep "$RECORD_SECONDS" > "$WORK/perf.log" 2>&1 &
PERF_PID=$!
PIDS+=("$PERF_PID")
sleep 1 # perf attaches to every thread before the load starts
blast "$MESSAGES" flame | tee "$WORK/blast.txt" | grep -E "^(throughput|relay)" || true
# Stop recording as soon as the load is over (SIGINT: perf writes its file and exits).
kill -INT "$PERF_PID" 2>/dev/null || true
wait "$PERF_PID" 2>/dev/null || true
[ -s "$WORK/perf.data" ] || { cat "$WORK/perf.log" >&2; die "perf recorded nothing"; }

echo "== rendering $OUT_SVG"
perf script -i "$WORK/perf.data" --pid "$RELAY_PID" 2> /dev/null > "$WORK/perf.script"
inferno-collapse-perf < "$WORK/perf.script" > "$WORK/folded.txt"
inferno-flamegraph --minwidth "$MINWIDTH" \
    --title "amtp-relay: SMTP $SIZE x $MESSAGES, $CONCURRENCY connections, relay -> sink (cpu-clock)" \
    < "$WORK/folded.txt" > "$OUT_SVG"
echo "relay CPU sampled: $(awk '{ n += $NF } END { printf "%.1f s", n / 1e9 }' "$WORK/folded.txt"), svg: $OUT_SVG ($(du -k "$OUT_SVG" | cut -f1) KiB)"
