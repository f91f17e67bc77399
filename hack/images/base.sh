#!/usr/bin/env bash
# Makes the images' base as a root filesystem tarball, from Debian's packages with debootstrap:
# bookworm, variant minbase, plus Debian's python3 (3.11, the workspace's Python), ca-certificates
# (the providers and the facade speak TLS to the IaaS and the apiserver) and tini (PID 1: it
# forwards SIGTERM to the service, which the kernel would drop for a PID 1 that has not installed
# its handler yet, i.e. while Python still imports, and reaps zombies). apt, the
# documentation, man pages, locales and package lists are removed: nothing installs at run time.
#   bash hack/images/base.sh OUT.tar
# Runs as root (debootstrap chroots). The mirror is the first Debian one apt is configured with
# (DEBIAN_MIRROR overrides it).
set -euo pipefail
OUT="$1"
SUITE="${DEBIAN_SUITE:-bookworm}"
log() { printf '[images-base %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror=$(grep -hoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* \
    2>/dev/null | head -1 | tr -d ' ' || true)
fi
mirror="${mirror:-http://deb.debian.org/debian}"
work=$(mktemp -d "${OUT%/*}/base.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
log "debootstrap $SUITE (minbase + python3, ca-certificates, tini) from $mirror"
debootstrap --variant=minbase --include=python3,ca-certificates,tini "$SUITE" "$root" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
# Security updates too, when the mirror has them (as Debian's own images do).
security="${mirror%/debian*}/debian-security"
printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' "$mirror" "$SUITE" \
  "$mirror" "$SUITE" "$security" "$SUITE" >"$root/etc/apt/sources.list"
if chroot "$root" apt-get update -qq >>"$work/debootstrap.log" 2>&1; then
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get -y -qq upgrade >>"$work/debootstrap.log" 2>&1
fi
# What the runtime does not need: the package manager's front end with the libraries only it
# uses (TLS for https sources, seccomp), its lists and caches, documentation. dpkg stays (its
# database says what the image holds, for scanners).
DEBIAN_FRONTEND=noninteractive chroot "$root" dpkg --purge apt libapt-pkg6.0 debian-archive-keyring \
  gpgv libgnutls30 libhogweed6 libidn2-0 libnettle8 libp11-kit0 libseccomp2 libtasn1-6 \
  libunistring2 libxxhash0 >>"$work/debootstrap.log" 2>&1 \
  || { tail -5 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt "$root"/var/cache/debconf/*-old \
  "$root"/var/log/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
  "$root"/usr/share/locale/* "$root"/usr/share/lintian "$root"/etc/apt "$root"/tmp/* \
  "$root"/var/lib/dpkg/*-old
# The standard library's bytecode (compiled by python3's postinst) stays: the images run with a
# read-only root, where nothing is compiled at import and cached.
: >"$root/etc/machine-id"
log "python $(chroot "$root" python3 -c 'import sys; print(sys.version.split()[0])'), $(du -sh "$root" | cut -f1)"
# A stable tarball: sorted, numeric owners, no access times.
tar --numeric-owner --sort=name --xattrs -C "$root" -cf "$OUT.tmp" .
mv "$OUT.tmp" "$OUT"
