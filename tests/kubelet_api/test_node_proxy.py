"""The node proxy: stats summary, resource metrics and pods through the apiserver."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.kubelet_api.support import PROVIDER
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack
from vmlet_localenv.terminal import kubectl

pytestmark = pytest.mark.controlplane


def test_stats_summary_through_the_node_proxy(stack: Stack, control_plane: ControlPlane,
                                              ns: str, vm: dict[str, Any]) -> None:
    node = vm["spec"]["nodeName"]
    out = kubectl(control_plane, "get", "--raw", f"/api/v1/nodes/{node}/proxy/stats/summary")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["node"]["nodeName"] == node
    assert doc["node"]["cpu"]["usageNanoCores"] > 0
    assert doc["node"]["memory"]["workingSetBytes"] > 0
    pods = {(p["podRef"]["namespace"], p["podRef"]["name"]): p for p in doc["pods"]}
    mine = pods[(ns, "vm")]
    assert mine["podRef"]["uid"] == vm["metadata"]["uid"]
    assert mine["containers"][0]["name"] == "vm"
    assert mine["cpu"]["usageNanoCores"] > 0 and mine["memory"]["workingSetBytes"] > 0
    other = next(n for n in (f"{PROVIDER}-0", f"{PROVIDER}-1") if n != node)
    elsewhere = json.loads(kubectl(control_plane, "get", "--raw",
                                   f"/api/v1/nodes/{other}/proxy/stats/summary").stdout)
    assert elsewhere["node"]["nodeName"] == other
    assert (ns, "vm") not in {(p["podRef"]["namespace"], p["podRef"]["name"])
                              for p in elsewhere["pods"]}


def test_resource_metrics_and_pods_through_the_node_proxy(stack: Stack,
                                                          control_plane: ControlPlane, ns: str,
                                                          vm: dict[str, Any]) -> None:
    node = vm["spec"]["nodeName"]
    text = kubectl(control_plane, "get", "--raw",
                   f"/api/v1/nodes/{node}/proxy/metrics/resource").stdout
    assert re.search(r"^node_cpu_usage_seconds_total [0-9.e+]+ \d+$", text, re.M), text
    assert re.search(r"^node_memory_working_set_bytes \d+ \d+$", text, re.M)
    assert f'container_cpu_usage_seconds_total{{container="vm",namespace="{ns}",pod="vm"}}' \
        in text
    assert f'pod_memory_working_set_bytes{{namespace="{ns}",pod="vm"}}' in text
    pods = json.loads(kubectl(control_plane, "get", "--raw",
                              f"/api/v1/nodes/{node}/proxy/pods").stdout)
    assert pods["kind"] == "PodList"
    assert (ns, "vm") in {(p["metadata"]["namespace"], p["metadata"]["name"])
                          for p in pods["items"]}
    running_pods = json.loads(kubectl(control_plane, "get", "--raw",
                                      f"/api/v1/nodes/{node}/proxy/runningpods/").stdout)
    assert (ns, "vm") in {(p["metadata"]["namespace"], p["metadata"]["name"])
                          for p in running_pods["items"]}
    assert kubectl(control_plane, "get", "--raw",
                   f"/api/v1/nodes/{node}/proxy/healthz").stdout == "ok"
