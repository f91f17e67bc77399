#!/usr/bin/env bash
# docker-compose.yml for real, end to end, against `make up`'s control plane:
#   bash hack/compose-e2e.sh           # all of it; everything it started is torn down at the end
#   bash hack/compose-e2e.sh prepare   # step 1 only: what `docker compose up` needs, then exits
# 1. `docker compose` v2 (hack/build-compose.sh, from the Go module proxy, cached by version),
#    linked as a CLI plugin into a Docker config of this script's own (.vmlet/compose/docker);
#    a Docker engine (hack/images/dockerd.sh: no default bridge, no iptables rules); the vmlet
#    images (`make images` when one is missing) and vcsim's (its binary from hack/build-tools.sh,
#    built by `docker compose build vcsim` on the vmlet base: no registry).
# 2. make up's control plane (lib/localenv's ControlPlane with vmlet's CRDs, the facade's RBAC and
#    user, and make up's approver of kubelet-serving CSRs), without the facade and provider `make
#    up` adds to it; the facade's kubeconfig, self-contained, readable by the services' group only.
# 3. `docker compose up --wait` on a bridge of the test-host range (a /24 of 198.19.0.0/16 no
#    route covers): pki, state volumes, providers and vcsim healthy, the facade healthy; its
#    virtual nodes (compose-memory-*, compose-vsphere-*) Ready.
# 4. A VirtualMachine on each provider, created with kubectl, goes Running on a compose node;
#    `kubectl logs` reads the memory one's pod through the facade's kubelet API (its serving
#    certificate approved); both are deleted and gone.
# 5. `docker compose down -v`, then nothing of the project is left: containers, networks, volumes,
#    routes, bridges, iptables rules, mounts. The control plane is stopped, and so is the engine
#    when this script started it.
# Each step prints its time. Needs root (the engine). Refuses to start when compose's ports
# (127.0.0.1: 10250, 9110, 50051, 50052, 8989, 9091, 9092) are taken or the project `vmlet` has
# containers already.
set -euo pipefail
cd "$(dirname "$0")/.."
export VMLET_CACHE="${VMLET_CACHE:-$HOME/.cache/vmlet}"
DOCKER="${DOCKER:-$(command -v /usr/bin/docker docker | head -1)}"
export DOCKER
STATE=.vmlet/compose
export DOCKER_CONFIG="$PWD/$STATE/docker"
PROJECT=vmlet
PORTS=(10250 9110 50051 50052 8989 9091 9092)
E2E=compose-e2e
# shellcheck source=hack/lib/e2e.sh
source hack/lib/e2e.sh

[ "$(id -u)" -eq 0 ] || fail "run as root: the Docker engine needs it"
mkdir -p "$STATE"
chmod 700 "$STATE"

# --- what this script started, stopped again on any exit -----------------------------------------
engine=""
keep_engine=""
cp_pid=""
tools_pid=""
compose_up=""
vms=()
cleanup() {
  local rc=$?
  set +e
  [ -n "$tools_pid" ] && kill "$tools_pid" 2>/dev/null
  if [ -n "$compose_up" ]; then
    [ $rc -ne 0 ] && compose logs --no-color --tail 30 >&2
    for vm in "${vms[@]}"; do kubectl delete vm "$vm" --wait=false >/dev/null 2>&1; done
    compose down -v --timeout 20 >/dev/null 2>&1
  fi
  if [ -n "$cp_pid" ]; then
    stop_pid "$cp_pid"
    rm -rf "$cp_dir"   # its log stays beside it
    rm -f "$VMLET_KUBECONFIG"
  fi
  [ "$engine" = started ] && [ -z "$keep_engine" ] && bash hack/images/dockerd.sh stop
  [ $rc -ne 0 ] && log "FAILED after $((SECONDS - started)) s"
  exit $rc
}

trap cleanup EXIT

