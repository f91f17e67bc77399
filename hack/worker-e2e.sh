#!/usr/bin/env bash
# A real worker node joined to make up's control plane, and `kubectl apply -k k8s/overlays/memory`
# running on it, end to end:
#   bash hack/worker-e2e.sh            # all of it; everything it started is torn down at the end
# 1. kubelet and kube-proxy of the control plane's release (hack/build-tools.sh worker, from the
#    Go module proxy, cached by version); Debian's containerd, runc, CNI plugins, iptables
#    (hack/worker/install-deps.sh); the images: vmlet's (`make images`, always: cached) and a
#    pause image made here, saved for containerd (hack/worker/images.sh).
# 2. The worker's network namespace and its link to the host: a veth pair in a /30 of
#    198.19.0.0/16 that no route covers, and a /24 beside it for the pods (route on the host).
# 3. make up's control plane (hack/lib/controlplane.py), advertising the host's end of the
#    link, whose apiserver port socat relays to the loopback one; the worker's certificates from
#    its CA; a minimal cluster DNS for Service names (hack/worker/clusterdns.py) on the same
#    address.
# 4. The node (hack/worker/node.sh up): containerd, kube-proxy and the kubelet in the worker's
#    namespace; the Node is Ready.
# 5. kubectl apply -k k8s/overlays/memory: the provider-PKI Job completes, the facade and the
#    memory provider are Available (Pod Security "restricted", the probes); `kubectl logs` and
#    `exec` reach a facade pod through the real kubelet; the facade registers its virtual nodes; a
#    VirtualMachine goes Running; `kubectl logs` and `exec` reach its pod through the facade.
# 6. The vSphere overlay instead (vmlet's namespace deleted, the CRDs kept), against vcsim on the
#    host's end of the link with a certificate of the cluster's CA; provider.toml and the
#    credentials Secret edited as a user would, in an overlay of the shipped one (WORK/vsphere);
#    hack/worker/guestip.py plays VMware Tools. A VirtualMachine goes Running; `kubectl logs` (exec
#    is SSH to the guest, which vcsim has not).
# 7. VMS VirtualMachines (VMLET_WORKER_VMS, default 200: issue 19 asks 200, issue 22 50): half
#    applied, `kubectl rollout restart` of the facade (2 replicas, maxSurge 1, maxUnavailable 0)
#    and the provider (Recreate) while those are being created, the other half applied one by one
#    during the rollout; all Running, and vcsim holds exactly one VM per VirtualMachine (no
#    duplicate, no orphan); then all deleted.
# Teardown (also on failure): the node (processes, mounts, cgroups, sysctls), vcsim, the relay,
# the DNS, the control plane, the namespace with its iptables rules, the link and the route.
# Checks nothing is left: no mount under the work dir, no netns, no veth, the host's iptables as
# before (else the run fails). WORK is .vmlet/worker.
# Each step prints its time, and the last line all of them. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
export VMLET_CACHE="${VMLET_CACHE:-$HOME/.cache/vmlet}"
K8S_VERSION="${K8S_VERSION:-v1.34.4}"
DOCKER="${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}"
export DOCKER K8S_VERSION
VMS="${VMLET_WORKER_VMS:-200}"
W="$PWD/.vmlet/worker"
NS=vmlet-worker
NODE=vmlet-worker
HOST_DEV=vmletw0
E2E=worker-e2e
# shellcheck source=hack/lib/e2e.sh
source hack/lib/e2e.sh

[ "$(id -u)" -eq 0 ] || fail "run as root: containerd, the kubelet and network namespaces need it"
[ ! -e "/run/netns/$NS" ] || fail "netns $NS exists: a previous run was not torn down (bash hack/worker/node.sh down $W; ip netns del $NS)"

