#!/usr/bin/env bash
# README smoke test: start the relay exactly as README's first command does (embedded default
# configuration, no --config; the debug binary the test run already built, same code as
# --release) in an empty directory, run README's swaks examples verbatim, check the replies,
# check `queue list`, and stop it with SIGTERM. Loopback only; bounded by timeouts.
set -euo pipefail
bin=$(readlink -f "$1")
work=$(mktemp -d)
cd "$work"
"$bin" serve >relay.log 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "---- relay log"; cat relay.log; exit 1; }

for _ in $(seq 100); do grep -q "relay started" relay.log && break; sleep 0.1; done
grep -q "relay started" relay.log || fail "relay did not start"
for port in 2525 2587 2465; do grep -q "address=127.0.0.1:$port" relay.log || fail "not listening on $port"; done
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

listing=$("$bin" queue list)
[ "$(grep -c '^[0-9a-f]\{16\} ' <<<"$listing")" = 4 ] || { echo "$listing"; fail "queue list should show 4 messages"; }
echo "ok: queue list shows 4 messages"

kill -TERM "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then fail "relay did not stop on SIGTERM"; fi
wait "$pid" || fail "relay exited non-zero after SIGTERM"
echo "ok: clean shutdown"
"$bin" queue list | grep -q "4 message(s)" || fail "queue not readable after stop"
echo "ok: queue readable after stop"