# --- 1. compose, engine, images ------------------------------------------------------------------
step "1/5 docker compose v2, the engine, the images"
bash hack/build-compose.sh plugin "$DOCKER_CONFIG" >/dev/null
compose() { "$DOCKER" compose "$@"; }
log "$(compose version)"
bash hack/images/install-deps.sh
engine=$(bash hack/images/dockerd.sh start)
missing=()
for image in kubelet-facade memory-provider vmware-provider openstack-provider; do
  "$DOCKER" image inspect "vmlet/$image:0.1.0" >/dev/null 2>&1 || missing+=("$image")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "building the images ${missing[*]} (make images)"
  VMLET_KEEP_DOCKERD=1 bash hack/images.sh "${missing[@]}"
fi
vcsim_bin="$VMLET_CACHE/bin/vcsim-${GOVMOMI_VERSION:-v0.46.3}"
[ -x "$vcsim_bin" ] || bash hack/build-tools.sh vcsim
mkdir -p .vmlet/images/vcsim
cmp -s "$vcsim_bin" .vmlet/images/vcsim/vcsim || install -m 0755 "$vcsim_bin" .vmlet/images/vcsim/vcsim
# A file compose interpolates must exist even for `build`; the real one comes in step 2.
export VMLET_KUBECONFIG="$STATE/facade.kubeconfig"
[ -f "$VMLET_KUBECONFIG" ] || install -m 0600 /dev/null "$VMLET_KUBECONFIG"
compose build --quiet vcsim
log "images: $("$DOCKER" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' 'vmlet/*' | tr '\n' ',' | sed 's/,$//; s/,/, /g')"
if [ "${1:-}" = prepare ]; then
  keep_engine=1
  log "prepared: DOCKER_CONFIG=$DOCKER_CONFIG docker compose ... (engine $engine; left running)"
  exit 0
fi

# Nothing of the project may be there, nor anything on its ports.
[ -z "$(compose ps -a -q 2>/dev/null)" ] || fail "the compose project $PROJECT has containers: docker compose down -v first"
for port in "${PORTS[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "127.0.0.1:$port is taken (compose publishes or listens on it)"
  fi
done
# A /24 of the test-host range that no route covers, from the top (hack/worker-e2e.sh takes its
# from the bottom).
[ -n "${VMLET_COMPOSE_SUBNET:-}" ] || VMLET_COMPOSE_SUBNET=$(free_subnets 1 top)
export VMLET_COMPOSE_SUBNET
rules_before=$(iptables_rules)
# Containers' mounts: overlay roots, shm, network namespaces (the engine's own default namespace,
# mounted once on its first network, is not one).
container_mounts() {
  awk '$2 ~ /^\/var\/lib\/docker\// || ($2 ~ /^\/run\/docker\/netns\// && $2 != "/run/docker/netns/default")' \
    /proc/mounts | wc -l
}
mounts_before=$(container_mounts)

# --- 2. the control plane ------------------------------------------------------------------------
# make up's control plane (lib/localenv's ControlPlane: etcd, kube-apiserver, controller-manager,
# scheduler, with vmlet's CRDs, the facade's RBAC and user, and make up's approver of kubelet-
# serving CSRs) without make up's own facade and providers: the facade holding the cluster
# controllers' Lease must know every provider its VirtualMachines name, and make up's knows only
# its own (docs/operations.md, "On a laptop").
step "2/5 the control plane (make up's, without its facade)"
setup_env
cp_dir="$PWD/$STATE/controlplane"   # absolute: its kubeconfigs name files beside them
rm -rf "$cp_dir" && mkdir -p "$cp_dir"
start_controlplane "$cp_dir" "$cp_dir.log"
export KUBECONFIG="$cp_dir/admin.kubeconfig"
# The facade's user; its certificates inline, for the container, readable by the services' group.
kubectl --kubeconfig "$cp_dir/facade.kubeconfig" config view --raw --flatten --minify \
  >"$VMLET_KUBECONFIG.tmp"
install -m 0640 -g 65532 "$VMLET_KUBECONFIG.tmp" "$VMLET_KUBECONFIG"
rm -f "$VMLET_KUBECONFIG.tmp"

# --- 3. compose up -------------------------------------------------------------------------------
step "3/5 docker compose up --wait (bridge $VMLET_COMPOSE_SUBNET)"
compose_up=1
compose up -d --wait --wait-timeout 180 2>&1 | { grep -v -e ' Waiting$' -e ' Starting$' -e ' Creating$' || true; } >&2
compose ps -a --format 'table {{.Service}}\t{{.Status}}' >&2
health=$(compose ps --format '{{.Service}}={{.Health}}' facade memory-provider vsphere-provider vcsim | sort | tr '\n' ' ')
[ "$health" = "facade=healthy memory-provider=healthy vcsim=healthy vsphere-provider=healthy " ] \
  || fail "not all healthy: $health"
