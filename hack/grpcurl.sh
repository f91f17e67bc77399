#!/usr/bin/env bash
# grpcurl, built from the Go module proxy into the cache (keyed by version) on first use, then
# run with the arguments given. Providers serve mutual TLS to the facade's identity only, so a
# call presents the facade's client pair: with VMLET_PROVIDER_CA, VMLET_PROVIDER_CERT and
# VMLET_PROVIDER_KEY set (`source .vmlet/env` after `make up` sets them) this adds
# `-cacert/-cert/-key` unless the arguments already choose (-plaintext, -insecure, -cacert):
#   source .vmlet/env && hack/grpcurl.sh 127.0.0.1:50051 list
#   hack/grpcurl.sh -cacert ca.crt -cert facade.crt -key facade.key HOST:50051 list
#   hack/grpcurl.sh -plaintext 127.0.0.1:50050 grpc.health.v1.Health/Check   # the health port
set -euo pipefail
GRPCURL_VERSION="${GRPCURL_VERSION:-v1.9.4}"
CACHE="${VMLET_CACHE:-$HOME/.cache/vmlet}"
bin="$CACHE/bin/grpcurl-$GRPCURL_VERSION"
if [ ! -x "$bin" ]; then
  printf '[grpcurl] building grpcurl %s from the Go module proxy\n' "$GRPCURL_VERSION" >&2
  mkdir -p "$CACHE/bin" "$CACHE/build/grpcurl-$GRPCURL_VERSION"
  CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local GOBIN="$CACHE/build/grpcurl-$GRPCURL_VERSION" \
    go install -trimpath -ldflags "-s -w" "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
  mv "$CACHE/build/grpcurl-$GRPCURL_VERSION/grpcurl" "$bin"
fi
tls=()
case " $* " in
  *" -plaintext "*|*" -insecure "*|*" -cacert "*|*" -cacert="*) ;;
  *)
    if [ -n "${VMLET_PROVIDER_CA:-}" ] && [ -n "${VMLET_PROVIDER_CERT:-}" ] \
        && [ -n "${VMLET_PROVIDER_KEY:-}" ]; then
      tls=(-cacert "$VMLET_PROVIDER_CA" -cert "$VMLET_PROVIDER_CERT" -key "$VMLET_PROVIDER_KEY")
    fi
    ;;
esac
exec "$bin" "${tls[@]}" "$@"
