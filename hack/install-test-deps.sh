#!/usr/bin/env bash
# System packages the tests need that are not Python or Go: Debian's openssh-server, whose sshd
# plays the guest's SSH server in tests/test_guest_access.py and lib/contract/tests/test_guest.py,
# and in the guests `make up` gives the VMs on vcsim (vmlet_localenv.guests; make setup runs this).
# Idempotent: installs only what is missing, and only with apt (as root, or through sudo).
set -euo pipefail
log() { printf '[install-test-deps %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

if [ -x /usr/sbin/sshd ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  log "no /usr/sbin/sshd and no apt-get: install OpenSSH's server by hand; the guest-access tests skip without it"
  exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    log "no /usr/sbin/sshd, not root and no sudo: the guest-access tests will skip"
    exit 0
  fi
  SUDO=(sudo -n)
fi
log "installing openssh-server (the guests' SSH server in tests)"
export DEBIAN_FRONTEND=noninteractive
# The package's service is not wanted running: tests start their own sshd processes.
if ! "${SUDO[@]}" apt-get install -y --no-install-recommends openssh-server >/dev/null; then
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y --no-install-recommends openssh-server >/dev/null
fi
test -x /usr/sbin/sshd
log "installed $(/usr/sbin/sshd -V 2>&1 | head -1 || true)"
