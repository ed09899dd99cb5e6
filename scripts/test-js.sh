#!/usr/bin/env bash
# The JavaScript client's checks (`make test-js`, part of `make test`):
#   1. the node --test suite of clients/js against a real gateway;
#   2. the demo page in headless Chromium (Debian's /usr/bin/chromium, driven
#      by playwright-core; no browser is downloaded), screenshot in
#      target/browser/demo.png;
#   3. the admin page in headless Chromium against a real cluster (Redis, the
#      presence service, two gateways), screenshot in target/admin-screenshot.png.
# Needs the debug gateway and presence service (`make build`;
# $ROOMCAST_GATEWAY_BIN and $ROOMCAST_PRESENCE_BIN override their paths),
# Node.js >= 20.10 with npm; installs Chromium and redis-server (apt) and the
# npm devDependencies (npm ci) when they are missing. Every step is
# time-bounded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export ROOMCAST_GATEWAY_BIN=${ROOMCAST_GATEWAY_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/roomcast-gateway}
export ROOMCAST_PRESENCE_BIN=${ROOMCAST_PRESENCE_BIN:-$(dirname "$ROOMCAST_GATEWAY_BIN")/roomcast-presence}
for bin in "$ROOMCAST_GATEWAY_BIN" "$ROOMCAST_PRESENCE_BIN"; do
    if [ ! -x "$bin" ]; then
        echo "test-js: $bin missing; run make build" >&2
        exit 1
    fi
done

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "test-js: node and npm are needed (Node.js >= 20.10)" >&2
    exit 1
fi
# --experimental-websocket (a global WebSocket) exists from Node 20.10 on.
if ! node --experimental-websocket -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null \
    && ! node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null; then
    echo "test-js: node $(node --version) has no WebSocket; Node.js >= 20.10 is needed" >&2
    exit 1
fi

scripts/deps.sh chromium
scripts/deps.sh redis

# The npm devDependencies (playwright-core), from the committed lock file.
(
    cd clients/js
    if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
        echo "test-js: npm ci"
        PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 timeout 300 npm ci --no-audit --no-fund --loglevel=error
    fi
)

NODE_FLAGS=(--experimental-websocket)
node --disable-warning=ExperimentalWarning -e '' 2>/dev/null && NODE_FLAGS+=(--disable-warning=ExperimentalWarning)

echo "test-js: client suite against a real gateway"
timeout 300 node "${NODE_FLAGS[@]}" --test --test-timeout=60000 clients/js/test/client.test.mjs

echo "test-js: demo page in headless Chromium"
timeout 300 node --test --test-timeout=180000 clients/js/test-browser/demo.test.mjs
echo "test-js: screenshot in target/browser/demo.png"

echo "test-js: admin page in headless Chromium against a two-node cluster"
timeout 300 node "${NODE_FLAGS[@]}" --test --test-timeout=180000 clients/js/test-browser/admin.test.mjs
echo "test-js: screenshot in target/admin-screenshot.png"
