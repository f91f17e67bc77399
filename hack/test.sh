#!/usr/bin/env bash
# `make test`: static checks, then every test (units and integration on real peers), then the
# deployment end to end (images, compose, a real worker node).
# pytest's exit code 5 (no tests collected) is a failure here: a run that tested nothing must not pass.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
VENV="${UV_PROJECT_ENVIRONMENT:?run through make}"
export PATH="$VENV/bin:$PATH"
echo "== static checks"
bash hack/lint.sh || exit 1
echo "== test dependencies"
bash hack/install-test-deps.sh || exit 1
echo "== tests"
# A base temp dir of this run's own: pytest prunes /tmp/pytest-of-<user> down to its 3 newest,
# which deletes the directories of a run still in progress when others start beside it.
basetemp=$(mktemp -d "${TMPDIR:-/tmp}/vmlet-test-XXXXXX")
trap 'rm -rf "$basetemp"' EXIT
# Two workers (pytest-xdist; VMLET_TEST_WORKERS=N for another count, 0 for none), each running
# whole files, so module fixtures stay on one worker; each worker has its own session fixtures
# (control plane, vcsim, OpenStack). Most integration tests wait on their peers more than they
# compute: on 2 cores two workers take 34 min where one took 60.
# Set-up installs every peer: a test that skips here is a failure (see conftest.py).
VMLET_NO_SKIP=1 pytest -n "${VMLET_TEST_WORKERS:-2}" --dist loadfile --basetemp "$basetemp" \
  --durations=30 "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: failing the run on purpose" >&2
  rc=1
fi
# The images, compose and a real worker node (hack/deploy-e2e.sh), also when pytest failed; not
# when pytest was given arguments (a chosen subset of the tests).
if [ $# -eq 0 ]; then
  echo "== deployment end to end"
  bash hack/deploy-e2e.sh || rc=1
fi
exit $rc
