#!/usr/bin/env bash
# Installs Debian packages with apt, as root or through sudo, updating the lists only when the
# first try fails (hack/images/install-deps.sh and hack/worker/install-deps.sh, which decide
# what is missing):
#   bash hack/lib/apt-install.sh LOG_PREFIX PACKAGE...
set -euo pipefail
prefix="${1:?usage: $0 LOG_PREFIX PACKAGE...}"
shift
log() { printf '[%s %(%H:%M:%S)T] %s\n' "$prefix" -1 "$*" >&2; }
if ! command -v apt-get >/dev/null 2>&1; then
  log "missing $* and no apt-get: install them by hand"
  exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { log "missing $*, not root and no sudo"; exit 1; }
  SUDO=(sudo -n)
fi
log "installing $*"
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get install -y --no-install-recommends "$@" >/dev/null; then
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y --no-install-recommends "$@" >/dev/null
fi
