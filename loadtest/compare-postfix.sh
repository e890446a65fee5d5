#!/usr/bin/env bash
# Side by side with Postfix: the same relay job, the same load, the same durability, one run.
#
#   bash loadtest/compare-postfix.sh            (as root: Postfix's master needs it)
#
# What it does, all on loopback and in a temporary directory it removes afterwards:
#   1. installs postfix from Debian if it is missing (never starts the system service);
#   2. builds the release amtp-relay and amtp-loadtest;
#   3. runs a throwaway Postfix (its own config, queue and data directories; never port 25)
#      relaying sink.load.test to an amtp-loadtest sink, and amtp-relay with the equivalent
#      configuration relaying to its own sink. Both acknowledge a message only after it is on
#      disk: Postfix's cleanup fsyncs the queue file before smtpd answers 250; amtp-relay's
#      group commit fdatasyncs the spool file and the queue log before its 250;
#   4. drives each relay with Postfix's smtp-source and with amtp-loadtest blast, MESSAGES
#      messages of 10 KB at CONCURRENCY sessions, and times from the first connection until
#      the sink has received the last message (relay in, queue, relay out);
#   5. prints messages/s for each and the ratio amtp-relay / Postfix.
#
# Environment: MESSAGES (default 10000), CONCURRENCY (20), PORT_BASE (26000), TIMEOUT (300 s
# per case), KEEP=1 keeps the work directory for inspection.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MESSAGES=${MESSAGES:-10000}
CONCURRENCY=${CONCURRENCY:-20}
PORT_BASE=${PORT_BASE:-26000}
TIMEOUT=${TIMEOUT:-300}
BODY_BYTES=10240

POSTFIX_PORT=$((PORT_BASE + 25))
POSTFIX_SINK=$((PORT_BASE + 26))
RELAY_PORT=$((PORT_BASE + 125))
RELAY_SINK=$((PORT_BASE + 126))

. loadtest/lib.sh
[ "$(id -u)" = 0 ] || die "run as root: a Postfix instance's master process must start as root"

if ! command -v postfix >/dev/null || ! command -v smtp-source >/dev/null; then
    echo "== installing postfix from Debian (the system service is not started)"
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postfix >/dev/null
fi

echo "== building release binaries"
cargo build --release --locked -q -p amtp-relay -p amtp-loadtest
RELAY_BIN=$PWD/target/release/amtp-relay
LOAD_BIN=$PWD/target/release/amtp-loadtest

