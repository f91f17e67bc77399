#!/usr/bin/env bash
# One-command set-up: uv (from PyPI, into the cache), the workspace virtualenv (outside the repo,
# keyed by Python version), and the Go-built peers (hack/build-tools.sh). Idempotent and fast when warm.
# VMLET_SETUP picks what else to install: `all` (the default; `make test` needs it), or only what
# one IAAS of `make up`/`make demo` runs: `vsphere` (openssh-server, for the VMs' guests), `memory`
# (nothing more), `openstack` (the real OpenStack, hack/openstack/install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${VMLET_CACHE:-$HOME/.cache/vmlet}"
PY="${PYTHON:-python3}"
pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
VENV="${UV_PROJECT_ENVIRONMENT:-$CACHE/venv-py$pyver}"
log() { printf '[setup %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
WANT="${VMLET_SETUP:-all}"
case "$WANT" in
  all|vsphere|memory|openstack) ;;
  *) echo "VMLET_SETUP must be all, vsphere, memory or openstack, not '$WANT'" >&2; exit 2 ;;
esac

UV=$(bash hack/uv.sh)
log "syncing the workspace virtualenv at $VENV"
export UV_PROJECT_ENVIRONMENT="$VENV" UV_PYTHON="$PY" UV_PYTHON_DOWNLOADS=never
"$UV" sync --locked --all-packages --quiet
bash hack/build-tools.sh all
bash hack/build-tools.sh kubectl-into "$VENV/bin"
# openssh-server: the guests `make up` gives vcsim's VMs (vmlet_localenv.guests) run its sshd.
if [ "$WANT" = all ] || [ "$WANT" = vsphere ]; then
  bash hack/install-test-deps.sh
fi
if [ "$WANT" = all ] || [ "$WANT" = openstack ]; then
  bash hack/openstack/install.sh >/dev/null
fi
echo "$VENV"
