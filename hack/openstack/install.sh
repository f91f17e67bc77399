#!/usr/bin/env bash
# Installs the real OpenStack that vmlet's tests and `make up IAAS=openstack` run against:
# Keystone, Placement, Glance, Neutron, Nova and Cinder of one release, from PyPI, into their own
# virtualenv outside the repo (keyed by release, never the workspace venv), plus Debian's
# rabbitmq-server and mariadb-server (each env runs private instances of both). Every project's
# database schema is migrated here once, into a MariaDB data dir each start copies.
# Idempotent: a warm run checks a stamp and returns in about a second.
# Prints the virtualenv's path on stdout; progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
OS_RELEASE=2025.2  # as requirements.txt and vmlet_localenv.openstack.OPENSTACK_RELEASE
CACHE="${VMLET_CACHE:-$HOME/.cache/vmlet}"
PY="${PYTHON:-python3}"
VENV="${VMLET_OPENSTACK_VENV:-$CACHE/openstack-$OS_RELEASE}"
REQS="$here/requirements.txt"
STAMP="$VENV/.vmlet-installed"
log() { printf '[openstack-install %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

want_stamp() {
  # What a finished install records: the release, the pins and the interpreter it was built for.
  # New pins (a service added to requirements.txt) change it, so an existing venv is brought up
  # to date in place: uv installs what is missing or differs, and the schema template is rebuilt.
  { echo "release=$OS_RELEASE bytecode=1"; sha256sum < "$REQS" | cut -d' ' -f1; "$PY" -c 'import sys; print(sys.version)'; }
}

need_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; exit 1
  fi
}

install_debian_packages() {
  # RabbitMQ for the message queue, MariaDB for the databases: each env runs its own private
  # instance of both, so the system services are neither started nor used.
  local want=()
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || want+=(rabbitmq-server)
  [ -x /usr/sbin/mariadbd ] || want+=(mariadb-server mariadb-client)
  [ ${#want[@]} -eq 0 ] && return 0
  log "installing Debian's ${want[*]} (the system services are not started)"
  export DEBIAN_FRONTEND=noninteractive
  # A policy-rc.d that says no keeps the packages from starting system-wide servers.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    need_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy"; made_policy=1
  fi
  if ! need_root apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null; then
    need_root apt-get update -qq
    need_root apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
  fi
  [ "$made_policy" = 1 ] && need_root rm -f "$policy"
  log "installed ${want[*]}"
}

install_venv() {
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(want_stamp)" ]; then return 0; fi
  local t0=$SECONDS uv
  uv=$(bash "$here/../uv.sh")
  log "creating the OpenStack $OS_RELEASE virtualenv at $VENV"
  rm -f "$STAMP"
  "$uv" venv --quiet --allow-existing --python "$PY" "$VENV"
  log "installing $(grep -c '^[a-zA-Z]' "$REQS") pinned packages from PyPI (cold: a minute or two)"
  UV_PYTHON_DOWNLOADS=never "$uv" pip install --quiet --python "$VENV/bin/python" --no-deps -r "$REQS"
  # Bytecode now, once: a dozen service processes import thousands of modules at every start,
  # and without .pyc files each would compile them again (uv installs without them).
  log "compiling bytecode"
  "$VENV/bin/python" -m compileall -q -j 0 "$VENV/lib" >/dev/null || log "some files did not compile (ignored)"
  log "checking that the services are in place"
  "$VENV/bin/python" - <<'PY'
import importlib.util
for m in ("nova.wsgi.osapi_compute", "nova.virt.fake", "keystone.wsgi.api", "glance.wsgi.api",
          "placement.wsgi.api", "neutron.wsgi.api", "cinder.wsgi.api", "cinder.tests.fake_driver",
          "gunicorn.app.wsgiapp", "openstack"):
    if importlib.util.find_spec(m) is None:
        raise SystemExit(f"missing module {m}")
PY
  for b in nova-manage nova-conductor nova-scheduler nova-compute keystone-manage glance-manage \
           placement-manage neutron-db-manage cinder-manage cinder-scheduler cinder-volume gunicorn; do
    [ -x "$VENV/bin/$b" ] || { log "missing $VENV/bin/$b"; exit 1; }
  done
  want_stamp > "$STAMP"
  log "OpenStack $OS_RELEASE installed in $((SECONDS - t0))s"
}

prepare_databases() {
  # Migrates every project's schema once into a template beside the venv, so that no start
  # runs migrations (vmlet_localenv.openstack needs only the standard library for this).
  VMLET_OPENSTACK_VENV="$VENV" PYTHONPATH="$here/../../lib/localenv" \
    "$PY" -m vmlet_localenv.openstack prepare 2>&1 | sed 's/^\[openstack\]/[openstack-install]/' >&2
}

install_debian_packages
install_venv
prepare_databases
echo "$VENV"
