#!/usr/bin/env bash
# Docker Compose v2 (the `docker compose` CLI plugin), built from the Go module proxy like the
# other peers (hack/build-tools.sh) into the same cache, keyed by version: Debian's docker.io has
# no compose plugin, and Debian's docker-compose 1.29 predates the Compose Specification that
# docker-compose.yml follows (top-level `name`, `service_completed_successfully`...).
#   bash hack/build-compose.sh              # builds if missing; prints the binary's path
#   bash hack/build-compose.sh plugin DIR   # also links it as DIR/cli-plugins/docker-compose:
#                                           # `DOCKER_CONFIG=DIR docker compose` then finds it
#   bash hack/build-compose.sh install      # links it into ~/.docker/cli-plugins (for `docker compose`)
# The binary carries BuildKit's client (buildx's docker driver): `docker compose build` works
# against an engine's built-in BuildKit with no buildx plugin. A warm run builds nothing.
set -euo pipefail

COMPOSE_VERSION="${COMPOSE_VERSION:-v2.40.3}"
CACHE="${VMLET_CACHE:-$HOME/.cache/vmlet}"
BIN="$CACHE/bin"
OUT="$BIN/docker-compose-$COMPOSE_VERSION"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
log() { printf '[build-compose %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
mkdir -p "$BIN"

build() {
  [ -x "$OUT" ] && return 0
  # One build per cache at a time (the lock hack/build-tools.sh takes too).
  exec 9>"$CACHE/build-tools.lock"
  if ! flock -n 9; then
    log "another build into $CACHE is under way; waiting for it"
    flock 9
  fi
  [ -x "$OUT" ] && return 0
  command -v go >/dev/null 2>&1 || { log "no go on PATH (hack/setup.sh installs Debian's)"; exit 1; }
  local dir="$CACHE/build/compose-$COMPOSE_VERSION" t0=$SECONDS
  log "building docker compose $COMPOSE_VERSION (cold: ~5-10 min on 2 cores)"
  rm -rf "$dir" && mkdir -p "$dir"
  # The module's own go.mod decides every dependency, as in its release: it has exclude
  # directives, which `go install MODULE@VERSION` refuses, so the module is downloaded from the
  # proxy (checked against the checksum database), copied out of the read-only module cache and
  # built in place; its main package is cmd/.
  local src
  src=$(go mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" \
    | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -d "$src" ] || { log "go mod download of github.com/docker/compose/v2@$COMPOSE_VERSION failed"; exit 1; }
  cp -r "$src" "$dir/src"
  chmod -R u+w "$dir/src"
  (cd "$dir/src" && GOFLAGS=-mod=readonly go build -trimpath \
    -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
    -o "$OUT.tmp" ./cmd)
  mv "$OUT.tmp" "$OUT"
  rm -rf "$dir"
  log "built $OUT in $((SECONDS - t0)) s"
}

link_plugin() {
  local dir="$1/cli-plugins"
  mkdir -p "$dir"
  ln -sfn "$OUT" "$dir/docker-compose"
}

build
case "${1:-path}" in
  path) ;;
  plugin) link_plugin "${2:?usage: $0 plugin DIR}" ;;
  install) link_plugin "${DOCKER_CONFIG:-$HOME/.docker}"; log "linked into ${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins" ;;
  *) echo "usage: $0 [path|plugin DIR|install]" >&2; exit 2 ;;
esac
echo "$OUT"
