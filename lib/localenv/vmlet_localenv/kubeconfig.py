"""Kubeconfig files for the local control plane's clients."""

from __future__ import annotations

from pathlib import Path

import yaml

from vmlet_localenv.pki import CertPair
from vmlet_localenv.private import write_private

__all__ = ["write_kubeconfig"]


def write_kubeconfig(
    path: Path, *, server: str, ca: Path, client: CertPair | None = None, token: str | None = None,
    user: str = "user", cluster: str = "vmlet-local",
) -> Path:
    """Write a kubeconfig with one cluster, one user (cert or token) and one current context."""
    creds: dict[str, str] = {}
    if client is not None:
        creds = {"client-certificate": str(client.cert), "client-key": str(client.key)}
    if token is not None:
        creds["token"] = token
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server,
                                                   "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    }
    return write_private(path, yaml.safe_dump(doc, sort_keys=False))
