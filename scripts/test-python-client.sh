#!/usr/bin/env bash
# The Python client's checks (`make test-python-client`, part of `make test`):
#   1. builds the wheel of clients/python (hatchling, no build isolation) into
#      $TARGET/python-client/;
#   2. installs it into the venv .venv-pyclient (made by scripts/python-venv.sh
#      from the pinned clients/python/tests/requirements.txt) and checks that
#      its dependencies are satisfied (pip check);
#   3. runs clients/python/tests against the installed package and real
#      processes: gateways (in-memory and clustered), roomcast-presence and
#      redis-server, all on 127.0.0.1.
# Needs the debug gateway and presence service (`make build`;
# $ROOMCAST_GATEWAY_BIN and $ROOMCAST_PRESENCE_BIN override their paths);
# installs redis-server (scripts/deps.sh redis) when it is missing.
# Extra arguments go to pytest (e.g. -k cluster).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=${CARGO_TARGET_DIR:-$PWD/target}
export ROOMCAST_GATEWAY_BIN=${ROOMCAST_GATEWAY_BIN:-$target/debug/roomcast-gateway}
export ROOMCAST_PRESENCE_BIN=${ROOMCAST_PRESENCE_BIN:-$(dirname "$ROOMCAST_GATEWAY_BIN")/roomcast-presence}
for bin in "$ROOMCAST_GATEWAY_BIN" "$ROOMCAST_PRESENCE_BIN"; do
    if [ ! -x "$bin" ]; then
        echo "test-python-client: $bin missing; run make build" >&2
        exit 1
    fi
done
command -v redis-server >/dev/null 2>&1 || scripts/deps.sh redis

PY=$(ROOMCAST_VENV="${ROOMCAST_PYCLIENT_VENV:-$PWD/.venv-pyclient}" \
    ROOMCAST_VENV_REQUIREMENTS=clients/python/tests/requirements.txt scripts/python-venv.sh)

out=$target/python-client
rm -rf "$out"
timeout 120 "$PY" -m build --wheel --no-isolation --outdir "$out" clients/python >&2
wheels=("$out"/roomcast-*-py3-none-any.whl)
[ -f "${wheels[0]}" ] || { echo "test-python-client: no wheel in $out" >&2; exit 1; }
echo "test-python-client: installing ${wheels[0]##*/}" >&2
timeout 120 "$PY" -m pip install --no-input -q --no-deps --force-reinstall "${wheels[0]}"
"$PY" -m pip check >&2

cd clients/python/tests
PYTHONDONTWRITEBYTECODE=1 timeout 300 "$PY" -m pytest -q "$@"
