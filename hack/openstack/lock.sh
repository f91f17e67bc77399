#!/usr/bin/env bash
# Re-resolves hack/openstack/requirements.txt from requirements.in. The release's own
# upper-constraints are not reachable from here, so the set is pinned the way they are made: every
# library at the newest version uploaded before the release day (OS_RELEASE_DATE), while the service
# packages themselves may be newer stable point releases of that same series.
# Run it only when moving to another release or point release; commit the result.
set -euo pipefail
cd "$(dirname "$0")"
OS_RELEASE_DATE="${OS_RELEASE_DATE:-2025-10-02T00:00:00Z}"   # 2025.2 "Flamingo" shipped 2025-10-01
UV=$(bash ../uv.sh)
late=()
for p in nova keystone glance openstack-placement neutron cinder; do late+=(--exclude-newer-package "$p=2100-01-01T00:00:00Z"); done
"$UV" pip compile requirements.in --python-version 3.11 --exclude-newer "$OS_RELEASE_DATE" "${late[@]}" \
  --custom-compile-command "hack/openstack/lock.sh" -o requirements.txt
