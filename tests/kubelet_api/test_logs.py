"""kubectl logs through the apiserver: plain, and followed to N lines."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from typing import Any

import pytest

from tests.kubelet_api.support import (
    nothing_left_open,
    open_provider_streams,
    started_provider_streams,
)
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, eventually
from vmlet_localenv.terminal import kubectl

pytestmark = pytest.mark.controlplane


def test_logs(stack: Stack, control_plane: ControlPlane, ns: str, vm: dict[str, Any]) -> None:
    out = kubectl(control_plane, "logs", "-n", ns, "vm")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any("powered on" in line for line in lines), lines
    tail = kubectl(control_plane, "logs", "-n", ns, "vm", "--tail=1").stdout.splitlines()
    assert tail == lines[-1:]
    stamped = kubectl(control_plane, "logs", "-n", ns, "vm", "--timestamps").stdout.splitlines()
    assert len(stamped) == len(lines)
    stamp, _, rest = stamped[0].partition(" ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", stamp) and rest == lines[0]
    limited = kubectl(control_plane, "logs", "-n", ns, "vm", "--limit-bytes=10").stdout
    assert limited == out.stdout[:10]
    since = kubectl(control_plane, "logs", "-n", ns, "vm", "--since=1h").stdout
    assert since == out.stdout
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert kubectl(control_plane, "logs", "-n", ns, "vm", f"--since-time={future}").stdout == ""
    previous = kubectl(control_plane, "logs", "-n", ns, "vm", "--previous")
    assert previous.returncode != 0  # as the kubelet answers a container never restarted
    assert 'previous terminated container "vm" in pod "vm" not found' in previous.stderr


def test_logs_follow_stops_after_n_lines(stack: Stack, control_plane: ControlPlane, ns: str,
                                         vm: dict[str, Any]) -> None:
    before = started_provider_streams(stack, "GetContainerLogs")
    proc = subprocess.Popen(["kubectl", f"--kubeconfig={control_plane.kubeconfig}", "logs",
                             "-f", "-n", ns, "vm"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = [proc.stdout.readline() for _ in range(2)]
        assert all(line.endswith("\n") for line in first), first
        assert proc.poll() is None, "a followed log stays open"
        assert open_provider_streams(stack, "GetContainerLogs") >= 1
    finally:
        proc.kill()
        proc.wait()
    assert started_provider_streams(stack, "GetContainerLogs") > before
    eventually(lambda: nothing_left_open(stack, "GetContainerLogs", "logs"), timeout=30,
               what="the followed log's provider stream closed after the client left")
