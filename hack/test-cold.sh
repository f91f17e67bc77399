#!/usr/bin/env bash
# `make test-cold`: proves that set-up and tests need nothing from an earlier run. Runs `make test`
# with VMLET_CACHE pointing at an empty directory and Go's and uv's caches inside it, and prints the
# wall time of the set-up and of the whole run. The directory is a new temporary one, removed
# afterwards; COLD_CACHE=DIR names one to fill and keep instead (it must be empty or absent), e.g.
# COLD_CACHE=~/.cache/vmlet on a new machine, so that later runs start warm.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${COLD_CACHE:-}" ]; then
  cold=$COLD_CACHE
  if [ -e "$cold" ] && [ -n "$(ls -A "$cold")" ]; then
    echo "COLD_CACHE=$cold is not empty: a cold run needs an empty cache" >&2
    exit 2
  fi
  mkdir -p "$cold"
else
  cold=$(mktemp -d "${TMPDIR:-/tmp}/vmlet-cold-XXXXXX")
  # Go makes its module cache read-only.
  trap 'chmod -R u+w "$cold"; rm -rf "$cold"' EXIT
fi
export VMLET_CACHE="$cold" GOMODCACHE="$cold/go/mod" GOCACHE="$cold/go/build" GOPATH="$cold/go" \
  UV_CACHE_DIR="$cold/uv-cache" VMLET_SETUP=all  # everything `make test` runs against
unset UV_PROJECT_ENVIRONMENT
echo "== cold run: VMLET_CACHE=$cold"
t0=$SECONDS
make --no-print-directory setup CACHE="$cold" || exit 1
setup_s=$((SECONDS - t0))
echo "== cold set-up took ${setup_s} s"
make --no-print-directory test CACHE="$cold"
rc=$?
echo "== cold run: set-up ${setup_s} s, whole run $((SECONDS - t0)) s, exit $rc"
exit $rc