WORK=$(mktemp -d /tmp/amtp-compare.XXXXXX)
PIDS=()
cleanup() {
    postfix -c "$WORK/postfix/etc" stop >/dev/null 2>&1 || true
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# ---- Postfix: a throwaway instance with its own config directory ----
PF=$WORK/postfix
mkdir -p "$PF/etc" "$PF/queue" "$PF/data"
# Postfix's daemons run as user postfix: they must reach the queue, and own the data directory.
chmod 755 "$WORK" "$PF"
chown postfix "$PF/data"
cat > "$PF/etc/main.cf" <<CONF
compatibility_level = 3.6
config_directory = $PF/etc
queue_directory = $PF/queue
data_directory = $PF/data
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = $PF/maillog
maillog_file_prefixes = $PF
myhostname = postfix.load.test
mydomain = load.test
myorigin = \$myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = sink.load.test
relayhost = [127.0.0.1]:$POSTFIX_SINK
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_tls_security_level = none
default_destination_concurrency_limit = $CONCURRENCY
default_process_limit = 200
CONF
cat > "$PF/etc/master.cf" <<CONF
127.0.0.1:$POSTFIX_PORT inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
CONF

# ---- amtp-relay: the equivalent relay job ----
AR=$WORK/amtp-relay
mkdir -p "$AR"
# Delivery needs trust anchors for outbound AMTP (check-config refuses it otherwise); this job
# only delivers over plain SMTP to the sink, so a throwaway CA does.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=compare \
    -keyout "$AR/ca-key.pem" -out "$AR/ca.pem" 2>/dev/null || die "openssl could not make a CA"
cat > "$AR/relay.toml" <<CONF
[server]
hostname = "relay.load.test"
data_dir = "data"
local_domains = ["sink.load.test"]

[tls]
generate_dev_certificate = true

[logging]
level = "warn"

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
port = $RELAY_SINK
protocol = "smtp"
tls = "none"
CONF

echo "== starting Postfix $(postconf -c "$PF/etc" -h mail_version) from $PF/etc"
postfix -c "$PF/etc" start >/dev/null 2>&1 || { cat "$PF/maillog" 2>/dev/null; die "postfix did not start"; }
wait_port "$POSTFIX_PORT"
echo "== starting amtp-relay from $AR/relay.toml"
(cd "$AR" && exec "$RELAY_BIN" serve --config relay.toml) > "$AR/relay.log" 2>&1 &
PIDS+=($!)
wait_port "$RELAY_PORT"

now() { date +%s.%N; }

# run_case NAME SINK_PORT TARGET_PORT INJECTOR  → prints "NAME seconds messages/s"
run_case() {
    local name=$1 sink_port=$2 target_port=$3 injector=$4
    local file=$WORK/${name//\//_}
    "$LOAD_BIN" sink --listen "127.0.0.1:$sink_port" --messages "$MESSAGES" \
        --duration "${TIMEOUT}s" --json > "$file.sink.json" 2> "$file.sink.log" &
    local sink_pid=$!
    PIDS+=("$sink_pid")
    wait_port "$sink_port"
    kill -0 "$sink_pid" 2>/dev/null || { cat "$file.sink.log" >&2; die "$name: the sink did not start"; }
    local start; start=$(now)
    case $injector in
        smtp-source)
            timeout "$TIMEOUT" smtp-source -d -s "$CONCURRENCY" -m "$MESSAGES" -l "$BODY_BYTES" \
                -f loadtest@load.test -t u@sink.load.test -M loadtest.load.test \
                "127.0.0.1:$target_port" > "$file.inject.log" 2>&1 \
                || { cat "$file.inject.log" >&2; die "$name: smtp-source failed"; } ;;
        amtp-loadtest)
            "$LOAD_BIN" blast --target "127.0.0.1:$target_port" --connections "$CONCURRENCY" \
                --messages "$MESSAGES" --messages-per-connection 1000 --size "$BODY_BYTES" \
                --duration "${TIMEOUT}s" --label "$name" --json > "$file.blast.json" \
                || die "$name: amtp-loadtest blast failed" ;;
    esac
    local injected; injected=$(now)
    # The sink exits by itself once it has every message (or after TIMEOUT).
    wait "$sink_pid" || true
    local done_at; done_at=$(now)
    local received
    received=$(grep -o '"messages": [0-9]*' "$file.sink.json" | grep -o '[0-9]*$' || echo 0)
    [ "$received" = "$MESSAGES" ] || echo "warning: $name: the sink received $received of $MESSAGES" >&2
    awk -v n="$received" -v s="$start" -v i="$injected" -v d="$done_at" -v name="$name" \
        'BEGIN { printf "%-28s %8d %10.2f %12.1f %12.1f\n", name, n, d - s, n / (i - s), n / (d - s) }'
}

echo
echo "== $MESSAGES messages of 10 KB, $CONCURRENCY sessions, relay -> sink on loopback"
printf "%-28s %8s %10s %12s %12s\n" "case" "messages" "seconds" "accepted/s" "end-to-end/s"
RESULTS=$WORK/results.txt
for injector in smtp-source amtp-loadtest; do
    # Not in a pipeline: run_case must run in this shell so cleanup can see its sink.
    run_case "postfix/$injector" "$POSTFIX_SINK" "$POSTFIX_PORT" "$injector" >> "$RESULTS"
    tail -1 "$RESULTS"
    run_case "amtp-relay/$injector" "$RELAY_SINK" "$RELAY_PORT" "$injector" >> "$RESULTS"
    tail -1 "$RESULTS"
done
echo
awk '{ rate[$1] = $5 }
     END {
       split("smtp-source amtp-loadtest", injectors, " ")
       for (k = 1; k <= 2; k++) {
         i = injectors[k]; p = rate["postfix/" i]; a = rate["amtp-relay/" i]
         if (p > 0) printf "ratio amtp-relay / Postfix, driven by %-14s %.2fx (%.1f vs %.1f messages/s end to end)\n", i ":", a / p, a, p
       }
     }' "$RESULTS"
