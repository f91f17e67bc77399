#!/usr/bin/env bash
# grpcurl, built from the Go module proxy into the cache (keyed by version) on first use, then
# run with the arguments given: `hack/grpcurl.sh -plaintext 127.0.0.1:50051 list`.
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
exec "$bin" "$@"
