"""A facade serving its kubelet API on 127.0.0.1, beside a real control plane and one provider
of one node: what the kubelet API benchmarks (bench/kubelet_flood, bench/kubelet_streams) call."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.pki import CertificateAuthority
from vmlet_localenv.processes import free_port
from vmlet_localenv.stack import Stack


@dataclass(frozen=True)
class LoopbackFacade:
    """The running pieces: the kubelet API answers at 127.0.0.1:``port`` with a serving
    certificate of ``ca`` (the cluster's CA, so the apiserver reaches it for kubectl logs, exec
    and port-forward) and accepts the control plane's kubelet-client certificate."""

    cp: ControlPlane
    stack: Stack
    ca: CertificateAuthority
    port: int


@contextmanager
def loopback_facade(name: str, provider: str,
                    facade_args: Sequence[str] = ()) -> Iterator[LoopbackFacade]:
    """Start a control plane, the memory provider ``provider`` (node ``<provider>-0``) and a
    facade serving the kubelet API on loopback; stop them all on exit. ``name`` prefixes the
    temporary directory."""
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        directory = Path(tmp)
        cp = ControlPlane().start()
        try:
            ca = cp.pki.authority
            serving = ca.issue(f"{name}-kubelet-serving", common_name=f"system:node:{provider}-0",
                               ips=("127.0.0.1",), server=True)
            port = free_port()
            stack = Stack(cp, directory / "stack", {provider: ["--nodes", "1"]}, facade_args=[
                f"--kubelet-port={port}", "--kubelet-address=127.0.0.1",
                f"--kubelet-cert={serving.cert}", f"--kubelet-key={serving.key}",
                f"--client-ca-file={cp.pki.ca.cert}", *facade_args]).start()
            try:
                yield LoopbackFacade(cp, stack, ca, port)
            finally:
                stack.stop()
        finally:
            cp.stop()
