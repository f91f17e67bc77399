#!/usr/bin/env bash
# Prints the path of the project's uv (UV_VERSION, from PyPI into VMLET_CACHE), installing it first
# when missing. Every set-up script gets uv here: a virtualenv that uv made has no pip, so nothing
# installs with `python -m pip` once the workspace virtualenv is first on PATH.
set -euo pipefail
UV_VERSION="${UV_VERSION:-0.13.8}"
CACHE="${VMLET_CACHE:-$HOME/.cache/vmlet}"
UV_HOME="$CACHE/uv-$UV_VERSION"
if [ ! -x "$UV_HOME/bin/uv" ]; then
  # A Python that has pip: the one named by PYTHON, else the first python3 on PATH that has it.
  py=""
  for cand in "${PYTHON:-}" python3 /usr/bin/python3 /usr/local/bin/python3; do
    [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 && "$cand" -m pip --version >/dev/null 2>&1 \
      && { py="$cand"; break; }
  done
  if [ -z "$py" ]; then
    echo "no python3 with pip to install uv $UV_VERSION from PyPI (Debian: apt-get install python3-pip)" >&2
    exit 1
  fi
  printf '[uv %(%H:%M:%S)T] installing uv %s into %s\n' -1 "$UV_VERSION" "$UV_HOME" >&2
  rm -rf "$UV_HOME.tmp"
  "$py" -m pip install --quiet --disable-pip-version-check --target "$UV_HOME.tmp" "uv==$UV_VERSION"
  rm -rf "$UV_HOME" && mv "$UV_HOME.tmp" "$UV_HOME"
fi
echo "$UV_HOME/bin/uv"
