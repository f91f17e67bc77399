#!/usr/bin/env bash
# Builds the real peers vmlet is tested against, from the Go module proxy, into a cache outside
# the repo keyed by version: kube-apiserver, kube-scheduler, kube-controller-manager, kubectl, etcd,
# vcsim, metrics-server, and buf (hack/lint.sh checks the contract with it); `worker` builds kubelet
# and kube-proxy (for hack/worker-e2e.sh, which asks for them). `kubectl-into DIR`
# also links kubectl into DIR (the virtualenv's bin); `buf-path` prints buf's path.
# A second run finds every binary in place and returns at once.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
GOVMOMI_VERSION="${GOVMOMI_VERSION:-v0.46.3}"
METRICS_SERVER_VERSION="${METRICS_SERVER_VERSION:-v0.8.0}"
BUF_VERSION="${BUF_VERSION:-v1.75.0}"
CACHE="${VMLET_CACHE:-$HOME/.cache/vmlet}"
BIN="$CACHE/bin"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
mkdir -p "$BIN"

log() { printf '[build-tools %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# One build at a time per cache: a second run (another make, a test's fixture) waits for the first
# and then finds the binaries in place, instead of building the same ones beside it.
exec 9>"$CACHE/build-tools.lock"
if ! flock -n 9; then
  log "another build of the peers into $CACHE is under way; waiting for it"
  flock 9
fi

# Prints the path of a cached binary, building it first when it is missing.
have() { [ -x "$BIN/$1" ]; }

# With arguments, builds those k8s.io/kubernetes/cmd binaries instead of the control plane's.
build_k8s() {
  local dir="$CACHE/build/kubernetes-$K8S_VERSION" minor staging godebug
  local want=(kube-apiserver kube-scheduler kube-controller-manager kubectl)
  [ $# -gt 0 ] && want=("$@")
  local missing=()
  for b in "${want[@]}"; do have "$b-$K8S_VERSION" || missing+=("$b"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "building ${missing[*]} $K8S_VERSION (cold build: ~10-20 min on 2 cores)"
  mkdir -p "$dir"
  local gomod
  gomod=$(cd "$dir" && go list -m -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  staging=$(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod")
  godebug=$(grep '^godebug' "$gomod" || true)
  {
    echo "module vmlet.local/k8sbuild"
    echo "go 1.24.0"
    [ -n "$godebug" ] && echo "$godebug"
    echo "require k8s.io/kubernetes $K8S_VERSION"
    for m in $staging; do echo "replace $m => $m v0.$minor.${K8S_VERSION##*.}"; done
  } > "$dir/go.mod"
  local pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  (cd "$dir" && log "downloading modules" && go mod download k8s.io/kubernetes)
  for b in "${missing[@]}"; do
    log "go build $b"
    (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$BIN/$b-$K8S_VERSION.tmp" "k8s.io/kubernetes/cmd/$b")
    mv "$BIN/$b-$K8S_VERSION.tmp" "$BIN/$b-$K8S_VERSION"
    log "built $b"
  done
}

build_etcd() {
  have "etcd-$ETCD_VERSION" && return 0
  local dir="$CACHE/build/etcd-$ETCD_VERSION"
  log "building etcd $ETCD_VERSION"
  mkdir -p "$dir"
  printf 'module vmlet.local/etcdbuild\ngo 1.24.0\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$dir/go.mod"
  printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' > "$dir/main.go"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd-$ETCD_VERSION.tmp" .)
  mv "$BIN/etcd-$ETCD_VERSION.tmp" "$BIN/etcd-$ETCD_VERSION"
  log "built etcd"
}

build_vcsim() {
  have "vcsim-$GOVMOMI_VERSION" && return 0
  log "building vcsim (govmomi $GOVMOMI_VERSION)"
  GOBIN="$CACHE/build/vcsim-$GOVMOMI_VERSION" go install -trimpath -ldflags "-s -w" "github.com/vmware/govmomi/vcsim@$GOVMOMI_VERSION"
  mv "$CACHE/build/vcsim-$GOVMOMI_VERSION/vcsim" "$BIN/vcsim-$GOVMOMI_VERSION"
  log "built vcsim"
}

build_metrics_server() {
  have "metrics-server-$METRICS_SERVER_VERSION" && return 0
  local dir="$CACHE/build/metrics-server-$METRICS_SERVER_VERSION"
  log "building metrics-server $METRICS_SERVER_VERSION (~4 min cold on 2 cores)"
  GOBIN="$dir" go install -trimpath \
    -ldflags "-s -w -X k8s.io/client-go/pkg/version.gitVersion=$METRICS_SERVER_VERSION" \
    "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"
  mv "$dir/metrics-server" "$BIN/metrics-server-$METRICS_SERVER_VERSION"
  log "built metrics-server"
}

build_buf() {
  have "buf-$BUF_VERSION" && return 0
  local dir="$CACHE/build/buf-$BUF_VERSION" t0=$SECONDS
  log "building buf $BUF_VERSION"
  GOBIN="$dir" go install -trimpath -ldflags "-s -w" "github.com/bufbuild/buf/cmd/buf@$BUF_VERSION"
  mv "$dir/buf" "$BIN/buf-$BUF_VERSION"
  log "built buf in $((SECONDS - t0)) s"
}

# Links the cached kubectl into $1, so that the virtualenv's bin/ (first on PATH for make test,
# and for `kubectl vm`) has the kubectl of the control plane's version.
link_kubectl() {
  build_k8s
  ln -sfn "$BIN/kubectl-$K8S_VERSION" "$1/kubectl"
}

case "${1:-all}" in
  all) build_buf; build_vcsim; build_etcd; build_metrics_server; build_k8s ;;
  kubectl-into) link_kubectl "${2:?usage: $0 kubectl-into DIR}" ;;
  k8s) build_k8s ;;
  # The binaries of a real worker node, which hack/worker-e2e.sh builds when they are missing.
  worker) build_k8s kubelet kube-proxy ;;
  etcd) build_etcd ;;
  vcsim) build_vcsim ;;
  metrics-server) build_metrics_server ;;
  buf) build_buf ;;
  buf-path) build_buf; echo "$BIN/buf-$BUF_VERSION" ;;
  *) echo "usage: $0 [all|k8s|worker|etcd|vcsim|metrics-server|buf|buf-path|kubectl-into DIR]" >&2; exit 2 ;;
esac
