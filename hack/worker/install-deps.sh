#!/usr/bin/env bash
# What a real worker node (hack/worker-e2e.sh) needs from Debian: containerd and runc (the CRI
# runtime), the CNI plugins (bridge, host-local, loopback), iptables (kube-proxy's rules, inside
# the worker's own network namespace), conntrack (kube-proxy clears stale entries with it) and
# socat (relays the apiserver's loopback port to the worker), gcc and libc6-dev (the static pause
# binary of the sandbox image, hack/worker/images.sh). Idempotent: installs only what is
# missing, with apt (as root, or through sudo: hack/lib/apt-install.sh).
set -euo pipefail

missing=()
[ -x /usr/bin/containerd ] || missing+=(containerd)
[ -x /usr/sbin/runc ] || missing+=(runc)
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
[ -x /usr/sbin/iptables ] || missing+=(iptables)
[ -x /usr/sbin/conntrack ] || missing+=(conntrack)
# The relay of the apiserver's port to where the worker's namespace reaches it.
[ -x /usr/bin/socat ] || missing+=(socat)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
compgen -G '/usr/lib/*/libc.a' >/dev/null || missing+=(libc6-dev)
[ ${#missing[@]} -eq 0 ] && exit 0
bash "$(dirname "$0")/../lib/apt-install.sh" worker-deps "${missing[@]}"
test -x /usr/bin/containerd && test -x /usr/sbin/runc && test -x /usr/lib/cni/bridge
