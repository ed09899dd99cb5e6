#!/usr/bin/env bash
# Finds or installs the tools `make test` needs that do not come with Rust:
# cargo-nextest (the test runner) and the Python venv of tests/python.
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

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "deps: installing cargo-nextest $NEXTEST_VERSION"
    cargo install --locked cargo-nextest --version "$NEXTEST_VERSION"
fi

command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv

scripts/python-venv.sh >/dev/null
echo "deps: ok"
