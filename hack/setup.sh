#!/usr/bin/env bash
# One-command set-up: uv (from PyPI, into the cache), the workspace virtualenv (outside the repo,
# keyed by Python version), and the Go-built peers (hack/build-tools.sh). Idempotent and fast when warm.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${VMLET_CACHE:-$HOME/.cache/vmlet}"
PY="${PYTHON:-python3}"
pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
VENV="${UV_PROJECT_ENVIRONMENT:-$CACHE/venv-py$pyver}"
log() { printf '[setup %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

UV=$(bash hack/uv.sh)
log "syncing the workspace virtualenv at $VENV"
export UV_PROJECT_ENVIRONMENT="$VENV" UV_PYTHON="$PY" UV_PYTHON_DOWNLOADS=never
"$UV" sync --locked --all-packages --quiet
bash hack/build-tools.sh all
bash hack/build-tools.sh kubectl-into "$VENV/bin"
bash hack/openstack/install.sh >/dev/null
echo "$VENV"
