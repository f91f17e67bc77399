"""port-forward through the apiserver, with kubectl and the Python client."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from typing import Any

import pytest

from tests.kubelet_api.support import grew, nothing_left_open, python_api, upgrades
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, eventually
from vmlet_localenv.terminal import SPDY, WEBSOCKET

pytestmark = pytest.mark.controlplane


def _echo_through(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
    return got


@pytest.mark.parametrize("transport", [WEBSOCKET, SPDY], ids=["websocket", "spdy"])
def test_port_forward(stack: Stack, control_plane: ControlPlane, ns: str, vm: dict[str, Any],
                      transport: dict[str, str]) -> None:
    # Over WebSocket kubectl tunnels SPDY frames, which the apiserver hands to the kubelet as
    # SPDY (PortForwardWebsockets): the facade sees portforward.k8s.io over SPDY either way.
    seen = upgrades(stack, "portforward", "spdy")
    proc = subprocess.Popen(["kubectl", f"--kubeconfig={control_plane.kubeconfig}",
                             "port-forward", "-n", ns, "pod/vm", ":8080",
                             "--address=127.0.0.1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **transport})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"127\.0\.0\.1:(\d+) -> 8080", line)
        assert found, line
        local = int(found.group(1))
        assert _echo_through(local, b"hello through the tunnel\n") \
            == b"hello through the tunnel\n"
        big = os.urandom(256 * 1024)
        assert _echo_through(local, big) == big
        assert _echo_through(local, b"a second connection") == b"a second connection"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert grew(seen, upgrades(stack, "portforward", "spdy")) == {"portforward.k8s.io"}
    eventually(lambda: nothing_left_open(stack, "PortForward", "portforward"), timeout=30,
               what="no port-forward stream left open")


def test_python_client_port_forward(stack: Stack, control_plane: ControlPlane, ns: str,
                                    vm: dict[str, Any]) -> None:
    from kubernetes.stream import portforward

    api = python_api(control_plane)
    seen = upgrades(stack, "portforward", "websocket")
    forward = portforward(api.connect_get_namespaced_pod_portforward, "vm", ns, ports="9090")
    conn = forward.socket(9090)
    try:
        conn.setblocking(True)
        conn.settimeout(10)
        conn.sendall(b"python forwarded")
        got = b""
        while len(got) < len(b"python forwarded"):
            got += conn.recv(1024)
        assert got == b"python forwarded"
        assert forward.error(9090) is None
    finally:
        conn.close()
    # Not a tunnelling request, so the apiserver passes the WebSocket through to the kubelet.
    assert grew(seen, upgrades(stack, "portforward", "websocket")) == {"v4.channel.k8s.io"}
    eventually(lambda: nothing_left_open(stack, "PortForward", "portforward"), timeout=30,
               what="the Python port-forward's provider stream closed")