for oneshot in pki state-volumes; do
  code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$PROJECT-$oneshot-1")
  [ "$code" = 0 ] || fail "$oneshot exited with $code"
done
log "health: $health(pki and state-volumes exited 0)"

t0=$SECONDS
wanted=()
while [ $((SECONDS - t0)) -lt 120 ]; do
  mapfile -t wanted < <(kubectl get nodes -o name | sed -n 's|^node/\(compose-.*\)|\1|p')
  memory=0 vsphere=0
  for n in "${wanted[@]}"; do
    case "$n" in compose-memory-*) memory=$((memory + 1)) ;; compose-vsphere-*) vsphere=$((vsphere + 1)) ;; esac
  done
  [ "$memory" -eq 2 ] && [ "$vsphere" -ge 1 ] && break
  sleep 1
done
if [ "${memory:-0}" -ne 2 ] || [ "${vsphere:-0}" -lt 1 ]; then
  fail "the facade registered ${wanted[*]:-no node} (want compose-memory-0/1 and compose-vsphere-*)"
fi
kubectl wait --for=condition=Ready --timeout=120s "${wanted[@]/#/node/}" >/dev/null
log "nodes Ready after $((SECONDS - t0)) s: ${wanted[*]}"

# --- 4. VirtualMachines --------------------------------------------------------------------------
step "4/5 a VirtualMachine on each compose provider"
vsphere_node=$(printf '%s\n' "${wanted[@]}" | grep '^compose-vsphere-' | sort | head -1)
run_id=$(date +%s)
declare -A vm_node=([compose-mem-$run_id]=compose-memory-0 [compose-vs-$run_id]=$vsphere_node)
declare -A vm_provider=([compose-mem-$run_id]=memory [compose-vs-$run_id]=vsphere)
# vcsim's own VMs serve as templates (the provider clones a VM by name when no template has it).
declare -A vm_image=([compose-mem-$run_id]=debian-12 [compose-vs-$run_id]=DC0_H0_VM0)
for vm in "${!vm_node[@]}"; do
  vms+=("$vm")
  kubectl apply -f - >/dev/null <<YAML
apiVersion: vmlet.io/v1alpha1
kind: VirtualMachine
metadata: {name: $vm, namespace: default}
spec:
  provider: ${vm_provider[$vm]}
  image: ${vm_image[$vm]}
  cpu: 1
  memory: 256Mi
  placement: {nodeName: ${vm_node[$vm]}}
YAML
done
# vcsim runs no guest: a vSphere VM is ready once VMware Tools report its IP, which is played
# here as `make demo` plays it (vcsim's SET.guest.ipAddress, once the VM is powered on).
vs_uid=$(kubectl get vm "compose-vs-$run_id" -o jsonpath='{.metadata.uid}')
PYTHONPATH="$PWD/lib/localenv:$PWD/lib/api:$PWD/lib/contract${PYTHONPATH:+:$PYTHONPATH}" \
  "$PY" - "$vs_uid" 10.0.0.10 hack/compose/vsphere-password <<'PY' &
import ssl, sys, time
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim
from vmlet_localenv.stack import vms_with_identity

identity, ip, password_file = sys.argv[1:4]
password = open(password_file).read().strip()
context = ssl._create_unverified_context()  # vcsim's self-signed certificate
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    si = SmartConnect(host="127.0.0.1", port=8989, user="vmlet", pwd=password, sslContext=context)
    try:
        found = vms_with_identity(si, identity)
        if len(found) == 1 and found[0].runtime.powerState == "poweredOn":
            task = found[0].ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=[
                vim.option.OptionValue(key="SET.guest.ipAddress", value=ip)]))
            while task.info.state not in ("success", "error"):
                time.sleep(0.05)
            if task.info.state == "success":
                sys.exit(0)
    finally:
        Disconnect(si)
    time.sleep(0.3)
