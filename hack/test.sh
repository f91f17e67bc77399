#!/usr/bin/env bash
# `make test`: static checks, then every test (units and integration on real peers).
# pytest's exit code 5 (no tests collected) is a failure here: a run that tested nothing must not pass.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${UV_PROJECT_ENVIRONMENT:?run through make}"
export PATH="$VENV/bin:$PATH"
echo "== static checks"
bash hack/lint.sh || exit 1
echo "== test dependencies"
bash hack/install-test-deps.sh || exit 1
echo "== tests"
pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: failing the run on purpose" >&2
  exit 1
fi
exit $rc
