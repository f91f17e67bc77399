#!/usr/bin/env bash
# What `make images` needs from Debian: the Docker engine with its BuildKit builder (docker.io,
# which brings containerd, runc and iptables) and debootstrap, which makes the base image from
# Debian's packages (no container registry is needed, or reachable, here). Idempotent: installs
# only what is missing, and only with apt (as root, or through sudo: hack/lib/apt-install.sh).
set -euo pipefail

missing=()
[ -x /usr/sbin/dockerd ] || missing+=(docker.io)
[ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
[ ${#missing[@]} -eq 0 ] && exit 0
bash "$(dirname "$0")/../lib/apt-install.sh" images-deps "${missing[@]}"
test -x /usr/sbin/dockerd && test -x /usr/sbin/debootstrap
