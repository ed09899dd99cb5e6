#!/usr/bin/env bash
# `make autobahn`: Autobahn|Testsuite's fuzzing client against a real
# gateway node in echo mode (websocket.echo_path), so that the suite tests
# the node's own WebSocket code: its upgrade handler, its yawc options, its
# outbox and writes. Writes a report (docs/conformance.md for a full run)
# and exits non-zero when any case's behaviour is not OK, NON-STRICT or
# INFORMATIONAL.
#
# Autobahn|Testsuite runs on Python 2.7 only. It is installed from PyPI
# alone, once, into .tools/autobahn/venv (ignored by git, kept between
# runs): a virtualenv made by PyPI's virtualenv<20.22 (the last that makes
# Python 2 environments) from pyenv's Python 2.7.18, then the suite with the
# exact pins of its egg-info/requires.txt (Twisted 19.10.0, autobahn 0.10.9,
# ...). Without pyenv's 2.7.18 the script says so and exits 1.
#
# Variables:
#   AUTOBAHN_CASES    cases to run, comma-separated patterns ("1.*,9.1.*");
#                     default: every case ("*")
#   AUTOBAHN_EXCLUDE  cases left out, the same way (default: none)
#   AUTOBAHN_PROFILE  debug (default) or release: which gateway build
#   AUTOBAHN_NO_BUILD 1: do not run cargo build (the binary must exist)
#   AUTOBAHN_DOC      report to write; default docs/conformance.md for a
#                     full run, $TARGET/autobahn/<name>/conformance.md else
#   AUTOBAHN_OUT      folder for the spec, wstest's reports and the node's log
#                     (default $TARGET/autobahn/full or .../subset)
#   AUTOBAHN_MAX_MESSAGE_BYTES  the node's message limit (default 16 MiB,
#                     the largest message of cases 9.*)
# Any other ROOMCAST_* variable reaches the node.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd)"

SUITE_VERSION=25.10.1
CARGO="${CARGO:-cargo}"
TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
PROFILE="${AUTOBAHN_PROFILE:-debug}"
CASES="${AUTOBAHN_CASES:-*}"
EXCLUDE="${AUTOBAHN_EXCLUDE:-}"
MAX_MESSAGE="${AUTOBAHN_MAX_MESSAGE_BYTES:-16777216}"
if [ "$CASES" = "*" ] && [ -z "$EXCLUDE" ]; then
    run_name=full
    doc_default="$root/docs/conformance.md"
else
    run_name=subset
    doc_default="$TARGET_DIR/autobahn/subset/conformance.md"
fi
OUT="${AUTOBAHN_OUT:-$TARGET_DIR/autobahn/$run_name}"
DOC="${AUTOBAHN_DOC:-$doc_default}"
TOOLS="$root/.tools/autobahn"
VENV="$TOOLS/venv"
STAMP="$VENV/.autobahntestsuite-$SUITE_VERSION"

say() { echo "autobahn: $*" >&2; }

# ---- Autobahn|Testsuite, from PyPI only -------------------------------
install_suite() {
    if [ -x "$VENV/bin/wstest" ] && [ -f "$STAMP" ]; then
        return
    fi
    local pyenv_root py27
    if ! command -v pyenv >/dev/null 2>&1; then
        say "missing: pyenv. Autobahn|Testsuite needs Python 2.7.18 as pyenv installs it"
        say "(\$(pyenv root)/versions/2.7.18/bin/python2.7); install pyenv, then 'pyenv install 2.7.18'."
        exit 1
    fi
    pyenv_root="$(pyenv root)"
    py27="$pyenv_root/versions/2.7.18/bin/python2.7"
    if [ ! -x "$py27" ]; then
        say "missing: $py27"
        say "Autobahn|Testsuite runs on Python 2.7 only; 'pyenv install 2.7.18' provides it."
        exit 1
    fi
    command -v python3 >/dev/null 2>&1 || { say "missing: python3 (to run virtualenv)"; exit 1; }
    # Packages come from the package index alone, never from a local folder
    # of wheels a pip setting may name.
    unset PIP_FIND_LINKS PIP_NO_INDEX
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    say "installing Autobahn|Testsuite $SUITE_VERSION into $VENV (from PyPI, once)"
    rm -rf "$VENV" "$TOOLS/bootstrap" "$TOOLS/sdist"
    mkdir -p "$TOOLS/sdist"
    python3 -m venv "$TOOLS/bootstrap"
    "$TOOLS/bootstrap/bin/pip" install -q 'virtualenv<20.22'
    "$TOOLS/bootstrap/bin/virtualenv" -q -p "$py27" "$VENV"
    "$VENV/bin/pip" download -q --no-deps --no-binary :all: \
        "autobahntestsuite==$SUITE_VERSION" -d "$TOOLS/sdist" 2>/dev/null
    local sdist="$TOOLS/sdist/autobahntestsuite-$SUITE_VERSION.tar.gz"
    tar -xzf "$sdist" -C "$TOOLS/sdist" \
        "autobahntestsuite-$SUITE_VERSION/autobahntestsuite.egg-info/requires.txt"
    cp "$TOOLS/sdist/autobahntestsuite-$SUITE_VERSION/autobahntestsuite.egg-info/requires.txt" \
        "$TOOLS/requires.txt"
    "$VENV/bin/pip" install -q -r "$TOOLS/requires.txt" 2>/dev/null
    "$VENV/bin/pip" install -q --no-deps "$sdist" 2>/dev/null
    "$VENV/bin/wstest" --autobahnversion >/dev/null
    "$VENV/bin/pip" freeze 2>/dev/null | grep -v '^-' >"$TOOLS/installed.txt"
    rm -rf "$TOOLS/bootstrap"
    touch "$STAMP"
}

