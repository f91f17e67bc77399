#!/usr/bin/env bash
# Starts or stops a Docker engine for `make images` (and hack/compose-e2e.sh) when none answers on
# DOCKER_HOST (or the default socket). Debian's dockerd, with no default bridge and no iptables
# rules: builds use the host's network (or none) and the engine leaves iptables as it found it.
# The networks it makes on request (compose's) take their subnets from the test-host range only
# (VMLET_DOCKER_ADDRESS_POOL, default 198.19.192.0/18 in /24s), never the engine's default
# private ranges; published ports go through docker-proxy, which needs no iptables rule.
#   bash hack/images/dockerd.sh start   # prints "started" when it started one, "running" if one answered
#   bash hack/images/dockerd.sh stop    # stops the one `start` started (pid file), nothing else
# The data root (VMLET_DOCKER_ROOT, default /var/lib/docker) keeps the images across restarts.
# Without Debian's dockerd, start installs it first (hack/images/install-deps.sh).
set -euo pipefail
CACHE="${VMLET_CACHE:-$HOME/.cache/vmlet}"
RUN_DIR="${VMLET_DOCKER_RUN:-/run/vmlet-dockerd}"
PIDFILE="$RUN_DIR/dockerd.pid"
DOCKER="${DOCKER:-$(command -v /usr/bin/docker docker | head -1)}"
log() { printf '[images-dockerd %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

case "${1:-}" in
  start)
    if "$DOCKER" version >/dev/null 2>&1; then
      echo running
      exit 0
    fi
    # A new machine has no engine yet: Debian's, as `make images` installs it (its output goes
    # to stderr, since this prints only what it did).
    [ -x /usr/sbin/dockerd ] || bash "$(dirname "$0")/install-deps.sh" >&2
    DOCKER="${DOCKER:-$(command -v /usr/bin/docker docker | head -1)}"
    mkdir -p "$RUN_DIR" "$CACHE/logs"
    log "starting dockerd (data root ${VMLET_DOCKER_ROOT:-/var/lib/docker}, log $CACHE/logs/dockerd.log)"
    # setsid: the engine outlives this script's process group, and stop ends it by its pid only.
    setsid /usr/sbin/dockerd --data-root "${VMLET_DOCKER_ROOT:-/var/lib/docker}" \
      --pidfile "$PIDFILE" --bridge=none --iptables=false --ip-masq=false \
      --default-address-pool "${VMLET_DOCKER_ADDRESS_POOL:-base=198.19.192.0/18,size=24}" \
      --storage-driver=overlay2 --exec-opt native.cgroupdriver=cgroupfs \
      >"$CACHE/logs/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 120); do
      if "$DOCKER" version >/dev/null 2>&1; then
        echo started
        exit 0
      fi
      sleep 0.5
    done
    log "dockerd did not answer within 60 s; last lines of its log:"
    tail -20 "$CACHE/logs/dockerd.log" >&2
    exit 1
    ;;
  stop)
    [ -s "$PIDFILE" ] || exit 0
    pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping dockerd (pid $pid)"
      kill -TERM "$pid"
      for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
      done
    fi
    rm -f "$PIDFILE"
    # What the engine leaves behind: the bind mount of its default network namespace and the
    # state directories under /run (containerd's only when no containerd runs: it was dockerd's).
    if mountpoint -q /run/docker/netns/default 2>/dev/null; then
      umount /run/docker/netns/default
    fi
    rm -rf /run/docker "$RUN_DIR"
    pgrep -x containerd >/dev/null || rm -rf /run/containerd
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
