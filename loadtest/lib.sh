# Shared by the load-test scripts; sourced (`. loadtest/lib.sh` after the script's `cd` to
# the repository root), never run on its own.
#
#   die MSG...               print "<script>: MSG" on stderr and exit 1
#   wait_port ADDR [SECONDS] wait until something accepts connections on ADDR (`host:port`,
#                            or a port on 127.0.0.1), at most SECONDS (whole, default 10); die if
#                            nothing does
SCRIPT_NAME=$(basename "$0" .sh)

die() { echo "$SCRIPT_NAME: $*" >&2; exit 1; }

wait_port() {
    local host=127.0.0.1 port=$1
    case $1 in *:*) host=${1%:*} port=${1##*:} ;; esac
    for _ in $(seq 1 $(( ${2:-10} * 10 ))); do
        (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on $host:$port"
}
