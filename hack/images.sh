#!/usr/bin/env bash
# `make images`: builds every vmlet image from services/Dockerfile with BuildKit, offline and cached:
#   bash hack/images.sh [SERVICE...]    # default: kubelet-facade memory-provider vmware-provider openstack-provider
# 1. Debian's docker.io and debootstrap, if missing (hack/images/install-deps.sh).
# 2. A Docker engine: the one DOCKER_HOST (or the default socket) answers, else Debian's dockerd,
#    started for this run without a bridge or iptables rules (hack/images/dockerd.sh) and stopped
#    at the end (VMLET_KEEP_DOCKERD=1 keeps it; its data root keeps the images either way).
# 3. The base image: Debian bookworm minbase with Debian's python3 3.11, made with debootstrap
#    (hack/images/base.sh) once per recipe into VMLET_CACHE/images/base-<hash>.tar, imported as
#    vmlet/python:3.11-bookworm-<hash> and tagged vmlet/python:3.11-bookworm.
# 4. Each package's locked wheels, staged in .vmlet/images/<package>/ (hack/images/wheels.sh;
#    downloads cached under VMLET_CACHE/images/wheels), with the project's uv.
# 5. `docker build --network none` of each image (vmlet/<service>:VMLET_IMAGE_TAG, default the
#    workspace's version 0.1.0, as docker-compose.yml names them); sizes are printed at the end.
# 6. hack/images/verify.sh runs each one read-only, as uid 65532, and stops it with SIGTERM.
# vcsim's image, which compose also runs, is built on the same base by `docker compose build vcsim`
# (hack/compose-e2e.sh prepare stages its binary). Build logs: VMLET_CACHE/logs/images-<service>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${VMLET_CACHE:-$HOME/.cache/vmlet}"
TAG="${VMLET_IMAGE_TAG:-0.1.0}"
log() { printf '[images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
started=$SECONDS

# service directory -> Dockerfile target and package (docker-compose.yml builds the same).
declare -A TARGET=([kubelet-facade]=facade [memory-provider]=provider [vmware-provider]=provider
                   [openstack-provider]=provider)
declare -A PACKAGE=([kubelet-facade]=vmlet-facade [memory-provider]=vmlet-memory-provider
                    [vmware-provider]=vmlet-vmware-provider [openstack-provider]=vmlet-openstack-provider)
services=("$@")
[ ${#services[@]} -gt 0 ] || services=(kubelet-facade memory-provider vmware-provider openstack-provider)
for svc in "${services[@]}"; do
  [ -n "${TARGET[$svc]:-}" ] || { log "unknown service $svc (one of: ${!TARGET[*]})"; exit 2; }
done

if [ "$(id -u)" -ne 0 ]; then
  log "run as root: debootstrap chroots, and the Docker engine this may start runs as root"
  exit 1
fi
bash hack/images/install-deps.sh
# Debian's client speaks BuildKit to its engine by itself; a newer client would want buildx.
DOCKER="${DOCKER:-$(command -v /usr/bin/docker docker | head -1)}"
export DOCKER
if [ "$(bash hack/images/dockerd.sh start)" = started ] && [ -z "${VMLET_KEEP_DOCKERD:-}" ]; then
  trap 'bash hack/images/dockerd.sh stop' EXIT
fi

# The base, keyed by its recipe.
mkdir -p "$CACHE/images" "$CACHE/logs"
base_key=$(sha256sum <hack/images/base.sh | cut -c1-12)
base_tar="$CACHE/images/base-$base_key.tar"
base_image="vmlet/python:3.11-bookworm-$base_key"
if [ ! -f "$base_tar" ]; then
  bash hack/images/base.sh "$base_tar"
fi
if ! "$DOCKER" image inspect "$base_image" >/dev/null 2>&1; then
  log "importing $base_image from $base_tar"
  "$DOCKER" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$base_tar" "$base_image" >/dev/null
fi
"$DOCKER" tag "$base_image" vmlet/python:3.11-bookworm
# Bases of earlier recipes: their tarballs, and their images once nothing uses them.
find "$CACHE/images" -maxdepth 1 -name 'base-*.tar' ! -name "base-$base_key.tar" -delete
"$DOCKER" images --format '{{.Repository}}:{{.Tag}}' 'vmlet/python' | grep -v -e "-$base_key\$" \
  -e ':3.11-bookworm$' | xargs -r "$DOCKER" rmi >/dev/null 2>&1 || true

# The build context's staged inputs (.vmlet/images, let through by .dockerignore).
UV=$(bash hack/uv.sh)
export UV
mkdir -p .vmlet/images
cmp -s "$UV" .vmlet/images/uv || cp "$UV" .vmlet/images/uv
# Every workspace package as a wheel, in one go (each image takes the ones it needs).
rm -rf .vmlet/images/.workspace
"$UV" build --quiet --all-packages --wheel --out-dir .vmlet/images/.workspace
for svc in "${services[@]}"; do
  bash hack/images/wheels.sh "${PACKAGE[$svc]}" ".vmlet/images/${PACKAGE[$svc]}" .vmlet/images/.workspace
done

for svc in "${services[@]}"; do
  image="vmlet/$svc:$TAG"
  t0=$SECONDS
  previous=$("$DOCKER" image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
  if ! DOCKER_BUILDKIT=1 "$DOCKER" build --network none --progress plain -f services/Dockerfile \
      --target "${TARGET[$svc]}" --build-arg "PYTHON_IMAGE=$base_image" \
      --build-arg "SERVICE_DIR=services/$svc" --build-arg "PACKAGE=${PACKAGE[$svc]}" \
      -t "$image" . >"$CACHE/logs/images-$svc.log" 2>&1; then
    tail -30 "$CACHE/logs/images-$svc.log" >&2
    log "building $image failed (log: $CACHE/logs/images-$svc.log)"
    exit 1
  fi
  log "built $image in $((SECONDS - t0)) s"
  # The image this one replaces, unless something still uses it.
  if [ -n "$previous" ] && [ "$previous" != "$("$DOCKER" image inspect -f '{{.Id}}' "$image")" ]; then
    "$DOCKER" rmi "$previous" >/dev/null 2>&1 || true
  fi
done

for image in "$base_image" "${services[@]/#/vmlet/}"; do
  [[ $image == *:* ]] || image="$image:$TAG"
  printf '%-48s %6s MB\n' "$image" \
    "$(( $("$DOCKER" image inspect -f '{{.Size}}' "$image") / 1000000 ))"
done
log "built in $((SECONDS - started)) s"
# Each image run as compose and k8s/ run it (VMLET_IMAGES_VERIFY=0 skips this).
if [ "${VMLET_IMAGES_VERIFY:-1}" != 0 ]; then
  bash hack/images/verify.sh "${services[@]}"
fi