install_suite

# ---- the node ----------------------------------------------------------
if [ "${AUTOBAHN_NO_BUILD:-}" != 1 ]; then
    if [ "$PROFILE" = release ]; then
        "$CARGO" build --release -p roomcast-gateway
    else
        "$CARGO" build -p roomcast-gateway
    fi
fi
gateway="$TARGET_DIR/$PROFILE/roomcast-gateway"
[ -x "$gateway" ] || { say "$gateway was not built"; exit 1; }

rm -rf "$OUT"
mkdir -p "$OUT"
log="$OUT/gateway.log"
echo_path=/autobahn
# The limits a 16 MiB message (cases 9.*) would otherwise hit: the message
# size (read side), the outbound queue's bytes (the echo is queued whole)
# and the rate of 1,000 messages sent back to back (9.7, 9.8).
node_env=(
    ROOMCAST_LISTEN=127.0.0.1:0
    ROOMCAST_WEBSOCKET__ECHO_PATH="$echo_path"
    ROOMCAST_LIMITS__MAX_MESSAGE_BYTES="$MAX_MESSAGE"
    ROOMCAST_LIMITS__OUTBOUND_QUEUE_BYTES=$((MAX_MESSAGE * 2 + 1048576))
    ROOMCAST_LIMITS__MESSAGES_PER_SECOND=1000000
    ROOMCAST_LIMITS__MESSAGE_BURST=1000000
    ROOMCAST_LOG__LEVEL="${ROOMCAST_LOG__LEVEL:-info}"
)
env "${node_env[@]}" "$gateway" >"$log" 2>&1 &
node_pid=$!
cleanup() {
    kill "$node_pid" 2>/dev/null || true
    wait "$node_pid" 2>/dev/null || true
}
trap cleanup EXIT

addr=""
for _ in $(seq 1 400); do
    addr="$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$log" | head -1)"
    [ -n "$addr" ] && break
    kill -0 "$node_pid" 2>/dev/null || { cat "$log" >&2; say "the gateway exited at startup"; exit 1; }
    sleep 0.05
done
[ -n "$addr" ] || { cat "$log" >&2; say "the gateway did not report its address"; exit 1; }
url="ws://$addr$echo_path"
say "gateway ($PROFILE build) in echo mode at $url"

# ---- the suite ---------------------------------------------------------
patterns() { python3 -c 'import json,sys; print(json.dumps([c.strip() for c in sys.argv[1].split(",") if c.strip()]))' "$1"; }
cat >"$OUT/spec.json" <<EOF
{
  "outdir": "$OUT/reports/servers",
  "servers": [{"agent": "roomcast", "url": "$url"}],
  "cases": $(patterns "$CASES"),
  "exclude-cases": $(patterns "$EXCLUDE"),
  "exclude-agent-cases": {}
}
EOF

say "wstest -m fuzzingclient: cases $CASES${EXCLUDE:+, excluding $EXCLUDE}"
started_ms="$(date +%s%3N)"
(cd "$OUT" && "$VENV/bin/wstest" -m fuzzingclient -s spec.json) >"$OUT/wstest.log" 2>&1 || {
    tail -30 "$OUT/wstest.log" >&2
    say "wstest failed (log: $OUT/wstest.log)"
    exit 1
}
finished_ms="$(date +%s%3N)"
alive=yes
kill -0 "$node_pid" 2>/dev/null || alive=no

command_line="make autobahn"
[ "$run_name" = subset ] && command_line="AUTOBAHN_CASES='$CASES'${EXCLUDE:+ AUTOBAHN_EXCLUDE='$EXCLUDE'} scripts/autobahn.sh"
python3 scripts/autobahn-report.py \
    --index "$OUT/reports/servers/index.json" \
    --doc "$DOC" \
    --command "$command_line" \
    --profile "$PROFILE" \
    --cases "$CASES" \
    --exclude "$EXCLUDE" \
    --millis "$((finished_ms - started_ms))" \
    --node-alive "$alive" \
    --node-env "$(printf '%s\n' "${node_env[@]}")" \
    --suite "$(tr '\n' ' ' <"$TOOLS/installed.txt" 2>/dev/null || true)" \
    --suite-version "$SUITE_VERSION"
