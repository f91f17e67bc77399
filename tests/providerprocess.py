"""A provider as its own process, and a client of it that is the conformance suite's `Subject`
with the process attached: what the IaaS-specific provider tests (tests/vmwareprovider.py,
tests/openstackprovider.py) share."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from vmlet.provider.v1 import node_provider_service_pb2 as npb
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lpb
from vmlet.provider.v1 import pod_pb2
from vmlet_conformance import Subject
from vmlet_conformance import eventually as _eventually
from vmlet_localenv.processes import Process, wait_for
from vmlet_localenv.providerpki import default_pki

__all__ = ["Provider", "eventually", "start_provider"]

T = TypeVar("T")


class Provider(Subject):
    """A provider's process and a client of it over mutual TLS, as the facade calls it."""

    def __init__(self, process: Process, port: int, image: str, *, namespace: str,
                 timeout: float) -> None:
        super().__init__(default_pki().channel(f"127.0.0.1:{port}"), image,
                         namespace=namespace, timeout=timeout)
        self.process = process

    def update(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        status: pod_pb2.PodStatus = self.pods.UpdatePod(lpb.UpdatePodRequest(pod=pod),
                                                        timeout=self.timeout).status
        return status

    def pong(self) -> npb.PingResponse:
        """Ping's answer (`Subject.ping` drops it)."""
        pong: npb.PingResponse = self.node_provider.Ping(npb.PingRequest(), timeout=30)
        return pong

    def list_nodes(self) -> list[Any]:
        return list(self.node_provider.ListNodes(npb.ListNodesRequest(), timeout=60).nodes)

    def stop(self) -> None:
        self.channel.close()
        self.process.stop(timeout=15)


def start_provider(module: str, workdir: Path, env: dict[str, str], *args: str, image: str,
                   namespace: str, timeout: float) -> Provider:
    """Starts `python -m module` on loopback (its log in ``workdir``) and waits for its Ping."""
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)
    name = f"{module.removeprefix('vmlet_')}-provider"
    argv = [sys.executable, "-m", module, "--listen", "127.0.0.1:0", "--port-file",
            str(port_file), "--log-format", "text", *default_pki().provider_args(), *args]
    process = Process(name, argv, log_dir=workdir, env=env).start()
    try:
        wait_for(port_file.exists, timeout=60, what=name, alive=process.check_alive)
        provider = Provider(process, int(port_file.read_text()), image, namespace=namespace,
                            timeout=timeout)
        eventually(provider.pong, timeout=60, what=f"{name} ping")
    except BaseException:
        process.stop()
        raise
    return provider


def eventually(check: Callable[[], T | None], *, timeout: float, what: str,
               also: tuple[type[BaseException], ...] = ()) -> T:
    """`vmlet_conformance.eventually`, the exceptions ``also`` (an IaaS client's) counting as
    not yet."""

    def guarded() -> T | None:
        try:
            return check()
        except also as exc:
            raise AssertionError(repr(exc)) from exc

    return _eventually(guarded, timeout=timeout, what=what)
