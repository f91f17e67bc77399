#!/usr/bin/env bash
# A real worker node in a network namespace of its own: containerd (Debian's, with its own root,
# state, socket and config under WORK), the kubelet and kube-proxy (hack/build-tools.sh worker).
#   bash hack/worker/node.sh up WORK      # WORK/node.env names the node (written by worker-e2e.sh)
#   bash hack/worker/node.sh down WORK    # stops and removes everything `up` made; idempotent
# WORK/node.env sets NS (the netns), NODE, NODE_IP (the worker's end of the link), HOST_IP (the
# host's end: the apiserver's relay and the cluster DNS), POD_CIDR and POD_GW (the CNI bridge's
# subnet and address), CP (the directory hack/lib/controlplane.py fills: CA, kubeconfigs,
# serving pair) and IMAGES (a `docker save` tarball side-loaded into containerd).
# The daemons enter the worker's network namespace only (nsenter --net): the kubelet and
# containerd share the host's mount namespace, as they must to see each other's mounts, so
# `down` unmounts what they leave under WORK (container roots, shm, pod netns, volumes). Their
# iptables rules live in the worker's namespace and go with it.
set -euo pipefail
cmd="${1:?usage: $0 up|down WORK}"
W="$(realpath -m "${2:?usage: $0 up|down WORK}")"
# shellcheck source=/dev/null
source "$W/node.env"
CACHE="${VMLET_CACHE:-$HOME/.cache/vmlet}"
K8S_VERSION="${K8S_VERSION:-v1.34.4}"
SOCK="$W/containerd/containerd.sock"
log() { printf '[worker-node %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
in_ns() { nsenter --net="/run/netns/$NS" -- "$@"; }
ctr_() { ctr --address "$SOCK" -n k8s.io "$@"; }

# Starts "$@" in the worker's namespace, detached, logging to WORK/logs/NAME.log; pid in WORK/pids.
spawn() {
  local name=$1
  shift
  setsid nsenter --net="/run/netns/$NS" -- "$@" >"$W/logs/$name.log" 2>&1 </dev/null &
  echo "$!" >"$W/pids/$name"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local limit=$1 what=$2 t0=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ $((SECONDS - t0)) -lt "$limit" ] || { log "$what: not ready after $limit s"; return 1; }
    sleep 0.5
  done
}

write_configs() {
  # The kubelet asks for oom_score_adj -998 for every pod sandbox (-997 for Guaranteed pods);
  # lowering it takes CAP_SYS_RESOURCE, which some machines (this one's sandbox among them) keep
  # out of root's bounding set, and runc then fails with "failed to update
  # /proc/self/oom_score_adj: Permission denied". Without it, containerd clamps the scores to
  # its own (restrict_oom_score_adj, meant for rootless).
  local restrict_oom=false
  (( (16#$(awk '/^CapEff:/ {print $2}' /proc/self/status) >> 24) & 1 )) || restrict_oom=true
  mkdir -p "$W/containerd" "$W/cni/net.d" "$W/cni/ipam" "$W/kubelet" "$W/pod-logs" "$W/logs" "$W/pids"
  cat >"$W/containerd/config.toml" <<TOML
version = 2
root = "$W/containerd/root"
state = "$W/containerd/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$W/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/vmlet/pause:local"
  # Pod network namespaces under the state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = $restrict_oom
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "${VMLET_WORKER_RUNC:-/usr/sbin/runc}"
        Root = "$W/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$W/cni/net.d"
    max_conf_num = 1
TOML
  # A bridge in the worker's namespace; host-local keeps its leases under WORK.
  cat >"$W/cni/net.d/10-vmlet-worker.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "vmlet-worker",
  "plugins": [
    {
      "type": "bridge", "bridge": "vmletcni0", "isGateway": true, "ipMasq": false,
      "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$W/cni/ipam",
               "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GW"}]],
               "routes": [{"dst": "0.0.0.0/0"}]}
    }
  ]
}
JSON
  echo "nameserver $HOST_IP" >"$W/resolv.conf"
  cat >"$W/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $CP/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $CP/kubelet-serving.crt
tlsPrivateKeyFile: $CP/kubelet-serving.key
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
# cgroups v1 on this machine kind: the kubelet warns and runs.
failCgroupV1: false
failSwapOn: false
clusterDNS: [$HOST_IP]
clusterDomain: cluster.local
resolvConf: $W/resolv.conf
podLogsDir: $W/pod-logs
# A shared machine's disk: no eviction or image GC because of what others keep on it.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
YAML
  cat >"$W/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CP/kube-proxy.kubeconfig}
