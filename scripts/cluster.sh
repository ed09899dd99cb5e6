#!/usr/bin/env bash
# A local roomcast cluster as plain processes (no Docker): `make cluster`.
#
#   one redis-server   redis://127.0.0.1:6390  (not 6379: a system Redis may own it;
#                                               no persistence, data lives as long as the run)
#   presence service   http://127.0.0.1:8090   (started when roomcast-presence is built)
#   three gateways     127.0.0.1:8081, :8082, :8083  (node-1, node-2, node-3)
#
# It builds the release binaries, starts everything, waits until each part is
# healthy, prints every URL and then stays in the foreground. Ctrl-C (or
# SIGTERM) stops the cluster in order: the gateways get SIGTERM and drain
# (clients are told to reconnect), then the presence service, then Redis.
# If any process dies on its own, the rest are stopped too and the script
# exits with status 1 after showing the end of the dead process's log.
#
# The gateways share a resume secret made fresh for every run, so a client
# resumes its session on any node. The API key is $ROOMCAST_API__KEY
# (default dev-key): `Authorization: Bearer dev-key` on /api.
#
# Settings (environment):
#   CLUSTER_REDIS_PORT      Redis port                (6390)
#   CLUSTER_PRESENCE_PORT   presence service port     (8090)
#   CLUSTER_GATEWAY_PORTS   gateway ports, one node each, space-separated
#                           ("8081 8082 8083"; node ids node-1, node-2, …)
#   CLUSTER_DIR             logs and Redis dir        (target/cluster)
#   CLUSTER_STOP_TIMEOUT    seconds a gateway may take to drain before it is
#                           killed                    (35; the drain itself ends
#                           within drain.timeout_ms, 30 s by default)
#   ROOMCAST_API__KEY       API key of every gateway  (dev-key)
#   ROOMCAST_…              any other setting (docs/configuration.md), passed
#                           through to every gateway and to presence (which
#                           warns about keys it does not know, and ignores them)
#   CARGO, CARGO_TARGET_DIR as for make
#
# Needs bash, coreutils and redis-server/redis-cli (installed with
# `scripts/deps.sh redis` when missing). A system Redis on 6379 is never used.
#
# Logs: $CLUSTER_DIR/redis.log, presence.log, gateway-1.log, … (rewritten each run).
#
# Examples:
#   make cluster
#   CLUSTER_GATEWAY_PORTS="9001 9002" ROOMCAST_API__KEY=secret scripts/cluster.sh
#   tail -f target/cluster/gateway-*.log
set -euo pipefail
# Every child in its own process group: Ctrl-C reaches only this script,
# which then stops the children in order (gateways first, Redis last).
set -m
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO=${CARGO:-cargo}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
REDIS_PORT=${CLUSTER_REDIS_PORT:-6390}
PRESENCE_PORT=${CLUSTER_PRESENCE_PORT:-8090}
read -r -a GATEWAY_PORTS <<<"${CLUSTER_GATEWAY_PORTS:-8081 8082 8083}"
RUN_DIR=${CLUSTER_DIR:-$TARGET_DIR/cluster}
STOP_TIMEOUT=${CLUSTER_STOP_TIMEOUT:-35}
API_KEY=${ROOMCAST_API__KEY:-dev-key}
HOST=127.0.0.1

say() { echo "cluster: $*"; }
die() {
    echo "cluster: $*" >&2
    exit 1
}

[ "${#GATEWAY_PORTS[@]}" -ge 1 ] || die "CLUSTER_GATEWAY_PORTS names no port"

# --- tools and binaries --------------------------------------------------------

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    say "redis-server/redis-cli missing; installing"
    scripts/deps.sh redis
fi

packages=(roomcast-gateway)
# The presence service is built and started when the workspace has it.
if $CARGO pkgid -q roomcast-presence >/dev/null 2>&1; then
    packages+=(roomcast-presence)
