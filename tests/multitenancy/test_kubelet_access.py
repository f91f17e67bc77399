"""logs, exec and port-forward into the victim's namespace, through the apiserver and straight at
the kubelet port with a tenant's token."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.multitenancy.tenancy import MISSING, Tenant, VictimVM, normalised, stays_untouched
from vmlet_localenv.netns import Netns
from vmlet_localenv.stack import KUBELET_PORT, Stack

pytestmark = pytest.mark.controlplane


def test_logs_exec_and_port_forward_into_another_namespace_are_forbidden(
        stack: Stack, victim: Tenant, attacker: Tenant, crown: VictimVM) -> None:
    """Through the apiserver, as kubectl does: Forbidden, the same for a pod that does not
    exist; the victim's own tenant can (the control)."""
    assert victim.kubectl("logs", "-n", victim.ns, crown.pod).returncode == 0
    verbs: dict[str, Callable[[str], list[str]]] = {
        "logs": lambda pod: ["logs", "-n", victim.ns, pod],
        "exec": lambda pod: ["exec", "-n", victim.ns, pod, "--", "echo", "in"],
        "attach": lambda pod: ["attach", "-n", victim.ns, pod],
        "port-forward": lambda pod: ["port-forward", "-n", victim.ns, f"pod/{pod}", ":8080"],
        "node proxy": lambda pod: ["get", "--raw", f"/api/v1/nodes/{crown.node}/proxy/"
                                   f"containerLogs/{victim.ns}/{pod}/vm"],
        "pod proxy": lambda pod: ["get", "--raw",
                                  f"/api/v1/namespaces/{victim.ns}/pods/{pod}/proxy/"],
    }
    differ = []
    for verb, args in verbs.items():
        answers = []
        for pod in (crown.pod, MISSING):
            out = attacker.kubectl(*args(pod), timeout=30)
            assert out.returncode != 0, f"{verb} into {victim.ns}/{pod} was allowed"
            assert "forbidden" in out.stderr.lower(), f"{verb}: {out.stderr}"
            answers.append(normalised(out.stderr, pod, crown.pod, MISSING))
        if answers[0] != answers[1]:
            differ.append(f"{verb}: {answers}")
    assert not differ, differ
    stays_untouched(stack, victim, crown, seconds=1)


def kubelet_call(host: Netns, ca: Path, method: str, path: str,
                 token: str | None) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection(host.ip, KUBELET_PORT, context=context, timeout=15)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"}
                     if token else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_kubelet_port_refuses_a_tenant_token(stack: Stack, victim: Tenant, attacker: Tenant,
                                            test_host: Netns, crown: VictimVM) -> None:
    """Straight at the facade's kubelet port with the attacker's own token: 403 on every
    endpoint (a tenant has no nodes/proxy), 401 without a token, and no victim data."""
    ca = stack.cp.pki.ca.cert
    endpoints = [
        ("GET", f"/containerLogs/{victim.ns}/{crown.pod}/vm"),
        ("POST", f"/exec/{victim.ns}/{crown.pod}/vm?command=echo&command=in&output=1"),
        ("POST", f"/run/{victim.ns}/{crown.pod}/vm?cmd=echo+in"),
        ("POST", f"/attach/{victim.ns}/{crown.pod}/vm?output=1"),
        ("POST", f"/portForward/{victim.ns}/{crown.pod}"),
        ("GET", "/pods"), ("GET", "/runningpods/"), ("GET", "/stats/summary"),
        ("GET", "/logs/"), ("GET", "/metrics"),
    ]
    for method, path in endpoints:
        status, body = kubelet_call(test_host, ca, method, path, attacker.token())
        assert status == 403, f"{method} {path} with a tenant's token: {status} {body[:200]!r}"
        assert crown.uid.encode() not in body and crown.pod.encode() not in body
        status, body = kubelet_call(test_host, ca, method, path, None)
        assert status == 401, f"{method} {path} without credentials: {status} {body[:200]!r}"
    stays_untouched(stack, victim, crown, seconds=1)