sys.exit(f"the VM of identity {identity} was not powered on in vcsim within 120 s")
PY
tools_pid=$!
t0=$SECONDS
for vm in "${vms[@]}"; do
  until [ "$(kubectl get vm "$vm" -o jsonpath='{.status.state}')" = Running ]; do
    if [ $((SECONDS - t0)) -ge 120 ]; then
      kubectl get vm "$vm" -o yaml >&2
      kubectl get pods -o wide >&2
      fail "VirtualMachine $vm is not Running after 120 s"
    fi
    sleep 0.5
  done
  node=$(kubectl get vm "$vm" -o jsonpath='{.status.nodeName}')
  [ "$node" = "${vm_node[$vm]}" ] || fail "VirtualMachine $vm runs on $node, not ${vm_node[$vm]}"
  log "VirtualMachine $vm (${vm_provider[$vm]}) Running on $node after $((SECONDS - t0)) s"
done
wait "$tools_pid" || fail "reporting the vSphere VM's guest IP failed"
kubectl get vm -o wide >&2
# `kubectl logs` goes apiserver -> the facade's kubelet API (127.0.0.1:10250, where its nodes say
# it is), which serves once its kubelet-serving CSR is approved: make up's approver does that
# here, an operator elsewhere (kubectl certificate approve). The apiserver's node proxy
# (/api/v1/nodes/N/proxy) refuses loopback addresses; logs, exec and port-forward do not.
# Not `| head`: under pipefail, head leaving early can kill kubectl with SIGPIPE.
pod=$(kubectl get pods --field-selector "spec.nodeName=compose-memory-0" \
  -o jsonpath='{.items[0].metadata.name}' 2>/dev/null) || true
[ -n "$pod" ] || fail "no pod on compose-memory-0"
pod=pod/$pod
t0=$SECONDS
until out=$(kubectl logs "$pod" --tail=3 2>&1); do
  [ $((SECONDS - t0)) -lt 90 ] || fail "kubectl logs $pod (through the compose facade's kubelet API): $out"
  sleep 1
done
log "kubectl logs $pod: read through the compose facade's kubelet API after $((SECONDS - t0)) s"
kubectl delete vm "${vms[@]}" --wait=true --timeout=120s >/dev/null
vms=()
log "VirtualMachines deleted"

# --- 5. compose down -----------------------------------------------------------------------------
step "5/5 docker compose down -v, and nothing left"
compose down -v --timeout 20 2>&1 | { grep -v -e ' Stopping$' -e ' Removing$' || true; } >&2
compose_up=""
left=()
[ -z "$("$DOCKER" ps -a -q --filter "label=com.docker.compose.project=$PROJECT")" ] || left+=(containers)
[ -z "$("$DOCKER" network ls -q --filter "label=com.docker.compose.project=$PROJECT")" ] || left+=(networks)
[ -z "$("$DOCKER" volume ls -q --filter "label=com.docker.compose.project=$PROJECT")" ] || left+=(volumes)
ip route | grep -q "^$VMLET_COMPOSE_SUBNET " && left+=("route $VMLET_COMPOSE_SUBNET")
ip -br link | grep -q '^br-' && left+=("bridge $(ip -br link | awk '/^br-/ {print $1}')")
ip -br link | grep -q '^veth' && left+=("veth $(ip -br link | awk '/^veth/ {print $1}' | tr '\n' ' ')")
mounts_after=$(container_mounts)
[ "$mounts_after" -le "$mounts_before" ] || left+=("mounts ($mounts_before before, $mounts_after after)")
rules_after=$(iptables_rules)
if [ "$rules_before" != "$rules_after" ]; then
  diff <(echo "$rules_before") <(echo "$rules_after") >&2 || true
  # Others may change the host's rules meanwhile: what is the engine's counts.
  grep -qi -e docker -e "$VMLET_COMPOSE_SUBNET" -e 'br-' <<<"$rules_after" && left+=("iptables rules")
fi
[ ${#left[@]} -eq 0 ] || fail "left after docker compose down -v: ${left[*]}"
log "nothing left: no container, network, volume, route, bridge, veth, mount or iptables rule of the project"
step "ok"
log "compose end to end passed in $((SECONDS - started)) s ($(step_summary))"
