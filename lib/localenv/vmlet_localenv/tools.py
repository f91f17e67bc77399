"""Where the Go-built peers live: a cache outside the repo, keyed by version."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = [
    "ETCD_VERSION", "GOVMOMI_VERSION", "K8S_VERSION", "METRICS_SERVER_VERSION", "binary",
    "cache_dir",
]

K8S_VERSION = os.environ.get("K8S_VERSION", "v1.34.4")
ETCD_VERSION = os.environ.get("ETCD_VERSION", "v3.6.16")
GOVMOMI_VERSION = os.environ.get("GOVMOMI_VERSION", "v0.46.3")
METRICS_SERVER_VERSION = os.environ.get("METRICS_SERVER_VERSION", "v0.8.0")

_VERSIONS = {
    "kube-apiserver": K8S_VERSION,
    "kube-scheduler": K8S_VERSION,
    "kube-controller-manager": K8S_VERSION,
    "kubectl": K8S_VERSION,
    "etcd": ETCD_VERSION,
    "vcsim": GOVMOMI_VERSION,
    "metrics-server": METRICS_SERVER_VERSION,
}
_BUILD_TARGET = {"etcd": "etcd", "vcsim": "vcsim", "metrics-server": "metrics-server"}


def cache_dir() -> Path:
    return Path(os.environ.get("VMLET_CACHE", Path.home() / ".cache" / "vmlet"))


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def binary(name: str) -> Path:
    """Return the cached binary ``name``, building it with hack/build-tools.sh when missing."""
    path = cache_dir() / "bin" / f"{name}-{_VERSIONS[name]}"
    if not path.exists():
        script = _repo_root() / "hack" / "build-tools.sh"
        subprocess.run(["bash", str(script), _BUILD_TARGET.get(name, "k8s")], check=True)
    return path
