"""Where the apiserver is and who we are to it: a kubeconfig file, or the in-cluster account."""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KubeConfig"]

_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class KubeConfig:
    """Server URL, TLS material and credentials for one apiserver."""

    server: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    insecure: bool = False

    @classmethod
    def from_file(cls, path: str | Path, context: str | None = None) -> KubeConfig:
        doc: dict[str, Any] = yaml.safe_load(Path(path).read_text())
        base = Path(path).resolve().parent
        ctx_name = context or doc.get("current-context")
        ctx = _named(doc.get("contexts", []), ctx_name, "context")["context"]
        cluster = _named(doc.get("clusters", []), ctx["cluster"], "cluster")["cluster"]
        user = _named(doc.get("users", []), ctx["user"], "user").get("user", {})

        def file_or_data(file_key: str, data_key: str, section: dict[str, Any]) -> str | None:
            if section.get(file_key):
                p = Path(section[file_key])
                return str(p if p.is_absolute() else base / p)
            if section.get(data_key):
                tmp = tempfile.NamedTemporaryFile(delete=False, prefix="vmlet-kc-")
                tmp.write(base64.b64decode(section[data_key]))
                tmp.close()
                os.chmod(tmp.name, 0o600)
                return tmp.name
            return None

        return cls(
            server=cluster["server"].rstrip("/"),
            ca_file=file_or_data("certificate-authority", "certificate-authority-data", cluster),
            cert_file=file_or_data("client-certificate", "client-certificate-data", user),
            key_file=file_or_data("client-key", "client-key-data", user),
            token=user.get("token"),
            token_file=user.get("tokenFile"),
            insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        )

    @classmethod
    def in_cluster(cls) -> KubeConfig:
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if ":" in host:
            host = f"[{host}]"
        return cls(server=f"https://{host}:{port}", ca_file=str(_SA_DIR / "ca.crt"),
                   token_file=str(_SA_DIR / "token"))

    @classmethod
    def load(cls, kubeconfig: str | None) -> KubeConfig:
        """The kubeconfig given, else in-cluster when running in a pod, else $KUBECONFIG."""
        if kubeconfig:
            return cls.from_file(kubeconfig)
        if os.environ.get("KUBERNETES_SERVICE_HOST") and _SA_DIR.exists():
            return cls.in_cluster()
        env = os.environ.get("KUBECONFIG")
        if env:
            return cls.from_file(env.split(os.pathsep)[0])
        return cls.from_file(Path.home() / ".kube" / "config")

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def bearer_token(self) -> str | None:
        """The token to send; a token file is re-read so rotated tokens are picked up."""
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return self.token


def _named(items: list[dict[str, Any]], name: str | None, what: str) -> dict[str, Any]:
    for item in items:
        if item.get("name") == name:
            return item
    raise ValueError(f"kubeconfig has no {what} named {name!r}")
