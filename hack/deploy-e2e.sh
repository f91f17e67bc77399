#!/usr/bin/env bash
# vmlet as users deploy it, end to end (issue 22), the last part of `make test` (hack/test.sh):
# 1. `make images`: every image built offline with BuildKit (cached), run read-only as non-root
#    and stopped with SIGTERM (hack/images.sh, hack/images/verify.sh);
# 2. docker-compose.yml for real against make up's control plane (hack/compose-e2e.sh);
# 3. a real worker node (kubelet, containerd, runc) running k8s/overlays/memory and vsphere
#    (hack/worker-e2e.sh).
# Each step tears down what it started and checks that nothing is left. All three run even when
# one fails; the exit status is 1 when any failed. Needs root (the engine, containerd, netns):
# not being root fails the run, as a skip would.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
started=$SECONDS
log() { printf '[deploy-e2e %(%H:%M:%S)T %4ss] %s\n' -1 "$((SECONDS - started))" "$*" >&2; }
if [ "$(id -u)" -ne 0 ]; then
  log "FAIL: run as root (the Docker engine, containerd and network namespaces need it)"
  exit 1
fi
failed=()
run() {  # run NAME COMMAND...
  local name=$1 t0=$SECONDS
  shift
  log "== $name"
  if "$@"; then
    log "== $name passed in $((SECONDS - t0)) s"
  else
    log "== $name FAILED after $((SECONDS - t0)) s"
    failed+=("$name")
  fi
}
# The engine stays up across the three steps (each stops only an engine it started itself).
engine=$(bash hack/images/dockerd.sh start) || { log "FAIL: no Docker engine"; exit 1; }
[ "$engine" = started ] && trap 'bash hack/images/dockerd.sh stop' EXIT
run images bash hack/images.sh
# The two runs below use the images just built instead of building them again (when it passed).
[ ${#failed[@]} -eq 0 ] && export VMLET_IMAGES_FRESH=1
run compose bash hack/compose-e2e.sh
run worker bash hack/worker-e2e.sh
if [ ${#failed[@]} -gt 0 ]; then
  log "FAILED: ${failed[*]} (after $((SECONDS - started)) s)"
  exit 1
fi
log "all passed in $((SECONDS - started)) s"
