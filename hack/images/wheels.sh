#!/usr/bin/env bash
# Stages what services/Dockerfile installs for one package, so the image build needs no network:
#   bash hack/images/wheels.sh PACKAGE DIR BUILT
# DIR/deps: the package's locked third-party dependencies (uv export of uv.lock, with hashes) as
# wheels for CPython 3.11 on manylinux x86_64, plus requirements.txt; DIR/workspace: the wheels of
# the workspace packages it needs (its own, lib/api, lib/contract...), taken from BUILT, where
# hack/images.sh has built every workspace package (`uv build --all-packages`). The downloads
# are cached under VMLET_CACHE/images/wheels, keyed by the requirements' hash: a warm run copies
# (hard-links) them and reaches no index.
set -euo pipefail
PACKAGE="$1"
DIR="$2"
BUILT="$3"
cd "$(dirname "$0")/../.."
CACHE="${VMLET_CACHE:-$HOME/.cache/vmlet}"
UV="${UV:-$(bash hack/uv.sh)}"
log() { printf '[images-wheels %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Third-party only, pinned with hashes; the workspace members are listed separately.
"$UV" export --quiet --frozen --no-dev --package "$PACKAGE" --no-emit-workspace \
  >"$tmp/requirements.txt"
mapfile -t members < <("$UV" export --quiet --frozen --no-dev --no-hashes --package "$PACKAGE" \
  --no-editable | sed -n 's|^\./||p')
key=$(sha256sum "$tmp/requirements.txt" | cut -c1-16)
store="$CACHE/images/wheels/$key"
if [ ! -f "$store/.vmlet-complete" ]; then
  # pip downloads for the image's interpreter and platform, whatever the host's Python is; a Python
  # with pip is what hack/uv.sh needs too.
  py=""
  for cand in "${PYTHON:-}" python3 /usr/bin/python3; do
    [ -n "$cand" ] && "$cand" -m pip --version >/dev/null 2>&1 && { py="$cand"; break; }
  done
  [ -n "$py" ] || { log "no python3 with pip to download wheels with"; exit 1; }
  log "$PACKAGE: downloading $(grep -c '^[a-zA-Z]' "$tmp/requirements.txt") locked wheels into $store"
  rm -rf "$store.tmp" && mkdir -p "$store.tmp"
  # Every manylinux the image's glibc (bookworm: 2.36) runs; this pip does not infer older ones.
  platforms=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
  for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore "$py" -m pip download --quiet \
    --no-deps --require-hashes --only-binary=:all: --implementation cp --python-version 3.11 \
    --abi cp311 --abi abi3 --abi none "${platforms[@]}" \
    --dest "$store.tmp" -r "$tmp/requirements.txt"
  cp "$tmp/requirements.txt" "$store.tmp/requirements.txt"
  touch "$store.tmp/.vmlet-complete"
  rm -rf "$store" && mv "$store.tmp" "$store"
fi
rm -rf "$DIR/deps" "$DIR/workspace"
mkdir -p "$DIR/workspace"
# Hard links when the cache and the build context share a file system, copies otherwise.
cp -al "$store" "$DIR/deps" 2>/dev/null || cp -a "$store" "$DIR/deps"
rm -f "$DIR/deps/.vmlet-complete"
for member in "${members[@]}"; do
  # The wheel's name: the project's name, normalized (vmlet-contract -> vmlet_contract-*.whl).
  name=$(sed -n 's/^name *= *"\([^"]*\)".*/\1/p' "$member/pyproject.toml" | head -1)
  wheels=("$BUILT/${name//-/_}"-*.whl)
  [ -f "${wheels[0]}" ] || { log "no wheel of $name ($member) in $BUILT"; exit 1; }
  cp "${wheels[@]}" "$DIR/workspace/"
done