fi
say "building ${packages[*]} (release)"
$CARGO build --release "${packages[@]/#/--package=}"
GATEWAY_BIN=$TARGET_DIR/release/roomcast-gateway
PRESENCE_BIN=$TARGET_DIR/release/roomcast-presence
[ -x "$GATEWAY_BIN" ] || die "$GATEWAY_BIN was not built"

# --- helpers -------------------------------------------------------------------

# True if something accepts connections on the port.
port_busy() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null
}

# True if GET path on the port answers 200.
http_ok() {
    local status
    status=$(timeout 2 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: %s:%s\r\n\r\n" "$2" "$0" "$1" >&3
        head -n 1 <&3' "$HOST" "$1" "$2" 2>/dev/null) || return 1
    [[ $status == "HTTP/1."?" 200"* ]]
}

# wait_for NAME PID SECONDS CHECK...: runs CHECK every 0.1 s until it succeeds;
# fails (showing the log) if the process exits or time runs out.
wait_for() {
    local name=$1 pid=$2 seconds=$3
    shift 3
    local tries=$((seconds * 10))
    while ! "$@"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log "$name"
            die "$name exited at startup"
        fi
        tries=$((tries - 1))
        if [ "$tries" -le 0 ]; then
            show_log "$name"
            die "$name not ready within ${seconds}s"
        fi
        sleep 0.1
    done
}

show_log() {
    echo "--- last lines of $RUN_DIR/$1.log ---" >&2
    tail -n 30 "$RUN_DIR/$1.log" >&2 || true
}

# await_exit NAME PID SECONDS: waits up to SECONDS for an already signalled
# process, then SIGKILLs it. (A second SIGTERM would make a gateway skip its
# drain, so the signal is sent once, by the caller.)
await_exit() {
    local name=$1 pid=$2 seconds=$3
    local tries=$((seconds * 10))
    while kill -0 "$pid" 2>/dev/null && [ "$tries" -gt 0 ]; do
        sleep 0.1
        tries=$((tries - 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name did not stop within ${seconds}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# stop_process NAME PID SECONDS: SIGTERM, then await_exit.
stop_process() {
    kill -TERM "$2" 2>/dev/null || true
    await_exit "$@"
}

# --- shutdown ------------------------------------------------------------------

REDIS_PID=""
PRESENCE_PID=""
GATEWAY_PIDS=()
STOPPED=0

shutdown() {
    [ "$STOPPED" -eq 1 ] && return 0
    STOPPED=1
    trap '' INT TERM
    [ -n "$REDIS_PID" ] || return 0
    say "stopping: gateways drain first"
    local pid
    for pid in "${GATEWAY_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    local i
    for i in "${!GATEWAY_PIDS[@]}"; do
        await_exit "gateway-$((i + 1))" "${GATEWAY_PIDS[$i]}" "$STOP_TIMEOUT"
    done
    [ -n "$PRESENCE_PID" ] && stop_process presence "$PRESENCE_PID" 10
    [ -n "$REDIS_PID" ] && stop_process redis "$REDIS_PID" 10
    say "stopped (logs in $RUN_DIR)"
}

on_signal() {
    echo
    shutdown
    exit 0
}
trap on_signal INT TERM
trap shutdown EXIT

# --- start ---------------------------------------------------------------------

for port in "$REDIS_PORT" "${GATEWAY_PORTS[@]}" \
    $([ -x "$PRESENCE_BIN" ] && echo "$PRESENCE_PORT"); do
    ! port_busy "$port" || die "port $port on $HOST is in use (a cluster still running? see CLUSTER_*_PORT)"
done

mkdir -p "$RUN_DIR/redis"
rm -f "$RUN_DIR"/*.log
REDIS_URL=redis://$HOST:$REDIS_PORT

redis-server --port "$REDIS_PORT" --bind "$HOST" --save "" --appendonly no \
    --dir "$RUN_DIR/redis" >"$RUN_DIR/redis.log" 2>&1 </dev/null &
REDIS_PID=$!
redis_ok() { [ "$(timeout 2 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }
wait_for redis "$REDIS_PID" 10 redis_ok
say "redis up (pid $REDIS_PID)"

PRESENCE_URL=""
if [ -x "$PRESENCE_BIN" ]; then
    # ROOMCAST_API__KEY is a gateway key (make exports it): keep it away from
    # presence, which would warn about an unknown key.
    env -u ROOMCAST_API__KEY ROOMCAST_LISTEN="$HOST:$PRESENCE_PORT" ROOMCAST_REDIS__URL="$REDIS_URL" \
        "$PRESENCE_BIN" >"$RUN_DIR/presence.log" 2>&1 </dev/null &
    PRESENCE_PID=$!
    wait_for presence "$PRESENCE_PID" 30 http_ok "$PRESENCE_PORT" /healthz
    PRESENCE_URL=http://$HOST:$PRESENCE_PORT
    say "presence up (pid $PRESENCE_PID)"
else
    say "roomcast-presence is not built here; gateways run without the presence service"
fi

# Letters in front, so the value never reads as a number (see configuration.md).
RESUME_SECRET="cluster-$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

for i in "${!GATEWAY_PORTS[@]}"; do
    n=$((i + 1))
    env ROOMCAST_LISTEN="$HOST:${GATEWAY_PORTS[$i]}" \
        ROOMCAST_NODE__ID="node-$n" \
        ROOMCAST_REDIS__URL="$REDIS_URL" \
        ${PRESENCE_URL:+ROOMCAST_PRESENCE__URL="$PRESENCE_URL"} \
        ROOMCAST_AUTH__RESUME_SECRET="$RESUME_SECRET" \
        ROOMCAST_API__KEY="$API_KEY" \
        "$GATEWAY_BIN" >"$RUN_DIR/gateway-$n.log" 2>&1 </dev/null &
    GATEWAY_PIDS+=($!)
done
for i in "${!GATEWAY_PORTS[@]}"; do
    wait_for "gateway-$((i + 1))" "${GATEWAY_PIDS[$i]}" 30 http_ok "${GATEWAY_PORTS[$i]}" /healthz
done

# --- running -------------------------------------------------------------------

echo
echo "roomcast local cluster (logs in $RUN_DIR)"
for i in "${!GATEWAY_PORTS[@]}"; do
    base=$HOST:${GATEWAY_PORTS[$i]}
    echo "  node-$((i + 1))  WebSocket ws://$base/ws"
    echo "          HTTP API  http://$base/api  (Authorization: Bearer $API_KEY)"
    echo "          health    http://$base/healthz  http://$base/readyz  metrics http://$base/metrics"
done
if [ -n "$PRESENCE_URL" ]; then
    echo "  presence         $PRESENCE_URL  (health $PRESENCE_URL/healthz, metrics $PRESENCE_URL/metrics)"
fi
echo "  redis            $REDIS_URL"
echo "  Ctrl-C drains the gateways and stops everything."
echo

# Stay in the foreground; stop everything if any process dies by itself.
names=(redis)
pids=("$REDIS_PID")
if [ -n "$PRESENCE_PID" ]; then
    names+=(presence)
    pids+=("$PRESENCE_PID")
fi
for i in "${!GATEWAY_PIDS[@]}"; do
    names+=("gateway-$((i + 1))")
    pids+=("${GATEWAY_PIDS[$i]}")
done
while true; do
    for i in "${!pids[@]}"; do
        if ! kill -0 "${pids[$i]}" 2>/dev/null; then
            show_log "${names[$i]}"
            die "${names[$i]} exited by itself; stopping the cluster"
        fi
    done
    # A background sleep, so a signal interrupts `wait` at once.
    sleep 1 &
    wait $! || true
done
