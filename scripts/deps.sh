#!/usr/bin/env bash
# Finds or installs the tools `make test` needs that do not come with Rust:
# cargo-nextest (the test runner), the Python venv of tests/python, and
# redis-server/redis-cli (real Redis in tests and `make cluster`); promtool on
# request (`scripts/deps.sh promtool`).
# Debian packages are installed with apt-get when missing (CI runs as root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NEXTEST_VERSION=0.9.143

apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "deps: $* missing and apt-get is not available; install it by hand" >&2
        exit 1
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

# Real Redis for the tests (the harness spawns its own servers on free ports)
# and for `make cluster`. Debian: redis-server brings redis-tools (redis-cli).
ensure_redis() {
    command -v redis-server >/dev/null 2>&1 || apt_install redis-server redis-tools
    command -v redis-cli >/dev/null 2>&1 || apt_install redis-tools
}

# `scripts/deps.sh redis`: only Redis (what `make cluster` needs).
if [ "${1:-}" = redis ]; then
    ensure_redis
    exit 0
fi

# `scripts/deps.sh chromium`: Debian's Chromium for the demo's browser test
# (scripts/test-js.sh); no browser is ever downloaded any other way.
if [ "${1:-}" = chromium ]; then
    [ -x /usr/bin/chromium ] || apt_install chromium
    exit 0
fi

# `scripts/deps.sh docker-compose`: Debian's docker-compose, which
# `make test-deploy` uses to validate docker-compose.yml (no Docker engine
# needed).
if [ "${1:-}" = docker-compose ]; then
    command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose
    exit 0
fi

# `scripts/deps.sh promtool`: Prometheus's promtool, which `make test-deploy`
# uses to check deploy/prometheus/roomcast-rules.yml. Taken from Debian's
# `prometheus` package without installing it (no server, no service, no
# user): the .deb is downloaded with apt-get and only usr/bin/promtool is
# extracted, to .tools/bin/promtool (ignored by git, removed by make clean).
if [ "${1:-}" = promtool ]; then
    [ -x .tools/bin/promtool ] && exit 0
    command -v apt-get >/dev/null 2>&1 || { echo "deps: promtool needs apt-get (Debian's prometheus package)" >&2; exit 1; }
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    if ! (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null); then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        (cd "$tmp" && apt-get download -qq prometheus)
    fi
    mkdir -p .tools/bin
    dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
    mv "$tmp/usr/bin/promtool" .tools/bin/promtool
    .tools/bin/promtool --version 2>&1 | head -1 >&2
    exit 0
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "deps: installing cargo-nextest $NEXTEST_VERSION"
    cargo install --locked cargo-nextest --version "$NEXTEST_VERSION"
fi

command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv

ensure_redis

scripts/python-venv.sh >/dev/null
echo "deps: ok"
