#!/usr/bin/env bash
# One node with [cluster] under AMTP load; redis-server killed (SIGKILL) at 8 s and restarted
# at 16 s of a 24 s run. Prints the cluster metrics, the queue (empty: all delivered), what
# blast had acknowledged against what the sink received, and the node's Redis log lines.
# Free loopback ports, a temporary directory. Needs redis-server and curl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -p amtp-relay -p amtp-loadtest
R=$PWD/target/release
W=$(mktemp -d /tmp/amtp-cluster-outage.XXXX)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
AMTP=$(port); SMTP=$(port); TLS=$(port); DNS=$(port); SINK=$(port); REDIS=$(port); METRICS=$(port)
$R/amtp-loadtest fixtures --out $W/run --clients 200 --relay-amtp 127.0.0.1:$AMTP --relay-smtp 127.0.0.1:$SMTP --relay-tls 127.0.0.1:$TLS --dns 127.0.0.1:$DNS --sink 127.0.0.1:$SINK >/dev/null
$R/amtp-loadtest dns --zones $W/run/zones --listen 127.0.0.1:$DNS >/dev/null 2>&1 & DNSPID=$!
$R/amtp-loadtest sink --listen 127.0.0.1:$SINK --progress-every 1s --duration 120s 2>$W/sink.log >/dev/null & SINKPID=$!
redis-server --port $REDIS --bind 127.0.0.1 --save '' --appendonly no --dir $W >/dev/null 2>&1 & REDISPID=$!
cleanup() { kill $DNSPID $SINKPID ${REDISPID:-} ${RELAY:-} 2>/dev/null || true; }
trap cleanup EXIT
cd $W/run
sed -i 's/^mpc_policy = .*/&\nrate_limit_per_minute = 100000000/' relay.toml
sed -i 's/^level = "warn"/level = "info"/' relay.toml
printf '\n[metrics]\nlisten = "127.0.0.1:%s"\n\n[cluster]\nredis = "redis://127.0.0.1:%s/0"\nnode_id = "edge-kill"\n' $METRICS $REDIS >> relay.toml
$R/amtp-relay serve --config relay.toml 2>relay.log >/dev/null & RELAY=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$AMTP) 2>/dev/null && break; sleep 0.1; done
sleep 1
$R/amtp-loadtest blast --protocol amtp --target 127.0.0.1:$AMTP --identities identities.json \
  --connections 20 --messages 1000000 --duration 24s --messages-per-connection 100 --size 10k --json > $W/blast.json 2>/dev/null &
BLAST=$!
sleep 8; kill -9 $REDISPID; wait $REDISPID 2>/dev/null || true; echo "redis killed at $(date +%T)"
sleep 8
redis-server --port $REDIS --bind 127.0.0.1 --save '' --appendonly no --dir $W >/dev/null 2>&1 & REDISPID=$!
echo "redis restarted at $(date +%T)"
wait $BLAST
sleep 6
curl -s 127.0.0.1:$METRICS/metrics | grep -E '^amtp_cluster|^amtp_messages_accepted_total' || true
$R/amtp-relay queue stats --config relay.toml || true
python3 - $W/blast.json <<'PY'
import json,sys
r=json.load(open(sys.argv[1]))
print("blast: ok",r["messages_ok"],"failed",r["messages_failed"],"msg/s %.0f"%r["messages_per_s"],"errors",r["errors"])
for p in r["phases"]:
    if p["phase"] in ("mail","message","data_end"): print(" ",p["phase"],"p50 %.2f ms p99 %.2f ms max %.2f ms"%(p["p50_us"]/1000,p["p99_us"]/1000,p["max_us"]/1000))
PY
tail -1 $W/sink.log
grep -E 'Redis (un)?reachable' relay.log | cut -c1-220
echo "$W"
