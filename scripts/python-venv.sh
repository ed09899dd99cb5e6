#!/usr/bin/env bash
# Creates or updates the Python virtualenv used by the acceptance suite
# (tests/python) and prints the path of its python on stdout.
#
# Idempotent: the requirements are installed only when
# tests/python/requirements.txt (or the base interpreter) changed since the
# last successful install, recorded in a stamp file inside the venv.
#
#   scripts/python-venv.sh                      # -> /work/main/.venv/bin/python
#   ROOMCAST_VENV=/tmp/venv scripts/python-venv.sh
#   PYTHON=python3.11 scripts/python-venv.sh
#   ROOMCAST_VENV_REQUIREMENTS=path/requirements.txt   (another suite's pins)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ROOMCAST_VENV:-$root/.venv}"
# Another suite passes its own venv and requirements (scripts/deploy-venv.sh).
req="${ROOMCAST_VENV_REQUIREMENTS:-$root/tests/python/requirements.txt}"
stamp="$venv/.requirements.stamp"
base_python="${PYTHON:-python3}"

if ! command -v "$base_python" >/dev/null 2>&1; then
    echo "python-venv: $base_python not found" >&2
    exit 1
fi

# (Re)create the venv when it is missing or its interpreter no longer runs
# (for example the base Python it was made from was removed).
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "python-venv: creating $venv" >&2
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
    echo "python-venv: installing $req" >&2
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$req" >&2
    echo "$want" >"$stamp"
fi

echo "$venv/bin/python"
