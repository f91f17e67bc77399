#!/usr/bin/env bash
# Static checks: the generated contract is current, ruff, and mypy on the hand-written code.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/genproto.sh --check
ruff check .
mypy lib/localenv/vmlet_localenv lib/contract/vmlet_contract lib/conformance/vmlet_conformance services/*/vmlet_* tools/*/vmlet_*
lint-imports --no-cache
