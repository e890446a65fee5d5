#!/usr/bin/env bash
# A/B: one relay node with [cluster] (redis-server on loopback) delivering to the loadtest sink,
# [delivery] max_messages_per_destination off vs on, alternating rounds (ROUNDS, default 3).
# "on" is a rate far above the load ("1000000/s"), so it never holds mail back: what differs is
# the fleet token claims themselves. Per run: end-to-end messages/s (blast start → the sink's
# last message; MESSAGES, default 3000, AMTP, 20 connections) and the Redis script calls per
# delivered message (INFO commandstats: the lease per connection in both modes, plus the
# destination's claims with the rate on). PROFILE=debug uses target/debug instead of a release
# build. Needs redis-server and redis-cli. Figures: docs/CLUSTER.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then
  cargo build --release -p amtp-relay -p amtp-loadtest
else
  cargo build -p amtp-relay -p amtp-loadtest
fi
R=$PWD/target/$PROFILE
N=${MESSAGES:-3000}
W=$(mktemp -d /tmp/amtp-drate-ab.XXXX)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
AMTP=$(port); SMTP=$(port); TLS=$(port); DNS=$(port); SINK=$(port); REDIS=$(port)
$R/amtp-loadtest fixtures --out $W/run --clients 200 --relay-amtp 127.0.0.1:$AMTP --relay-smtp 127.0.0.1:$SMTP --relay-tls 127.0.0.1:$TLS --dns 127.0.0.1:$DNS --sink 127.0.0.1:$SINK >/dev/null
$R/amtp-loadtest dns --zones $W/run/zones --listen 127.0.0.1:$DNS >/dev/null 2>&1 & DNSPID=$!
redis-server --port $REDIS --bind 127.0.0.1 --save '' --appendonly no --dir $W >/dev/null 2>&1 & REDISPID=$!
cleanup() {
  kill $DNSPID $REDISPID 2>/dev/null || true
  [ -n "${RELAY:-}" ] && kill $RELAY 2>/dev/null || true
  [ -n "${SINKPID:-}" ] && kill $SINKPID 2>/dev/null || true
}
trap cleanup EXIT
cd $W/run
# DEADLINE (default the shipped 5ms): raise it for a debug build on a busy machine, where
# missed deadlines fall back to local decisions and the run measures those instead.
printf '\n[cluster]\nredis = "redis://127.0.0.1:%s/0"\nnode_id = "edge-ab"\ndeadline = "%s"\n' $REDIS "${DEADLINE:-5ms}" >> relay.toml
cp relay.toml relay-off.toml
sed 's|^max_messages_per_connection = .*|&\nmax_messages_per_destination = "1000000/s"|' relay.toml > relay-on.toml
grep -q max_messages_per_destination relay-on.toml
start_relay() {
  rm -rf relay-data
  $R/amtp-relay serve --config relay-$1.toml >relay-$1.log 2>&1 & RELAY=$!
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$AMTP) 2>/dev/null && return; sleep 0.1; done
  echo "relay did not start"; cat relay-$1.log; exit 1
}
# Each run starts from an empty Redis: a stopped relay's connection leases would otherwise
# hold fleet slots for their 30 s expiry.
stop_relay() { kill $RELAY; wait $RELAY 2>/dev/null || true; RELAY=; redis-cli -p $REDIS FLUSHALL >/dev/null; }
script_calls() {
  redis-cli -p $REDIS INFO commandstats | tr -d '\r' \
    | awk -F'[=,:]' '/^cmdstat_(evalsha|eval):/ { n += $3 } END { print n + 0 }'
}
for round in $(seq ${ROUNDS:-3}); do
  for mode in off on; do
    $R/amtp-loadtest sink --listen 127.0.0.1:$SINK --messages $N --duration 10m --progress-every 0s --json > $W/sink-$mode-$round.json 2>/dev/null & SINKPID=$!
    start_relay $mode
    sleep 1   # the first heartbeat marks Redis reachable
    redis-cli -p $REDIS CONFIG RESETSTAT >/dev/null
    t0=$(date +%s.%N)
    $R/amtp-loadtest blast --protocol amtp --target 127.0.0.1:$AMTP --identities identities.json \
      --connections 20 --messages $N --messages-per-connection 100 --size 10k --json > $W/blast-$mode-$round.json 2>/dev/null
    wait $SINKPID; SINKPID=
    t1=$(date +%s.%N)
    echo "$mode $round $t0 $t1 $(script_calls)" >> $W/results
    stop_relay
  done
done
python3 - "$W" "$N" <<'PY'
import statistics, sys
w, n = sys.argv[1], int(sys.argv[2])
rows = [l.split() for l in open(f"{w}/results")]
rate = {m: [n / (float(t1) - float(t0)) for mode, _, t0, t1, _ in rows if mode == m] for m in ("off", "on")}
calls = {m: [int(c) / n for mode, _, _, _, c in rows if mode == m] for m in ("off", "on")}
for m in ("off", "on"):
    print(f"rate {m:3}: delivered messages/s {[round(x) for x in rate[m]]} mean {statistics.mean(rate[m]):.0f}"
          f" | Redis script calls per message {[round(x, 3) for x in calls[m]]}")
pairs = [on / off for off, on in zip(rate["off"], rate["on"])]
print(f"on/off per round {[round(x, 2) for x in pairs]}, mean ratio {statistics.mean(rate['on']) / statistics.mean(rate['off']):.2f}")
PY
grep -c "destination message rate reached" "$W/run/relay-on.log" | sed 's/^/episodes logged with the rate on, last run (expected 0): /' || true
grep -c "Redis unreachable" "$W/run/relay-on.log" | sed 's/^/deadline misses or outages logged with the rate on, last run: /' || true
echo "$W"
