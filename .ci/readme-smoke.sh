#!/usr/bin/env bash
# README smoke test: start the relay exactly as README's first command does (embedded default
# configuration, no --config; the debug binary the test run already built, same code as
# --release) in an empty directory, run README's swaks examples and its AMTP probe command
# verbatim (taken from README.md itself), check the replies, check `queue list`, and stop it
# with SIGTERM. Loopback only; bounded by timeouts.
set -euo pipefail
bin=$(readlink -f "$1")
readme=$(readlink -f "$(dirname "${BASH_SOURCE[0]}")/../README.md")
work=$(mktemp -d)
cd "$work"
"$bin" serve >relay.log 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "---- relay log"; cat relay.log; exit 1; }

for _ in $(seq 100); do grep -q "relay started" relay.log && break; sleep 0.1; done
grep -q "relay started" relay.log || fail "relay did not start"
for port in 2525 2587 2465 3025 9425; do grep -q "address=127.0.0.1:$port" relay.log || fail "not listening on $port"; done
[ "$(stat -c %a amtp-data/dev-password)" = 600 ] || fail "dev-password is not mode 0600"

expect() { # expect DESCRIPTION PATTERN -- swaks args...
    local desc=$1 pattern=$2; shift 3
    local out; out=$(timeout 30 swaks "$@" 2>&1 || true)
    grep -q -- "$pattern" <<<"$out" || { echo "$out"; fail "$desc: expected '$pattern'"; }
    echo "ok: $desc"
}

expect "mx: local delivery" "250 2.0.0 Ok: queued" -- \
    --server 127.0.0.1:2525 --from alice@sender.test --to bob@example.test
expect "mx: relay denied" "550 5.7.1 Relay access denied" -- \
    --server 127.0.0.1:2525 --from alice@sender.test --to someone@remote.test
expect "submission: STARTTLS + PLAIN" "250 2.0.0 Ok: queued" -- \
    --server 127.0.0.1:2587 --tls --tls-verify --tls-ca-path amtp-data/tls/ca.pem \
    --auth PLAIN --auth-user dev --auth-password "$(cat amtp-data/dev-password)" \
    --from dev@example.test --to someone@remote.test
expect "submissions: implicit TLS + CRAM-MD5" "250 2.0.0 Ok: queued" -- \
    --server 127.0.0.1:2465 --tls-on-connect --tls-verify --tls-ca-path amtp-data/tls/ca.pem \
    --auth CRAM-MD5 --auth-user dev --auth-password "$(cat amtp-data/dev-password)" \
    --from dev@example.test --to someone@remote.test
expect "submission: AUTH LOGIN" "235 2.7.0" -- \
    --server 127.0.0.1:2587 --tls --tls-verify --tls-ca-path amtp-data/tls/ca.pem \
    --auth LOGIN --auth-user dev --auth-password "$(cat amtp-data/dev-password)" \
    --from dev@example.test --to someone@remote.test

# README's AMTP command, exactly as written there ("cargo run --release --" is this binary).
probe=$(awk '/^cargo run --release -- probe /{p=1} p{print} p&&!/\\$/{exit}' "$readme")
[ -n "$probe" ] || fail "README.md has no probe command"
probe_out=$(timeout 60 bash -c "${probe/cargo run --release --/\"\$0\"}" "$bin" 2>&1) \
    || { echo "$probe_out"; fail "AMTP probe: expected exit 0"; }
grep -q "our MPC per/individual: allow" <<<"$probe_out" || { echo "$probe_out"; fail "AMTP probe: no MPC policy table"; }
probe_id=$(sed -n 's/^ *queued by the peer as \([0-9a-f]\{16\}\)$/\1/p' <<<"$probe_out")
[ -n "$probe_id" ] || { echo "$probe_out"; fail "AMTP probe: no queue id"; }
echo "ok: AMTP probe --send queued $probe_id"

listing=$("$bin" queue list)
[ "$(grep -c '^[0-9a-f]\{16\} ' <<<"$listing")" = 5 ] || { echo "$listing"; fail "queue list should show 5 messages"; }
grep -q "^$probe_id .*dev@example.test .*bob@example.test" <<<"$listing" || { echo "$listing"; fail "the AMTP message is not in queue list"; }
echo "ok: queue list shows 5 messages, the AMTP one among them"

# README's metrics and health commands, as written.
metrics=$(curl -s 127.0.0.1:9425/metrics | grep amtp_messages_accepted_total) || fail "no amtp_messages_accepted_total on :9425/metrics"
accepted=$(awk '/^amtp_messages_accepted_total/ {n += $2} END {print n}' <<<"$metrics")
[ "$accepted" = 5 ] || { echo "$metrics"; fail "metrics count $accepted accepted messages, expected 5"; }
ready=$(curl -i 127.0.0.1:9425/healthz/ready 2>/dev/null) || fail "/healthz/ready unreachable"
grep -q "^HTTP/1.1 200" <<<"$ready" || { echo "$ready"; fail "/healthz/ready is not 200"; }
echo "ok: /metrics counts 5 accepted messages, /healthz/ready is 200"

kill -TERM "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then fail "relay did not stop on SIGTERM"; fi
wait "$pid" || fail "relay exited non-zero after SIGTERM"
echo "ok: clean shutdown"
"$bin" queue list | grep -q "5 message(s)" || fail "queue not readable after stop"
echo "ok: queue readable after stop"
