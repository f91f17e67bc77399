#!/usr/bin/env bash
# Static checks: the contract (buf lint, and buf breaking against the contract as last released
# on main), the generated contract is current, ruff, mypy on the hand-written code, import-linter.
set -euo pipefail
cd "$(dirname "$0")/.."
export BUF_CACHE_DIR="${VMLET_CACHE:-$HOME/.cache/vmlet}/buf"

# The released contract is proto/ at the merge-base of HEAD and main (origin/main in a clone
# without a local main; VMLET_CONTRACT_BASE=REF names another, e.g. a release tag): on main
# that is the last commit, so only changes not yet released are compared.
check_contract() {
  local buf ref base tmp rc=0
  buf=$(bash hack/build-tools.sh buf-path)
  echo "buf lint: proto/ follows Buf's STANDARD rules, every element commented (buf.yaml)"
  "$buf" lint || return $?
  for ref in ${VMLET_CONTRACT_BASE:-main origin/main}; do
    base=$(git merge-base HEAD "$ref" 2>/dev/null) && break
  done
  if [ -z "${base:-}" ]; then
    echo "buf breaking: no ${VMLET_CONTRACT_BASE:-main or origin/main} in this git repository to compare" \
      "proto/ with; fetch main, or name a ref with VMLET_CONTRACT_BASE" >&2
    return 1
  fi
  echo "buf breaking: proto/ keeps the wire, JSON and generated code of proto/ at ${base:0:12} ($ref)"
  tmp=$(mktemp -d)
  git archive "$base" proto | tar -x -C "$tmp"
  "$buf" breaking --against "$tmp/proto" || rc=$?
  rm -rf "$tmp"
  if [ $rc -ne 0 ]; then
    echo "buf breaking: the change above breaks the released contract; an intentional break needs a" \
      "new package version (vmlet.provider.v2) or a breaking.ignore_only in buf.yaml saying why" >&2
  fi
  return $rc
}

check_contract
bash hack/genproto.sh --check
ruff check .
mypy lib/api/vmlet_api lib/localenv/vmlet_localenv lib/contract/vmlet_contract lib/conformance/vmlet_conformance services/*/vmlet_* tools/*/vmlet_*
lint-imports --no-cache