# --- what this script started, stopped again on any exit -----------------------------------------
engine=""
cp_pid=""
relay_pid=""
dns_pid=""
vcsim_pid=""
guest_pid=""
node_up=""
cleanup() {
  local rc=$?
  set +e
  if [ $rc -ne 0 ] && [ -n "$node_up" ]; then
    kubectl get pods -A -o wide >&2
    kubectl get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -25 >&2
    for f in kubelet containerd kube-proxy; do
      log "last lines of $f.log:"; tail -15 "$W/logs/$f.log" >&2
    done
  fi
  [ -n "$node_up" ] && log "teardown: the node" && bash hack/worker/node.sh down "$W"
  stop_pid "$guest_pid"
  stop_pid "$vcsim_pid"
  stop_pid "$dns_pid"
  stop_pid "$relay_pid"
  if [ -n "$cp_pid" ]; then
    log "teardown: the control plane"
    stop_pid "$cp_pid"
  fi
  # The run's keys and secrets (the cluster's CA, vcsim's password); logs and images.tar stay.
  rm -rf "${W:?}/cp" "$W/vsphere" "$W/vsphere-password" "$W/vcsim-at-restart" "$W/node.env"
  ip netns del "$NS" 2>/dev/null            # its iptables rules, bridge and veth ends go with it
  ip link del "$HOST_DEV" 2>/dev/null       # and with the link, the host's route to the pods
  [ "$engine" = started ] && bash hack/images/dockerd.sh stop
  # What must not be left.
  local left=()
  [ -e "/run/netns/$NS" ] && left+=("netns $NS")
  ip link show "$HOST_DEV" >/dev/null 2>&1 && left+=("link $HOST_DEV")
  awk -v w="$W/" 'index($2, w) == 1 {n++} END {exit n > 0}' /proc/self/mounts || left+=("mounts under $W")
  compgen -G '/sys/fs/cgroup/*/kubepods' >/dev/null && left+=("kubepods cgroups")
  for p in "$W"/pids/*; do [ -s "$p" ] && kill -0 "$(cat "$p")" 2>/dev/null && left+=("process $(basename "$p")"); done
  if [ -n "${rules_before+x}" ] && [ "$rules_before" != "$(iptables_rules)" ]; then
    # Others may change the host's rules meanwhile: what names the node's counts.
    diff <(echo "$rules_before") <(iptables_rules) | tee /dev/stderr \
      | grep -q -e KUBE- -e CNI- -e "$HOST_DEV" -e "${POD_CIDR%.0/24}." -e "${HOST_IP%.1}." \
      && left+=("host iptables rules of the node")
  fi
  if [ ${#left[@]} -gt 0 ]; then
    log "LEFT BEHIND: ${left[*]}"
    rc=1
  fi
  [ $rc -ne 0 ] && log "FAILED after $((SECONDS - started)) s ($(step_summary))"
  [ $rc -eq 0 ] && [ ${#left[@]} -eq 0 ] && log "passed in $((SECONDS - started)) s ($(step_summary)); nothing left"
  exit $rc
}
trap cleanup EXIT

# --- 1. binaries, packages, images ---------------------------------------------------------------
step "1/7 kubelet and kube-proxy $K8S_VERSION, containerd/runc/CNI from Debian, the images"
setup_env
nice -n 10 bash hack/build-tools.sh worker
nice -n 10 bash hack/build-tools.sh vcsim
bash hack/worker/install-deps.sh
log "$(containerd --version | cut -d' ' -f1-3), runc $(runc --version | sed -n 's/^runc version //p'), kubelet $("$VMLET_CACHE/bin/kubelet-$K8S_VERSION" --version | cut -d' ' -f2)"
images=(vmlet/kubelet-facade:0.1.0 vmlet/memory-provider:0.1.0 vmlet/vmware-provider:0.1.0)
mkdir -p "$W"
chmod 700 "$W"
rm -rf "${W:?}"/{logs,pids,cp}
mkdir -p "$W/logs" "$W/pids"
engine=$(bash hack/images/dockerd.sh start)
# Always built (BuildKit's cache makes it quick when nothing changed): never a stale image;
# unless hack/deploy-e2e.sh has just built and verified them all (VMLET_IMAGES_FRESH).
if [ -z "${VMLET_IMAGES_FRESH:-}" ]; then
  log "building the images (make images: kubelet-facade memory-provider vmware-provider)"
  VMLET_KEEP_DOCKERD=1 nice -n 10 bash hack/images.sh kubelet-facade memory-provider vmware-provider
fi
bash hack/worker/images.sh "$W/images.tar" "${images[@]}"
[ "$engine" = started ] && bash hack/images/dockerd.sh stop
engine=""

# --- 2. the worker's namespace and link ----------------------------------------------------------
# Two /24s of 198.19.0.0/16 no route covers, from the bottom (compose and dockerd take theirs
# from the top): a /30 of the first for the link, the second for the pods.
read -r LINK POD_CIDR < <(free_subnets 2)
base=${LINK%.0/24}
HOST_IP=$base.1
NODE_IP=$base.2
POD_GW=${POD_CIDR%.0/24}.1
step "2/7 netns $NS: link $HOST_IP (host) - $NODE_IP (worker), pods $POD_CIDR"
rules_before=$(iptables_rules)
ip netns add "$NS"
ip link add "$HOST_DEV" type veth peer name eth0 netns "$NS"
ip addr add "$HOST_IP/30" dev "$HOST_DEV"
ip link set "$HOST_DEV" up
ip -n "$NS" addr add "$NODE_IP/30" dev eth0
ip -n "$NS" link set lo up
ip -n "$NS" link set eth0 up
ip -n "$NS" route add default via "$HOST_IP"
ip route add "$POD_CIDR" via "$NODE_IP" dev "$HOST_DEV"

# --- 3. the control plane ------------------------------------------------------------------------
step "3/7 the control plane, advertising $HOST_IP"
CP="$W/cp"
mkdir -p "$CP"
start_controlplane "$CP" "$W/logs/controlplane.log" "$HOST_IP" "$NODE" "$NODE_IP"
export KUBECONFIG="$CP/admin.kubeconfig"
PORT=$(cat "$CP/port")
# The apiserver listens on loopback only; the worker reaches it at the host's end of the link.
setsid socat "TCP-LISTEN:$PORT,bind=$HOST_IP,fork,reuseaddr" "TCP:127.0.0.1:$PORT" \
  >"$W/logs/relay.log" 2>&1 </dev/null &
relay_pid=$!
setsid "$PY" hack/worker/clusterdns.py "$HOST_IP" "$KUBECONFIG" >"$W/logs/clusterdns.log" 2>&1 </dev/null &
dns_pid=$!
log "the apiserver relayed at $HOST_IP:$PORT"

# --- 4. the node ---------------------------------------------------------------------------------
step "4/7 the node $NODE: containerd, kube-proxy, kubelet"
cat >"$W/node.env" <<ENV
NS=$NS
NODE=$NODE
NODE_IP=$NODE_IP
HOST_IP=$HOST_IP
POD_CIDR=$POD_CIDR
POD_GW=$POD_GW
CP=$CP
IMAGES=$W/images.tar
ENV
node_up=1
bash hack/worker/node.sh up "$W"
t0=$SECONDS
until kubectl get node "$NODE" >/dev/null 2>&1; do
  [ $((SECONDS - t0)) -lt 60 ] || fail "the kubelet did not register $NODE in 60 s"
  sleep 0.5
done
kubectl wait --for=condition=Ready --timeout=120s "node/$NODE" >/dev/null || fail "node $NODE not Ready"
log "node $NODE Ready after $((SECONDS - t0)) s: $(kubectl get node "$NODE" --no-headers -o wide | awk '{print $2, $5, $6, $NF}')"

# --- 5. vmlet on it ------------------------------------------------------------------------------
# Waits until the overlay just applied runs: the PKI Job, the provider and the facade.
wait_vmlet() {
  local provider=$1
  kubectl -n vmlet-system wait --for=condition=Complete --timeout=180s job/vmlet-pki >/dev/null \
    || fail "the provider-PKI Job did not complete"
  for d in "vmlet-provider-$provider" vmlet-facade; do
    kubectl -n vmlet-system rollout status --timeout=240s "deployment/$d" >/dev/null \
      || fail "deployment $d not available"
  done
  kubectl -n vmlet-system get pods -o wide >&2
}
# Waits for the facade's virtual nodes PREFIX-* (at least $2) to be Ready; prints their names.
virtual_nodes() {
  local prefix=$1 want=$2 t0=$SECONDS names=()
  until mapfile -t names < <(kubectl get nodes -o name | sed -n "s|^node/\($prefix-.*\)|\1|p") \
      && [ "${#names[@]}" -ge "$want" ]; do
    [ $((SECONDS - t0)) -lt 120 ] || { kubectl get nodes >&2; fail "the facade registered no $prefix-* nodes"; }
    sleep 1
  done
  kubectl wait --for=condition=Ready --timeout=120s "${names[@]/#/node/}" >/dev/null \
    || fail "virtual nodes ${names[*]} not Ready"
  printf '%s\n' "${names[@]}"
}
# A VirtualMachine NAME of PROVIDER from IMAGE on NODE.
vm_create() {
  kubectl apply -f - >/dev/null <<YAML
apiVersion: vmlet.io/v1alpha1
kind: VirtualMachine
metadata: {name: $1, namespace: default}
spec:
  provider: $2
  image: $3
  cpu: 1
  memory: 256Mi
  placement: {nodeName: $4}
YAML
}
vm_running() {  # vm_running NAME TIMEOUT
  local t0=$SECONDS
  until [ "$(kubectl get vm "$1" -o jsonpath='{.status.state}')" = Running ]; do
    if [ $((SECONDS - t0)) -ge "$2" ]; then
      kubectl get vm "$1" -o yaml >&2
      fail "VirtualMachine $1 is not Running after $2 s"
    fi
    sleep 0.5
  done
  log "VirtualMachine $1 Running on $(kubectl get vm "$1" -o jsonpath='{.status.nodeName}') after $((SECONDS - t0)) s"
}
# kubectl logs and exec of POD, through the apiserver to the kubelet API serving its node.
logs_exec() {
  local pod=$1 what=$2 t0=$SECONDS out
  shift 2
  until out=$(kubectl logs "$@" "$pod" --tail=2 2>&1); do
    [ $((SECONDS - t0)) -lt 90 ] || fail "kubectl logs $pod: $out"
    sleep 1
  done
  log "kubectl logs $pod ($what) after $((SECONDS - t0)) s: $(printf '%s' "$out" | tail -1 | cut -c1-120)"
  [ -z "${LOGS_ONLY:-}" ] || return 0
  out=$(kubectl exec "$@" "$pod" -- echo hello-from-worker-e2e 2>&1) || fail "kubectl exec $pod: $out"
  log "kubectl exec $pod -- echo ($what): $out"
}

step "5/7 kubectl apply -k k8s/overlays/memory"
kubectl apply -k k8s/overlays/memory >/dev/null
wait_vmlet memory
mapfile -t nodes < <(virtual_nodes vmlet-memory 2)
log "virtual nodes Ready: ${nodes[*]}"
# One name without `| head`: under pipefail, head leaving early can kill kubectl with SIGPIPE.
facade_pod=$(kubectl -n vmlet-system get pods -l app.kubernetes.io/component=facade \
  -o jsonpath='{.items[0].metadata.name}' 2>&1) || fail "no facade pod: $facade_pod"
facade_pod=pod/$facade_pod
logs_exec "$facade_pod" "the real kubelet at $NODE_IP" -n vmlet-system
vm=worker-mem-$(date +%s)
vm_create "$vm" memory debian-12 vmlet-memory-0
vm_running "$vm" 120
logs_exec "pod/$vm" "the facade pod's kubelet API"
kubectl delete vm "$vm" --wait=true --timeout=120s >/dev/null
log "VirtualMachine $vm deleted"

# --- 6. the vSphere overlay against vcsim --------------------------------------------------------
step "6/7 kubectl apply -k k8s/overlays/vsphere against vcsim at $HOST_IP:8989"
# From one overlay to the other: what the memory one made in vmlet's namespace goes (the CRDs and
# the VirtualMachines stay), and so do the nodes its facade registered.
kubectl delete namespace vmlet-system --timeout=120s >/dev/null
kubectl delete node "${nodes[@]}" >/dev/null
# vcsim on the host's end of the link, its certificate from the cluster's CA.
head -c 18 /dev/urandom | base64 >"$W/vsphere-password"
chmod 600 "$W/vsphere-password"
# VMS/2 hosts in its cluster and 1 standalone (2 CPUs each): room for step 7's one-CPU VMs.
HOSTS=$(((VMS + 1) / 2))
setsid "$VMLET_CACHE/bin/vcsim-${GOVMOMI_VERSION:-v0.46.3}" -l "$HOST_IP:8989" -username vmlet \
  -cluster 1 -host "$HOSTS" -standalone-host 1 -vm 1 \
  -password "$W/vsphere-password" -tlscert "$CP/vcsim.crt" -tlskey "$CP/vcsim.key" -E /dev/null \
  >"$W/logs/vcsim.log" 2>&1 </dev/null &
vcsim_pid=$!
# The user's edits of provider.toml and credentials.yaml, as an overlay of the shipped one.
mkdir -p "$W/vsphere"
cat >"$W/vsphere/provider.toml" <<TOML
[vsphere]
url = "https://$HOST_IP:8989/sdk"
username = "vmlet"
ca-file = "/etc/vmlet/vsphere-credentials/ca.crt"
node-prefix = "vsphere"
TOML
cat >"$W/vsphere/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: vmlet-system
resources: [$(realpath --relative-to="$W/vsphere" k8s/overlays/vsphere)]
configMapGenerator:
  - name: vmlet-provider-vsphere
    behavior: replace
    files: [provider.toml]
    options: {labels: {app.kubernetes.io/name: vmlet, app.kubernetes.io/component: provider}}
patches:
  - patch: |
      apiVersion: v1
      kind: Secret
      metadata: {name: vmlet-vsphere-credentials}
      stringData:
        password: "$(cat "$W/vsphere-password")"
        ca.crt: |
$(sed 's/^/          /' "$CP/ca.crt")
YAML
kubectl apply -k "$W/vsphere" >/dev/null
rm -f "$W/vsphere/kustomization.yaml"   # it holds the password
# hack/worker/guestip.py serve|count against this vcsim.
GUESTIP=(env "PYTHONPATH=$PWD/lib/localenv:$PWD/lib/api:$PWD/lib/contract${PYTHONPATH:+:$PYTHONPATH}"
         "$PY" hack/worker/guestip.py)
VCSIM=("$HOST_IP" 8989 vmlet "$W/vsphere-password" "$CP/ca.crt")
setsid "${GUESTIP[@]}" serve 198.19.250.0/24 "${VCSIM[@]}" >"$W/logs/guestip.log" 2>&1 </dev/null &
guest_pid=$!
wait_vmlet vsphere
mapfile -t nodes < <(virtual_nodes vsphere $((HOSTS + 1)))
log "virtual nodes Ready: ${nodes[*]}"
vm=worker-vs-$(date +%s)
vm_create "$vm" vsphere DC0_H0_VM0 "${nodes[0]}"
vm_running "$vm" 120
# Exec in a vSphere VM is SSH to its guest (spec.access), and vcsim runs no guest: logs only.
LOGS_ONLY=1 logs_exec "pod/$vm" "the facade pod's kubelet API"

# --- 7. rollout restart in the middle of VMS creations -------------------------------------------
step "7/7 $VMS VirtualMachines, the facade and the provider restarted in the middle"
kubectl delete vm "$vm" --wait=true --timeout=120s >/dev/null
batch=worker-batch-$(date +%s)
vm_doc() {  # vm_doc I...: the batch's VirtualMachines I..., spread over the virtual nodes
  for i in "$@"; do
    printf -- '---\napiVersion: vmlet.io/v1alpha1\nkind: VirtualMachine\nmetadata: {name: %s-%03d, namespace: default, labels: {batch: %s}}\nspec: {provider: vsphere, image: DC0_H0_VM0, cpu: 1, memory: 256Mi, placement: {nodeName: %s}}\n' \
      "$batch" "$i" "$batch" "${nodes[$((i % ${#nodes[@]}))]}"
  done
}
# The batch's states, counted: "3 Running, 22 Provisioning".
batch_states() {
  kubectl get vm -l "batch=$batch" -o jsonpath='{range .items[*]}{.status.state}{"\n"}{end}' \
    | sed 's/^$/no status/' | sort | uniq -c | awk '{c = $1; $1 = ""; printf "%s%s%s", (NR > 1 ? ", " : ""), c, $0}'
}
batch_running() {
  kubectl get vm -l "batch=$batch" -o jsonpath='{range .items[*]}{.status.state}{"\n"}{end}' | grep -c '^Running$' || true
}
vcsim_count() {
  "${GUESTIP[@]}" count "${VCSIM[@]}" | "$PY" -c 'import json, sys; print(len(json.load(sys.stdin)))'
}
# The restarts while the creations are under way: the first half applied at once, the restarts
# right after them, then the other half one by one while the new pods start and the old ones stop
# (maxUnavailable 0: the old ones keep working until the new ones are ready).
half=$((VMS / 2))
vm_doc $(seq 1 "$half") | kubectl apply -f - >/dev/null
states=$(batch_states)
vcsim_count >"$W/vcsim-at-restart" &
count_pid=$!
kubectl -n vmlet-system rollout restart deployment/vmlet-facade deployment/vmlet-provider-vsphere >/dev/null
log "rollout restart of the facade and the provider with $half of $VMS VirtualMachines applied ($states)"
for i in $(seq $((half + 1)) "$VMS"); do vm_doc "$i" | kubectl apply -f - >/dev/null; done
states=$(batch_states)
wait "$count_pid" || true
log "the other $((VMS - half)) applied one by one during the rollout ($states); vcsim held $(cat "$W/vcsim-at-restart") VMs just after the restarts began"
kubectl -n vmlet-system get pods --no-headers >&2
wait_vmlet vsphere
t0=$SECONDS
while :; do
  running=$(batch_running)
  [ "$running" -eq "$VMS" ] && break
  [ $((SECONDS - t0)) -lt 300 ] || fail "$running of $VMS VirtualMachines Running after 300 s"
  sleep 2
done
log "$VMS VirtualMachines Running $((SECONDS - t0)) s after the restarts"
uids=$(kubectl get vm -l "batch=$batch" -o jsonpath='{range .items[*]}{.metadata.uid}{"\n"}{end}' | sort)
counts=$("${GUESTIP[@]}" count "${VCSIM[@]}")
verdict=$("$PY" - "$counts" "$uids" "$VMS" <<'PY'
import json, sys
counts, uids, want = json.loads(sys.argv[1]), set(sys.argv[2].split()), int(sys.argv[3])
dups = {u: n for u, n in counts.items() if n > 1}
orphans = set(counts) - uids
missing = uids - set(counts)
print(f"{len(counts)} identities in vcsim, {len(dups)} duplicated, {len(orphans)} orphaned, {len(missing)} missing")
sys.exit(1 if dups or orphans or missing or len(uids) != want else 0)
PY
) || fail "after the restarts: $verdict"
log "vcsim: $verdict"
kubectl delete vm -l "batch=$batch" --wait=true --timeout=300s >/dev/null
log "$VMS VirtualMachines deleted; vcsim: $("${GUESTIP[@]}" count "${VCSIM[@]}")"
step "teardown"