hostnameOverride: $NODE
bindAddress: $NODE_IP
mode: iptables
clusterCIDR: $POD_CIDR
nodePortAddresses: [primary]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Pods reach Services on their own bridge: replies go back through the node, not around it.
iptables: {masqueradeAll: true}
# The conntrack table is the host's: leave its sizes and timeouts alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
}

up() {
  write_configs
  # The host sysctls the kubelet sets (protectKernelDefaults: false), restored by `down`.
  [ -f "$W/sysctl.saved" ] || sysctl -n vm.overcommit_memory kernel.panic kernel.panic_on_oops \
    | paste -sd' ' >"$W/sysctl.saved"
  in_ns sysctl -qw net.ipv4.ip_forward=1
  in_ns sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
  log "containerd (socket $SOCK)"
  spawn containerd /usr/bin/containerd --config "$W/containerd/config.toml"
  wait_for 30 containerd ctr_ version || { tail -20 "$W/logs/containerd.log" >&2; return 1; }
  log "side-loading $(basename "$IMAGES") into containerd"
  ctr_ images import "$IMAGES" >/dev/null
  ctr_ images ls -q | grep -v '^sha256:' | sed 's/^/  /' >&2
  log "kube-proxy"
  spawn kube-proxy "$CACHE/bin/kube-proxy-$K8S_VERSION" --config="$W/kube-proxy.yaml" --v=1
  log "kubelet $NODE ($NODE_IP)"
  spawn kubelet "$CACHE/bin/kubelet-$K8S_VERSION" --config="$W/kubelet/config.yaml" \
    --kubeconfig="$CP/kubelet.kubeconfig" --root-dir="$W/kubelet" --cert-dir="$W/kubelet/pki" \
    --hostname-override="$NODE" --node-ip="$NODE_IP" --v=1
  wait_for 60 kubelet in_ns curl -sf http://127.0.0.1:10248/healthz \
    || { tail -30 "$W/logs/kubelet.log" >&2; return 1; }
}

stop_pid() {  # stop_pid NAME: TERM, then KILL after 15 s
  local f="$W/pids/$1" pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# The kubelet's cgroups (cgroupfs driver): kubepods under every v1 hierarchy.
kubepods_cgroups() {
  find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice -depth -type d 2>/dev/null || true
}

down() {
  set +e
  stop_pid kubelet
  stop_pid kube-proxy
  # What runs in the pods, then the shims that watched them (named by this containerd's socket).
  for d in $(kubepods_cgroups); do
    [ -f "$d/cgroup.procs" ] && xargs -r kill -KILL <"$d/cgroup.procs" 2>/dev/null
  done
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q -- "-address $SOCK " && kill -KILL "${p#/proc/}" 2>/dev/null
  done
  stop_pid containerd
  sleep 0.5
  for d in $(kubepods_cgroups); do rmdir "$d" 2>/dev/null; done
  # Mounts under WORK, deepest first (container roots, shm, pod netns, volumes).
  awk -v w="$W/" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
  if [ -f "$W/sysctl.saved" ]; then
    read -r om panic oops <"$W/sysctl.saved"
    sysctl -qw vm.overcommit_memory="$om" kernel.panic="$panic" kernel.panic_on_oops="$oops"
    rm -f "$W/sysctl.saved"
  fi
  # The node's state, so that the next run starts from nothing (the images tarball stays).
  if awk -v w="$W/" 'index($2, w) == 1 {n++} END {exit n > 0}' /proc/self/mounts; then
    rm -rf "${W:?}"/{containerd,kubelet,cni,pod-logs,resolv.conf,kube-proxy.yaml}
  fi
  # What the kubelet, containerd and libcni keep at fixed paths outside WORK: libcni's cached
  # results (this network's, and the loopback ones naming a pod netns under WORK), the kubelet's
  # links in /var/log/containers and its device-plugin socket, the shims' socket directory.
  rm -f /var/lib/cni/results/vmlet-worker-*
  grep -l -F "\"$W/" /var/lib/cni/results/cni-loopback-* 2>/dev/null | xargs -r rm -f
  find /var/log/containers -maxdepth 1 -type l -lname "$W/*" -delete 2>/dev/null
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  rmdir /var/lib/cni/results /var/lib/cni /var/log/containers /var/lib/kubelet/device-plugins \
    /var/lib/kubelet /run/containerd/s /run/containerd/fifo /run/containerd 2>/dev/null
  set -e
}

case "$cmd" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down WORK" >&2; exit 2 ;;
esac
