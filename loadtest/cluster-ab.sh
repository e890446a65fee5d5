#!/usr/bin/env bash
# A/B: one relay node, [cluster] off vs on (redis-server on loopback), alternating rounds
# (ROUNDS, default 3), same fixtures: AMTP with the shared identity rate on every message
# (a limit far above the load) and implicit TLS + AUTH PLAIN. Free loopback ports, a
# temporary directory (printed at the end, with one `blast --json` result per run).
# Needs redis-server. Figures: docs/CLUSTER.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -p amtp-relay -p amtp-loadtest
R=$PWD/target/release
W=$(mktemp -d /tmp/amtp-cluster-ab.XXXX)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
AMTP=$(port); SMTP=$(port); TLS=$(port); DNS=$(port); SINK=$(port); REDIS=$(port)
$R/amtp-loadtest fixtures --out $W/run --clients 200 --relay-amtp 127.0.0.1:$AMTP --relay-smtp 127.0.0.1:$SMTP --relay-tls 127.0.0.1:$TLS --dns 127.0.0.1:$DNS --sink 127.0.0.1:$SINK >/dev/null
$R/amtp-loadtest dns --zones $W/run/zones --listen 127.0.0.1:$DNS >/dev/null 2>&1 & DNSPID=$!
$R/amtp-loadtest sink --listen 127.0.0.1:$SINK >/dev/null 2>&1 & SINKPID=$!
redis-server --port $REDIS --bind 127.0.0.1 --save '' --appendonly no --dir $W >/dev/null 2>&1 & REDISPID=$!
cleanup() { kill $DNSPID $SINKPID $REDISPID 2>/dev/null || true; [ -n "${RELAY:-}" ] && kill $RELAY 2>/dev/null || true; }
trap cleanup EXIT
cd $W/run
# Exercise the shared identity rate on every AMTP message (a limit far above the load).
sed -i 's/^mpc_policy = .*/&\nrate_limit_per_minute = 100000000/' relay.toml
cp relay.toml relay-off.toml
cp relay.toml relay-on.toml
printf '\n[cluster]\nredis = "redis://127.0.0.1:%s/0"\nnode_id = "edge-ab"\n' $REDIS >> relay-on.toml
start_relay() {
  rm -rf relay-data
  $R/amtp-relay serve --config relay-$1.toml >relay-$1.log 2>&1 & RELAY=$!
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$AMTP) 2>/dev/null && return; sleep 0.1; done
  echo "relay did not start"; cat relay-$1.log; exit 1
}
stop_relay() { kill $RELAY; wait $RELAY 2>/dev/null || true; RELAY=; }
for round in $(seq ${ROUNDS:-3}); do
  for mode in off on; do
    start_relay $mode
    $R/amtp-loadtest blast --protocol amtp --target 127.0.0.1:$AMTP --identities identities.json \
      --connections 20 --messages 4000 --messages-per-connection 100 --size 10k --pid $RELAY --json > $W/amtp-$mode-$round.json 2>/dev/null
    $R/amtp-loadtest blast --protocol tls --target 127.0.0.1:$TLS --ca ca.pem --auth load:load-password \
      --connections 8 --messages 800 --messages-per-connection 5 --size 10k --json > $W/auth-$mode-$round.json 2>/dev/null
    stop_relay
  done
done
python3 - "$W" <<'PY'
import glob, json, statistics, sys
for kind in ("amtp", "auth"):
    for mode in ("off", "on"):
        runs = [json.load(open(f)) for f in sorted(glob.glob(f"{sys.argv[1]}/{kind}-{mode}-*.json"))]
        rates = [r["messages_per_s"] for r in runs]
        def p50(r, phase):
            return next((p["p50_us"] / 1000 for p in r["phases"] if p["phase"] == phase), None)
        print(f"{kind:4} {mode:3} messages/s {[round(x) for x in rates]} mean {statistics.mean(rates):.0f}"
              f" | MAIL p50 ms {[p50(r, 'mail') for r in runs]} | AUTH p50 ms {[p50(r, 'auth') for r in runs]}"
              f" | failed {sum(r['messages_failed'] for r in runs)}")
PY
grep -c "Redis unreachable" "$W/run/relay-on.log" | sed 's/^/deadline misses or outages logged with [cluster] on: /' || true
echo "$W"
