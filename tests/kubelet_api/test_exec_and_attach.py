"""exec (WebSocket and SPDY, with a terminal, cut off midway), attach, and the Python client's
exec, through the apiserver."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import pytest

from tests.kubelet_api.support import (
    facade_sessions,
    grew,
    nothing_left_open,
    open_provider_streams,
    python_api,
    upgrades,
)
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, eventually
from vmlet_localenv.terminal import SPDY, WEBSOCKET, kubectl, kubectl_pty, read_until

pytestmark = pytest.mark.controlplane


@pytest.mark.parametrize("transport", [WEBSOCKET, SPDY], ids=["websocket", "spdy"])
def test_exec(stack: Stack, control_plane: ControlPlane, ns: str, vm: dict[str, Any],
              transport: dict[str, str]) -> None:
    # kubectl speaks v5 either way; over WebSocket the apiserver translates it to SPDY for the
    # kubelet (TranslateStreamCloseWebsocketRequests), over SPDY it passes the upgrade through.
    seen = upgrades(stack, "exec", "spdy")
    echo = kubectl(control_plane, "exec", "-n", ns, "vm", "--", "echo", "hello", "vm",
                   env=transport)
    assert (echo.returncode, echo.stdout) == (0, "hello vm\n"), echo.stderr
    assert kubectl(control_plane, "exec", "-n", ns, "vm", "--", "hostname",
                   env=transport).stdout == "vm\n"
    failed = kubectl(control_plane, "exec", "-n", ns, "vm", "--", "sh", "-c", "exit 3",
                     env=transport)
    assert failed.returncode == 3, failed.stderr
    missing = kubectl(control_plane, "exec", "-n", ns, "vm", "--", "nosuchcommand",
                      env=transport)
    assert missing.returncode == 127 and "command not found" in missing.stderr
    cat = kubectl(control_plane, "exec", "-i", "-n", ns, "vm", "--", "cat",
                  input="line one\nline two\n", env=transport)
    assert (cat.returncode, cat.stdout) == (0, "line one\nline two\n"), cat.stderr
    assert grew(seen, upgrades(stack, "exec", "spdy")) == {"v5.channel.k8s.io"}
    eventually(lambda: nothing_left_open(stack, "Exec", "exec"), timeout=30,
               what="no exec stream left open")


@pytest.mark.parametrize("transport", [WEBSOCKET, SPDY], ids=["websocket", "spdy"])
def test_exec_with_a_terminal(stack: Stack, control_plane: ControlPlane, ns: str,
                              vm: dict[str, Any], transport: dict[str, str]) -> None:
    proc, master = kubectl_pty(control_plane, ["exec", "-it", "-n", ns, "vm", "--", "sh", "-c",
                                                "exit 4"], transport)
    try:
        assert proc.wait(timeout=60) == 4
    finally:
        os.close(master)
    proc, master = kubectl_pty(control_plane, ["exec", "-it", "-n", ns, "vm", "--", "cat"],
                                transport)
    try:
        time.sleep(1.0)  # kubectl has put the terminal in raw mode and opened the session
        os.write(master, b"typed on a tty\r")
        assert b"typed on a tty" in read_until(master, b"typed on a tty")
        assert open_provider_streams(stack, "Exec") == 1
        # Cut the session off midway, as a closed laptop would.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        os.close(master)
    eventually(lambda: nothing_left_open(stack, "Exec", "exec"), timeout=30,
               what="the cut-off exec's provider stream closed")


def test_exec_cut_off_midway_leaves_nothing_open(stack: Stack, control_plane: ControlPlane,
                                                 ns: str, vm: dict[str, Any]) -> None:
    proc = subprocess.Popen(["kubectl", f"--kubeconfig={control_plane.kubeconfig}", "exec", "-i",
                             "-n", ns, "vm", "--", "cat"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"still here\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"still here\n"
        assert open_provider_streams(stack, "Exec") == 1
        assert facade_sessions(stack, "exec") == 1
    finally:
        proc.kill()
        proc.wait()
    eventually(lambda: nothing_left_open(stack, "Exec", "exec"), timeout=30,
               what="the cut-off exec's provider stream closed")


@pytest.mark.parametrize("transport", [WEBSOCKET, SPDY], ids=["websocket", "spdy"])
def test_attach(stack: Stack, control_plane: ControlPlane, ns: str, vm: dict[str, Any],
                transport: dict[str, str]) -> None:
    out = kubectl(control_plane, "attach", "-i", "-n", ns, "vm", input="to the console\n",
                  env=transport)
    assert out.returncode == 0, out.stderr
    assert "to the console\n" in out.stdout
    eventually(lambda: nothing_left_open(stack, "Attach", "attach"), timeout=30,
               what="no attach stream left open")


@pytest.mark.parametrize("protocol", [None, "v4.channel.k8s.io"], ids=["default", "v4"])
def test_python_client_exec(stack: Stack, control_plane: ControlPlane, ns: str,
                            vm: dict[str, Any], protocol: str | None) -> None:
    from kubernetes.stream import stream

    api = python_api(control_plane)
    headers = {"sec-websocket-protocol": protocol} if protocol else None
    seen = {t: upgrades(stack, "exec", t) for t in ("spdy", "websocket")}
    resp = stream(api.connect_get_namespaced_pod_exec, "vm", ns, command=["sh", "-c", "exit 5"],
                  stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False,
                  _headers=headers)
    resp.run_forever(timeout=30)
    assert resp.returncode == 5
    resp = stream(api.connect_get_namespaced_pod_exec, "vm", ns, command=["cat"], stderr=True,
                  stdin=True, stdout=True, tty=False, _preload_content=False, _headers=headers)
    try:
        resp.write_stdin("from python\n")
        out = ""
        deadline = time.monotonic() + 30
        while "from python\n" not in out and time.monotonic() < deadline:
            resp.update(timeout=1)
            out += resp.read_stdout(timeout=1) if resp.peek_stdout() else ""
        assert out == "from python\n"
    finally:
        resp.close()
    # The client asks for v5 and v4: the apiserver translates v5 to SPDY; v4 alone it passes
    # through to the kubelet as a WebSocket.
    if protocol is None:
        assert grew(seen["spdy"], upgrades(stack, "exec", "spdy")) == {"v5.channel.k8s.io"}
    else:
        assert grew(seen["websocket"], upgrades(stack, "exec", "websocket")) == {protocol}
    eventually(lambda: nothing_left_open(stack, "Exec", "exec"), timeout=30,
               what="the closed Python exec's provider stream closed")
