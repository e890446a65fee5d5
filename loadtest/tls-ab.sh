#!/usr/bin/env bash
# Handshake costs of two relay binaries, A/B in alternation on loopback (docs/PERFORMANCE.md,
# "AMTP against plain SMTP" and "Returning AMTP peers"): per round and per binary,
#   1. tickets off (`[amtp]`/`[tls] ticket_lifetime = "off"` where the binary knows the key):
#      amtp-cold   one full AMTP handshake from each of CLIENTS peers right after start (every
#                  chain new to the relay: verified in full, PTR looked up);
#      amtp-warm   SESSIONS more from the same peers, full handshakes (chains known);
#      tls-full    SESSIONS implicit-TLS sessions, full handshakes (the bare-TLS yardstick);
#   2. tickets on (the binary's default), a restarted relay:
#      amtp-full     SESSIONS AMTP sessions, clients never resume (`blast --warm-up`: one
#                    uncounted session per peer first, so chains and identities are known);
#      amtp-resumed  SESSIONS AMTP sessions, clients resume (each of the CLIENTS peers keeps its
#                    own ticket store; the warm-up gives every peer a ticket first).
# Every session: connect from the peer's own 127.1.x.y address (its PTR served by
# `amtp-loadtest dns`), TLS, greeting, EHLO, QUIT. Each run reports sessions/s and the relay's
# CPU per session (`blast --pid`, /proc). A summary table of ratios ends the run.
#
#   OLD=/path/to/old/amtp-relay bash loadtest/tls-ab.sh
#
# Environment: OLD (required), NEW (default target/release/amtp-relay, built here), CLIENTS
# (1000 peers), SESSIONS (3000 per run), CONCURRENCY (20), ROUNDS (3), OUT (tls-ab-results).
# Ports 28025/28026/28053/28125/28465, metrics 28425.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -n "${OLD:-}" ] || { echo "usage: OLD=/path/to/amtp-relay $0" >&2; exit 2; }
CLIENTS=${CLIENTS:-1000}
SESSIONS=${SESSIONS:-3000}
CONCURRENCY=${CONCURRENCY:-20}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-tls-ab-results}
SMTP=127.0.0.1:28025 SINK=127.0.0.1:28026 DNS=127.0.0.1:28053 AMTP=127.0.0.1:28125
TLS=127.0.0.1:28465 METRICS=127.0.0.1:28425
. loadtest/lib.sh

if [ -z "${NEW:-}" ]; then
    cargo build --release --locked -q -p amtp-relay -p amtp-loadtest
    NEW=$PWD/target/release/amtp-relay
fi
LOAD=${LOAD:-$PWD/target/release/amtp-loadtest}
OLD=$(realpath "$OLD") NEW=$(realpath "$NEW")

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
    --relay-metrics "$METRICS" > /dev/null
"$LOAD" dns --zones "$OUT/fixtures/zones" --listen "$DNS" --duration 2h 2> "$OUT/dns.log" &
PIDS+=($!)

# start_relay BIN TICKETS(on|off): a fresh relay on an empty queue, delivery off.
start_relay() {
    local bin=$1 tickets=$2
    if [ -n "$RELAY_PID" ]; then kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true; fi
    rm -rf "$OUT/fixtures/relay-data"
    local config="$OUT/fixtures/relay-run.toml"
    sed -e '/^\[delivery\]/a enabled = false' "$OUT/fixtures/relay.toml" > "$config"
    if [ "$tickets" = off ] && [ "$bin" = "$NEW" ]; then
        sed -i -e '/^\[amtp\]/a ticket_lifetime = "off"' \
            -e '/^\[tls\]/a ticket_lifetime = "off"' "$config"
    fi
    (cd "$OUT/fixtures" && exec "$bin" serve --config relay-run.toml) > "$OUT/relay.log" 2>&1 &
    RELAY_PID=$!
    wait_port "$AMTP"
    wait_port "$TLS"
}

