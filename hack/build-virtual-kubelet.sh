#!/usr/bin/env bash
# Builds upstream virtual-kubelet (its own cmd/virtual-kubelet, which registers the mock provider)
# from the Go module proxy into the cache, keyed by version, as the contender that the scale
# benchmark runs beside the facade (issue 19, item 5). Prints the binary's path on stdout.
# A second run finds the binary in place and returns at once.
#
# Upstream's client has no QPS/burst flag: nodeutil.ClientsetFromEnv builds the clientset from the
# kubeconfig alone, so client-go's defaults (5 QPS, burst 10) throttle every call it makes. The
# benchmark wants it raised to match the facade (which has no client-side limit), so the build
# adds one line to that function through `go build -overlay` (the module's files stay as the proxy
# served them, in the cache only; nothing of upstream's is copied into the repo): the binary reads
# VK_CLIENT_QPS and VK_CLIENT_BURST from its environment, defaulting to 1000 and 2000 (what the
# bench gives kube-scheduler); a negative VK_CLIENT_QPS turns client-side rate limiting off.
set -euo pipefail

VK_VERSION="${VK_VERSION:-v1.14.1}"
VK_MODULE=github.com/virtual-kubelet/virtual-kubelet
CACHE="${VMLET_CACHE:-$HOME/.cache/vmlet}"
BIN="$CACHE/bin"
OUT="$BIN/virtual-kubelet-$VK_VERSION"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
mkdir -p "$BIN"

log() { printf '[build-virtual-kubelet %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# The same lock as hack/build-tools.sh: the machine has 2 cores, so one Go build into the cache at
# a time, and a second run waits for the first and then finds the binary in place.
exec 9>"$CACHE/build-tools.lock"
if ! flock -n 9; then
  log "another build into $CACHE is under way; waiting for it"
  flock 9
fi

if [ -x "$OUT" ]; then
  echo "$OUT"
  exit 0
fi

t0=$SECONDS
dir="$CACHE/build/virtual-kubelet-$VK_VERSION"
log "building virtual-kubelet $VK_VERSION with its mock provider (cold build: a few minutes on 2 cores)"
rm -rf "$dir"
mkdir -p "$dir/overlay"

# The module as the proxy serves it, copied into the build dir: the go command refuses an overlay
# of files beneath GOMODCACHE ("Files beneath GOMODCACHE must not be replaced"), so the build runs
# in a copy, as upstream's own main module: its go.mod and go.sum (no replace directives) give the
# build list exactly, and -mod=readonly keeps it so. The copy stays as served; the change below
# comes in through the overlay.
log "downloading $VK_MODULE@$VK_VERSION (go build fetches the modules it needs)"
modcache_src=$(cd "$dir" && go mod download -json "$VK_MODULE@$VK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[ -d "$modcache_src" ] || { log "go mod download gave no source dir for $VK_MODULE@$VK_VERSION"; exit 1; }
src="$dir/src"
cp -r "$modcache_src" "$src"
chmod -R u+w "$src"

# The overlay: client.go as served, with the clientset's config passed through raiseClientLimits
# before it is built, and one added file in the same package that defines it.
client="$src/node/nodeutil/client.go"
grep -q '^	return kubernetes.NewForConfig(config)$' "$client" \
  || { log "$client no longer ends ClientsetFromEnv as expected; the QPS patch needs a look"; exit 1; }
sed 's/^	return kubernetes.NewForConfig(config)$/	raiseClientLimits(config)\n&/' "$client" > "$dir/overlay/client.go"
cat > "$dir/overlay/zz_vmlet_client_limits.go" <<'EOF2'
package nodeutil

import (
	"os"
	"strconv"

	"k8s.io/client-go/rest"
)

// raiseClientLimits is vmlet's addition (hack/build-virtual-kubelet.sh): client-go's 5 QPS,
// burst 10, raised to VK_CLIENT_QPS/VK_CLIENT_BURST (default 1000/2000; QPS < 0: no limit).
func raiseClientLimits(c *rest.Config) {
	c.QPS, c.Burst = 1000, 2000
	if v, err := strconv.ParseFloat(os.Getenv("VK_CLIENT_QPS"), 32); err == nil {
		c.QPS = float32(v)
	}
	if v, err := strconv.Atoi(os.Getenv("VK_CLIENT_BURST")); err == nil {
		c.Burst = v
	}
}
EOF2
printf '{"Replace": {"%s": "%s", "%s": "%s"}}\n' \
  "$client" "$dir/overlay/client.go" \
  "$src/node/nodeutil/zz_vmlet_client_limits.go" "$dir/overlay/zz_vmlet_client_limits.go" \
  > "$dir/overlay.json"

log "go build $VK_MODULE/cmd/virtual-kubelet"
(cd "$src" && GOFLAGS=-mod=readonly go build -trimpath -overlay "$dir/overlay.json" \
  -ldflags "-s -w -X main.buildVersion=$VK_VERSION -X main.buildTime=1970-01-01T00:00:00Z" \
  -o "$OUT.tmp" ./cmd/virtual-kubelet)
mv "$OUT.tmp" "$OUT"
log "built virtual-kubelet in $((SECONDS - t0)) s"
echo "$OUT"
