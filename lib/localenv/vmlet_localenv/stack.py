"""A running vmlet on a control plane: providers and one facade, for tests and benchmarks."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.processes import free_port
from vmlet_localenv.services import (
    FacadeProcess,
    ProviderProcess,
    apply_crds,
    facade_kubeconfig,
)

__all__ = ["Stack", "eventually"]

T = TypeVar("T")


def eventually(check: Callable[[], T], *, timeout: float = 60.0, interval: float = 0.3,
               what: str = "condition") -> T:
    """Return ``check()``'s first truthy result; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as err:  # a probe that fails now may pass later
            last = err
        else:
            if result:
                return result
            last = result
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout:.0f}s (last: {last!r})")


class Stack:
    """Memory providers (one per name) and a facade serving all of them."""

    def __init__(self, cp: ControlPlane, directory: Path, providers: dict[str, list[str]],
                 facade_args: list[str] | None = None) -> None:
        self.cp = cp
        self.dir = directory
        self.metrics_ports = {name: free_port() for name in providers}
        self.providers = {
            name: ProviderProcess("memory", directory / name, name=name, args=[
                "--node-prefix", name, "--state-file", str(directory / f"{name}.json"),
                "--metrics-listen", f"127.0.0.1:{self.metrics_ports[name]}", *args])
            for name, args in providers.items()
        }
        self.facade_args = facade_args or []
        self.facade: FacadeProcess | None = None

    def start(self) -> Stack:
        apply_crds(self.cp)
        for provider in self.providers.values():
            provider.start()
        self.start_facade()
        return self

    def start_facade(self) -> FacadeProcess:
        self.facade = FacadeProcess({n: p.address for n, p in self.providers.items()},
                                    facade_kubeconfig(self.cp), self.dir / "facade",
                                    args=self.facade_args).start()
        return self.facade

    def stop(self) -> None:
        if self.facade is not None:
            self.facade.stop()
        for provider in self.providers.values():
            provider.stop()

    def channel(self, provider: str) -> grpc.Channel:
        return grpc.insecure_channel(self.providers[provider].address)

    def provider_calls(self, provider: str, method: str) -> float:
        """How often ``method`` was called on ``provider``, from its Prometheus metrics."""
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_ports[provider]}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or f'grpc_method="{method}"' not in line:
                continue
            if line.startswith("grpc_server_started_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.cp.kubectl(*args, "-o", "json").stdout)

    def nodes(self, provider: str) -> list[dict[str, Any]]:
        items = self.kubectl_json("get", "nodes", "-l", f"vmlet.io/provider={provider}")["items"]
        return list(items)

    def ready_nodes(self, provider: str) -> list[str]:
        return [n["metadata"]["name"] for n in self.nodes(provider)
                if any(c["type"] == "Ready" and c["status"] == "True"
                       for c in n["status"].get("conditions", []))]

    def vm_pod(self, name: str, provider: str, *, env: list[dict[str, Any]] | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """A pod manifest that tolerates ``provider``'s taint and asks for one of its nodes."""
        pod: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {
                "nodeSelector": {"vmlet.io/provider": provider},
                "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Equal",
                                 "value": provider, "effect": "NoSchedule"}],
                "containers": [{"name": "vm", "image": "debian-12", "env": env or [],
                                "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                              "limits": {"cpu": "2", "memory": "2Gi"}}}],
            },
        }
        for key, value in (extra or {}).items():
            pod["spec"][key] = value
        return pod