# blast NAME SESSIONS ARGS...: one sessions-only run; prints a summary line.
blast() {
    local name=$1 n=$2; shift 2
    "$LOAD" blast --label "$name" --json --duration 300s --identities "$OUT/fixtures/identities.json" \
        --pid "$RELAY_PID" --connections "$CONCURRENCY" --messages "$n" \
        --messages-per-connection 0 --progress-every 0s "$@" \
        > "$OUT/$name.json" 2> "$OUT/$name.log" || die "$name failed (see $OUT/$name.log)"
    python3 - "$OUT/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
errs = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "no errors"
print(f'{r["label"]:<28} {r["sessions_per_s"]:8.1f} sessions/s  relay {r["relay_cpu_us_per_unit"]:6.0f} us/session'
      f'  TLS {r["tls_full"]} full / {r["tls_resumed"]} resumed  ({errs})')
PY
}

for round in $(seq 1 "$ROUNDS"); do
    for side in old new; do
        bin=$OLD; [ "$side" = new ] && bin=$NEW
        echo "== round $round, $side ($bin)"
        start_relay "$bin" off
        blast "r$round-$side-amtp-cold" "$CLIENTS" --protocol amtp --target "$AMTP" --no-resumption
        blast "r$round-$side-amtp-warm" "$SESSIONS" --protocol amtp --target "$AMTP" --no-resumption
        blast "r$round-$side-tls-full" "$SESSIONS" --protocol tls --target "$TLS" --no-resumption
        curl -s "http://$METRICS/metrics" | grep -E '^amtp_tls_(chain_cache|tickets)' \
            > "$OUT/r$round-$side-metrics-off.txt" || true
        start_relay "$bin" on
        blast "r$round-$side-amtp-full" "$SESSIONS" --protocol amtp --target "$AMTP" --no-resumption --warm-up
        blast "r$round-$side-amtp-resumed" "$SESSIONS" --protocol amtp --target "$AMTP" --warm-up
        curl -s "http://$METRICS/metrics" | grep -E '^amtp_tls_' \
            > "$OUT/r$round-$side-metrics-on.txt" || true
    done
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys, statistics
out, rounds = sys.argv[1], int(sys.argv[2])
def get(r, side, run):
    return json.load(open(f"{out}/r{r}-{side}-{run}.json"))
print("\n== per round: relay CPU per session (us) and sessions/s")
print(f'{"round":<6}{"side":<5}{"tls":>7}{"cold":>7}{"warm":>7}{"full":>7}{"resumed":>8}'
      f'{"warm/tls":>10}{"cold/tls":>10}{"resumed/full rate":>19}')
ratios = {k: [] for k in ("warm", "cold", "res")}
for r in range(1, rounds + 1):
    for side in ("old", "new"):
        cpu = {k: get(r, side, f"amtp-{k}")["relay_cpu_us_per_unit"] for k in ("cold", "warm", "full", "resumed")}
        tls = get(r, side, "tls-full")["relay_cpu_us_per_unit"]
        rate = get(r, side, "amtp-resumed")["sessions_per_s"] / get(r, side, "amtp-full")["sessions_per_s"]
        print(f'{r:<6}{side:<5}{tls:7.0f}{cpu["cold"]:7.0f}{cpu["warm"]:7.0f}{cpu["full"]:7.0f}{cpu["resumed"]:8.0f}'
              f'{cpu["warm"]/tls:10.2f}{cpu["cold"]/tls:10.2f}{rate:19.2f}')

# Returning peers: what a resumed session costs against a full one, as relay capacity (relay
# CPU per session: full / resumed; how many more sessions a relay core carries) and as the
# sessions/s of this run (generator and relay share the machine, so the generator's own
# handshake costs are in it too). "old full" is the old binary's amtp-full run.
print("\n== returning peers: capacity (full CPU / resumed CPU) and rate (resumed / full sessions/s)")
print(f'{"round":<6}{"new resumed us":>15}{"new full us":>12}{"old full us":>12}'
      f'{"cap vs new full":>16}{"cap vs old full":>16}{"rate vs new full":>17}{"rate vs old full":>17}')
for r in range(1, rounds + 1):
    res, full_new, full_old = get(r, "new", "amtp-resumed"), get(r, "new", "amtp-full"), get(r, "old", "amtp-full")
    cpu = lambda x: x["relay_cpu_us_per_unit"]
    rate = lambda x: x["sessions_per_s"]
    print(f'{r:<6}{cpu(res):15.0f}{cpu(full_new):12.0f}{cpu(full_old):12.0f}'
          f'{cpu(full_new)/cpu(res):16.2f}{cpu(full_old)/cpu(res):16.2f}'
          f'{rate(res)/rate(full_new):17.2f}{rate(res)/rate(full_old):17.2f}')
PY
