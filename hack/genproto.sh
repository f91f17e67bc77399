#!/usr/bin/env bash
# Regenerates the Python code of the provider contract from proto/ into lib/contract/vmlet/.
# `hack/genproto.sh --check` fails when the committed code is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${VMLET_PYTHON:-python}"
out=lib/contract
check=false
[ "${1:-}" = "--check" ] && check=true
if $check; then out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
rm -rf "$out/vmlet/provider/v1"
mkdir -p "$out/vmlet/provider/v1"
if ! msg=$("$PY" -m grpc_tools.protoc -I proto \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  proto/vmlet/provider/v1/*.proto 2>&1); then
  echo "$msg" >&2
  exit 1
fi
for d in "$out/vmlet" "$out/vmlet/provider" "$out/vmlet/provider/v1"; do
  echo '"""Generated from proto/ by hack/genproto.sh; do not edit."""' > "$d/__init__.py"
done
if $check; then
  if ! diff -r -q "$out/vmlet" lib/contract/vmlet; then
    echo "generated code is stale: run hack/genproto.sh and commit the result" >&2
    exit 1
  fi
  echo "generated code is current"
fi
