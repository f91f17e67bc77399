#!/usr/bin/env bash
# Runs each image `make images` built the way docker-compose.yml and k8s/ run them (read-only root,
# tmpfs /tmp, uid 65532, no capabilities, host network) and checks it for real:
#   bash hack/images/verify.sh [SERVICE...]
# - a provider answers grpc.health.v1 on its plaintext health port: the image's own HEALTHCHECK
#   command passes (SERVING), or, for vSphere and OpenStack (pointed at an IaaS address nothing
#   listens on, which they serve through), the health service answers any status;
# - it runs as 65532:65532, its root is read-only, and `docker stop -t 10` (SIGTERM to PID 1)
#   ends it well within the grace, with exit status 0; so does a SIGTERM in its first half second
#   (while Python still imports: tini, PID 1, passes it on), with any status;
# - the facade prints its usage, and without a kubeconfig fails with an error line, no traceback.
# Ports are VMLET_VERIFY_PORT (default 28051) and up, on 127.0.0.1: below the kernel's ephemeral
# range (32768-60999), so no port it hands out (a connection's, a bind to port 0) takes them.
# Needs a running engine (hack/images/dockerd.sh start); removes the containers it starts.
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG="${VMLET_IMAGE_TAG:-0.1.0}"
DOCKER="${DOCKER:-$(command -v /usr/bin/docker docker | head -1)}"
PORT="${VMLET_VERIFY_PORT:-28051}"
log() { printf '[images-verify %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
services=("$@")
[ ${#services[@]} -gt 0 ] || services=(kubelet-facade memory-provider vmware-provider openstack-provider)
hardened=(--read-only --tmpfs /tmp --user 65532:65532 --cap-drop ALL
          --security-opt no-new-privileges:true --network host)
work=$(mktemp -d)
chmod 755 "$work"
containers=()
cleanup() {
  for c in "${containers[@]}"; do "$DOCKER" rm -f "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# An OpenStack cloud that does not answer (nothing listens on port 9 of loopback).
cat >"$work/clouds.yaml" <<'YAML'
clouds:
  vmlet:
    auth: {auth_url: "http://127.0.0.1:9/identity/v3", username: vmlet, password: vmlet,
           project_name: vmlet, user_domain_name: Default, project_domain_name: Default}
    region_name: RegionOne
YAML
chmod 644 "$work/clouds.yaml"

ANSWER='import sys,grpc;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as g
r=g.HealthStub(grpc.insecure_channel("127.0.0.1:"+sys.argv[1])).Check(h.HealthCheckRequest(),timeout=4)
print(h.HealthCheckResponse.ServingStatus.Name(r.status))'

verify_provider() {
  local svc=$1 name="vmlet-verify-$1" port=$PORT health=$((PORT + 1)) metrics=$((PORT + 2))
  local args=() env=(-e "VMLET_LISTEN=127.0.0.1:$port" -e "VMLET_HEALTH_LISTEN=127.0.0.1:$health"
                     -e "VMLET_METRICS_LISTEN=127.0.0.1:$metrics")
  PORT=$((PORT + 10))
  case "$svc" in
    memory-provider) args=(--nodes=2 --node-prefix=memory) ;;
    vmware-provider)
      env+=(-e VMLET_VSPHERE_URL=https://127.0.0.1:9/sdk -e VMLET_VSPHERE_USERNAME=vmlet
            -e VMLET_VSPHERE_PASSWORD=vmlet) ;;
    openstack-provider)
      env+=(-e VMLET_OPENSTACK_CLOUDS_YAML=/etc/vmlet/clouds.yaml -e VMLET_OPENSTACK_CLOUD=vmlet
            -v "$work/clouds.yaml:/etc/vmlet/clouds.yaml:ro") ;;
  esac
  containers+=("$name")
  "$DOCKER" rm -f "$name" >/dev/null 2>&1 || true
  "$DOCKER" run -d --name "$name" "${hardened[@]}" "${env[@]}" "vmlet/$svc:$TAG" \
    --insecure-plaintext "${args[@]}" >/dev/null
  # The image's HEALTHCHECK command, run in the container (exit 0 = SERVING), until it passes or,
  # for a provider whose IaaS is away, until the health service answers at all (ANSWER prints the
  # status it answers; an unreachable port is an exception, no answer).
  local probe rc=2 t0=$SECONDS status=""
  # shellcheck disable=SC2016  # a Go template, not shell
  probe=$("$DOCKER" image inspect -f '{{range $i, $a := .Config.Healthcheck.Test}}{{if $i}}{{$a}}{{"\n"}}{{end}}{{end}}' "vmlet/$svc:$TAG")
  mapfile -t probe_cmd <<<"${probe#CMD$'\n'}"
  while [ $((SECONDS - t0)) -lt 30 ]; do
    [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$name")" = true ] \
      || { "$DOCKER" logs "$name" 2>&1 | tail -20 >&2; fail "$svc exited while starting"; }
    rc=0
    "$DOCKER" exec "$name" "${probe_cmd[@]}" >/dev/null 2>&1 || rc=$?
    [ "$rc" -eq 0 ] && break
    if [ "$svc" != memory-provider ]; then
      status=$("$DOCKER" exec "$name" python -c "$ANSWER" "$health" 2>/dev/null || true)
      [ -n "$status" ] && break
    fi
    sleep 0.5
  done
  if [ "$rc" -eq 0 ]; then
    log "$svc: health SERVING (the image's HEALTHCHECK passes) after $((SECONDS - t0)) s"
  elif [ -n "$status" ]; then
    log "$svc: health answers $status, its IaaS unreachable, after $((SECONDS - t0)) s"
  else
    "$DOCKER" logs "$name" 2>&1 | tail -20 >&2
    fail "$svc: no health answer in 30 s"
  fi
  check_hardened "$svc" "$name"
  stop_timed "$svc" "$name"
  "$DOCKER" rm -f "$name" >/dev/null
  stop_early "$svc" "$name" "${hardened[@]}" "${env[@]}" "vmlet/$svc:$TAG" --insecure-plaintext "${args[@]}"
}

check_hardened() {
  local svc=$1 name=$2 ids
  ids=$("$DOCKER" exec "$name" id -u):$("$DOCKER" exec "$name" id -g)
  [ "$ids" = 65532:65532 ] || fail "$svc runs as $ids"
  if "$DOCKER" exec "$name" touch /opt/vmlet/probe 2>/dev/null; then fail "$svc: the root is writable"; fi
  "$DOCKER" exec "$name" touch /tmp/probe || fail "$svc: /tmp is not writable"
  log "$svc: uid:gid $ids, read-only root, writable /tmp"
}

stop_timed() {
  local svc=$1 name=$2 t0 ms code
  t0=$(date +%s%N)
  "$DOCKER" stop -t 10 "$name" >/dev/null
  ms=$((($(date +%s%N) - t0) / 1000000))
  code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$name")
  [ "$code" = 0 ] || { "$DOCKER" logs "$name" 2>&1 | tail -10 >&2; fail "$svc: exit status $code after SIGTERM"; }
  [ "$ms" -lt 5000 ] || fail "$svc: docker stop took $ms ms"
  log "$svc: docker stop -t 10 took $ms ms, exit status 0"
}

# A stop right after the start, before the service has installed its SIGTERM handler.
stop_early() {
  local svc=$1 name=$2 t0 ms
  shift 2
  containers+=("$name")
  "$DOCKER" rm -f "$name" >/dev/null 2>&1 || true
  "$DOCKER" run -d --name "$name" "$@" >/dev/null
  sleep 0.3
  t0=$(date +%s%N)
  "$DOCKER" stop -t 10 "$name" >/dev/null
  ms=$((($(date +%s%N) - t0) / 1000000))
  [ "$ms" -lt 5000 ] || fail "$svc: docker stop during its start took $ms ms"
  log "$svc: docker stop -t 10 0.3 s after the start took $ms ms (exit status $("$DOCKER" inspect -f '{{.State.ExitCode}}' "$name"))"
  "$DOCKER" rm -f "$name" >/dev/null
}

verify_facade() {
  local image="vmlet/kubelet-facade:$TAG" out rc=0 name=vmlet-verify-kubelet-facade
  # A provider nothing serves (port 9): the facade starts regardless and keeps retrying it.
  local provider=(--provider memory=127.0.0.1:9 --provider-insecure-plaintext)
  out=$("$DOCKER" run --rm "${hardened[@]}" "$image" --help 2>&1) || rc=$?
  if [ "$rc" -ne 0 ] || ! grep -q '^usage:' <<<"$out"; then
    echo "$out" >&2
    fail "facade --help: status $rc"
  fi
  log "facade: --help prints its usage ($(wc -l <<<"$out") lines)"
  rc=0
  out=$("$DOCKER" run --rm "${hardened[@]}" -e KUBECONFIG=/nonexistent/kubeconfig "$image" \
    "${provider[@]}" 2>&1) || rc=$?
  if [ "$rc" -eq 0 ] || grep -q Traceback <<<"$out"; then
    echo "$out" >&2
    fail "facade without a kubeconfig: status $rc"
  fi
  log "facade without a kubeconfig: status $rc, $(wc -l <<<"$out") line(s): $(tail -1 <<<"$out" | cut -c1-160)"
  # SIGTERM while it waits for an apiserver that does not answer.
  containers+=("$name")
  "$DOCKER" rm -f "$name" >/dev/null 2>&1 || true
  cat >"$work/kubeconfig" <<'YAML'
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
YAML
  chmod 644 "$work/kubeconfig"
  "$DOCKER" run -d --name "$name" "${hardened[@]}" -v "$work/kubeconfig:/etc/vmlet/kubeconfig:ro" \
    "$image" --kubeconfig=/etc/vmlet/kubeconfig --metrics-addr=127.0.0.1:$((PORT + 2)) \
    "${provider[@]}" >/dev/null
  sleep 3
  [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$name")" = true ] \
    || { "$DOCKER" logs "$name" 2>&1 | tail -20 >&2; fail "facade exited with an unreachable apiserver"; }
  check_hardened kubelet-facade "$name"
  stop_timed kubelet-facade "$name"
  "$DOCKER" rm -f "$name" >/dev/null
  stop_early kubelet-facade "$name" "${hardened[@]}" -v "$work/kubeconfig:/etc/vmlet/kubeconfig:ro" \
    "$image" --kubeconfig=/etc/vmlet/kubeconfig "${provider[@]}"
}

for svc in "${services[@]}"; do
  if [ "$svc" = kubelet-facade ]; then verify_facade; else verify_provider "$svc"; fi
done
log "ok: ${services[*]}"
