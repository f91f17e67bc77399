#!/usr/bin/env bash
# The images a worker node runs, side-loaded (no registry is reachable):
#   bash hack/worker/images.sh OUT.tar IMAGE...
# 1. The pod sandbox image vmlet/pause:local, FROM scratch with a static pause binary built here
#    (hack/worker/pause.c), built by the Docker engine with no network.
# 2. `docker save` of it and of IMAGE... into OUT.tar, for `ctr -n k8s.io images import`.
# Needs a Docker engine answering (hack/images/dockerd.sh start) and the vmlet images built.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: $0 OUT.tar IMAGE...}"
shift
DOCKER="${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}"
PAUSE_IMAGE="${PAUSE_IMAGE:-vmlet/pause:local}"
log() { printf '[worker-images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
gcc -O2 -static -s -o "$ctx/pause" "$here/pause.c"
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
DOCKERFILE
# Rebuilt every time: a few milliseconds, and cached by the engine when unchanged.
"$DOCKER" build --quiet --network none -t "$PAUSE_IMAGE" "$ctx" >/dev/null
for image in "$@"; do
  "$DOCKER" image inspect "$image" >/dev/null 2>&1 || { log "no image $image: make images first"; exit 1; }
done
log "saving $PAUSE_IMAGE $* into $out"
"$DOCKER" save -o "$out.tmp" "$PAUSE_IMAGE" "$@"
mv "$out.tmp" "$out"
