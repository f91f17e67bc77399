#!/usr/bin/env bash
# What `make images` needs from Debian: the Docker engine with its BuildKit builder (docker.io,
# which brings containerd, runc and iptables) and debootstrap, which makes the base image from
# Debian's packages (no container registry is needed, or reachable, here). Idempotent: installs
# only what is missing, and only with apt (as root, or through sudo).
set -euo pipefail
log() { printf '[images-deps %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

missing=()
[ -x /usr/sbin/dockerd ] || missing+=(docker.io)
[ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  log "missing ${missing[*]} and no apt-get: install a Docker engine and debootstrap by hand"
  exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { log "missing ${missing[*]}, not root and no sudo"; exit 1; }
  SUDO=(sudo -n)
fi
log "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; then
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
fi
test -x /usr/sbin/dockerd && test -x /usr/sbin/debootstrap
