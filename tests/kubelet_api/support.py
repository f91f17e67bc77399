"""What the kubelet API tests share: the provider's name, the stack's open streams, sessions and
upgrades as its metrics tell them, the serving CA, and the Python client."""

from __future__ import annotations

import re
import ssl
from typing import Any

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, metric_total

PROVIDER = "kapi"


def server_context(cp: ControlPlane) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cp.pki.ca.cert))


def running(stack: Stack, ns: str, name: str) -> dict[str, Any] | None:
    pod: dict[str, Any] = stack.kubectl_json("get", "pod", name, "-n", ns)
    return pod if pod["status"].get("phase") == "Running" else None


def open_provider_streams(stack: Stack, method: str) -> float:
    """Streams of ``method`` the provider started and has not finished."""
    return stack.provider_open_streams(PROVIDER, method)


def started_provider_streams(stack: Stack, method: str) -> float:
    return float(stack.provider_calls(PROVIDER, method))


def facade_sessions(stack: Stack, kind: str) -> float:
    assert stack.facade is not None
    return metric_total(stack.facade.metrics(), "vmlet_facade_kubelet_api_sessions", kind=kind)


def upgrades(stack: Stack, endpoint: str, transport: str) -> dict[str, float]:
    """How often the facade switched ``endpoint`` to ``transport``, by negotiated protocol."""
    assert stack.facade is not None
    out: dict[str, float] = {}
    pattern = re.compile(r'^vmlet_facade_kubelet_api_upgrades_total\{(.*)\} (\S+)$')
    for line in stack.facade.metrics().splitlines():
        found = pattern.match(line)
        if not found:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1)))
        if labels.get("endpoint") == endpoint and labels.get("transport") == transport:
            out[labels["protocol"]] = out.get(labels["protocol"], 0.0) + float(found.group(2))
    return out


def grew(before: dict[str, float], after: dict[str, float]) -> set[str]:
    return {k for k, v in after.items() if v > before.get(k, 0.0)}


def nothing_left_open(stack: Stack, method: str, kind: str) -> bool:
    return open_provider_streams(stack, method) == 0 and facade_sessions(stack, kind) == 0


def python_api(cp: ControlPlane) -> Any:
    from kubernetes import client, config

    api_client = config.new_client_from_config(str(cp.kubeconfig))  # type: ignore[no-untyped-call]
    return client.CoreV1Api(api_client=api_client)
