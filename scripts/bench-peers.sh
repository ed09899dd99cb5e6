#!/usr/bin/env bash
# The peer servers `make bench` compares roomcast with (bench/peers):
#   1. Socket.IO 4.8 + @socket.io/redis-adapter: its npm packages, installed
#      with `npm ci` from the committed package-lock.json (only when the lock
#      file is newer than what is installed);
#   2. socketioxide + socketioxide-redis: a separate cargo project (not in the
#      workspace), built with --locked into $CARGO_TARGET_DIR/release
#      (target/release/socketioxide-peer by default).
# Needs Node.js >= 20 with npm, and a Rust toolchain. Every step is
# time-bounded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO=${CARGO:-cargo}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "bench-peers: node and npm are needed (Node.js >= 20)" >&2
    exit 1
fi
command -v redis-server >/dev/null 2>&1 || scripts/deps.sh redis

(
    cd bench/peers/socketio
    if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
        echo "bench-peers: npm ci (bench/peers/socketio)"
        timeout 300 npm ci --no-audit --no-fund --loglevel=error
    fi
)

echo "bench-peers: building the socketioxide peer (release)"
timeout 1200 "$CARGO" build --release --locked \
    --manifest-path bench/peers/socketioxide/Cargo.toml --target-dir "$TARGET_DIR"
[ -x "$TARGET_DIR/release/socketioxide-peer" ] || {
    echo "bench-peers: $TARGET_DIR/release/socketioxide-peer was not built" >&2
    exit 1
}
echo "bench-peers: ok"
