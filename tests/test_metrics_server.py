"""metrics-server (the pinned release, built from the Go module proxy) in front of a vmlet node:
``kubectl top node``, ``kubectl top pod`` and the Metrics API show the figures the provider
reports, as in any cluster.

metrics-server runs as a plain process behind the real apiserver's aggregation layer
(`vmlet_localenv.metricsserver`) and scrapes the facade's /metrics/resource itself: at the
node's InternalIP, a network namespace's address (`vmlet_localenv.netns`), with a client
certificate of the cluster CA, checking the facade's serving certificate (issued through the
kubelet-serving CSR, approved here as an operator would) against the cluster CA.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.metricsserver import APISERVICE, MetricsServer
from vmlet_localenv.netns import Netns, NetnsUnavailable, namespaces
from vmlet_localenv.stack import KUBELET_PORT, Stack, eventually, kubelet_api_args

pytestmark = pytest.mark.controlplane

PROVIDER = "msrv"
RESOLUTION = 10  # seconds: metrics-server's minimum, so figures show within ~20 s


@pytest.fixture(scope="module")
def test_host() -> Iterator[Netns]:
    try:
        with namespaces("vmlet-msrv") as (host,):
            yield host
    except NetnsUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, test_host: Netns,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(control_plane, tmp_path_factory.mktemp("metrics-server"),
              {PROVIDER: ["--nodes", "1"]},
              facade_args=kubelet_api_args(control_plane, test_host, KUBELET_PORT)).start()
    try:
        eventually(lambda: len(s.ready_nodes(PROVIDER)) == 1, what="node Ready")
        s.wait_kubelet_api(test_host.ip, KUBELET_PORT)
        yield s
    except BaseException:
        s.print_logs()
        raise
    finally:
        s.stop()


@pytest.fixture(scope="module")
def metrics_server(control_plane: ControlPlane, stack: Stack,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsServer]:
    ms = MetricsServer(control_plane, tmp_path_factory.mktemp("ms"),
                       resolution=RESOLUTION).start()
    try:
        yield ms
    except BaseException:
        assert ms.process is not None
        print(f"--- metrics-server:\n{ms.process.tail(40)}")
        raise
    finally:
        ms.stop()


@pytest.fixture(scope="module")
def vm(stack: Stack, control_plane: ControlPlane) -> dict[str, Any]:
    ns = f"msrv-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", ns)
    control_plane.kubectl("apply", "-n", ns, "-f", "-",
                          input=json.dumps(stack.vm_pod("vm", PROVIDER)))

    def running() -> dict[str, Any] | None:
        pod: dict[str, Any] = stack.kubectl_json("get", "pod", "vm", "-n", ns)
        return pod if pod["status"].get("phase") == "Running" else None

    pod = eventually(running, what="pod Running")
    assert pod is not None
    return pod


def raw(cp: ControlPlane, path: str) -> Any:
    return json.loads(cp.kubectl("get", "--raw", path).stdout)


def cpu_nanocores(quantity: str) -> float:
    units = {"n": 1.0, "u": 1e3, "m": 1e6}
    if quantity[-1] in units:
        return float(quantity[:-1]) * units[quantity[-1]]
    return float(quantity) * 1e9


def _when(stamp: str) -> float:
    """An RFC 3339 time of the API, in seconds since the epoch."""
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[:-2]) * factor
    return int(quantity)


def summary(cp: ControlPlane, node: str) -> dict[str, Any]:
    """The node's Summary, as the facade reports it through the apiserver's node proxy."""
    result: dict[str, Any] = raw(cp, f"/api/v1/nodes/{node}/proxy/stats/summary")
    return result


def top_row(cp: ControlPlane, *args: str) -> list[str]:
    """The data row of a `kubectl top` table (fails while metrics are not available yet)."""
    lines = cp.kubectl("top", *args).stdout.splitlines()
    assert len(lines) == 2, lines
    return lines[1].split()


def test_the_apiserver_serves_the_metrics_api(metrics_server: MetricsServer,
                                              control_plane: ControlPlane) -> None:
    assert metrics_server.available()
    service = json.loads(control_plane.kubectl("get", "apiservice", APISERVICE,
                                               "-o", "json").stdout)
    assert service["spec"]["service"]["name"] == "metrics-server"
    groups = raw(control_plane, "/apis/metrics.k8s.io/v1beta1")
    assert {r["name"] for r in groups["resources"]} >= {"nodes", "pods"}


def test_kubectl_top_node_shows_the_vmlet_node(metrics_server: MetricsServer, stack: Stack,
                                               control_plane: ControlPlane,
                                               vm: dict[str, Any]) -> None:
    node = vm["spec"]["nodeName"]
    # The node's counter takes in the VM from its start: a rate over scrapes from before then is
    # the node's without it. (startedAt is in whole seconds: one more covers the truncation.)
    ran = _when(vm["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]) + 1

    def listed() -> dict[str, Any] | None:
        items = raw(control_plane, "/apis/metrics.k8s.io/v1beta1/nodes")["items"]
        item = next((i for i in items if i["metadata"]["name"] == node), None)
        if item is None or _when(item["timestamp"]) - float(item["window"].rstrip("s")) < ran:
            return None  # not listed yet, or its window began before the VM ran
        return item

    metrics = eventually(listed, timeout=90, what=f"{node} in the Metrics API")
    assert metrics["metadata"]["labels"]["vmlet.io/provider"] == PROVIDER
    # Working set is steady in the provider: metrics-server reports the node's exactly.
    expected = summary(control_plane, node)["node"]["memory"]["workingSetBytes"]
    assert memory_bytes(metrics["usage"]["memory"]) == expected
    # CPU is a rate over two scrapes of cumulative counters: the provider's steady rate.
    rate = summary(control_plane, node)["node"]["cpu"]["usageNanoCores"]
    assert abs(cpu_nanocores(metrics["usage"]["cpu"]) - rate) <= 0.1 * rate, (metrics, rate)

    name, cpu, cpu_pct, memory, memory_pct = top_row(control_plane, "node", node)
    assert name == node
    assert cpu.endswith("m") and int(cpu[:-1]) > 0
    assert memory.endswith("Mi") and int(memory[:-2]) == expected >> 20
    assert cpu_pct.endswith("%") and memory_pct.endswith("%")


def test_kubectl_top_pod_shows_the_vm_pod(metrics_server: MetricsServer, stack: Stack,
                                          control_plane: ControlPlane,
                                          vm: dict[str, Any]) -> None:
    ns, node = vm["metadata"]["namespace"], vm["spec"]["nodeName"]
    path = f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/vm"
    metrics = eventually(lambda: raw(control_plane, path), timeout=90,
                         what="the VM pod in the Metrics API")
    assert [c["name"] for c in metrics["containers"]] == ["vm"]
    usage = metrics["containers"][0]["usage"]
    mine = next(p for p in summary(control_plane, node)["pods"]
                if (p["podRef"]["namespace"], p["podRef"]["name"]) == (ns, "vm"))
    assert memory_bytes(usage["memory"]) == mine["memory"]["workingSetBytes"]
    rate = mine["cpu"]["usageNanoCores"]
    assert abs(cpu_nanocores(usage["cpu"]) - rate) <= 0.1 * rate, (usage, rate)

    name, cpu, memory = top_row(control_plane, "pod", "vm", "-n", ns)
    assert name == "vm"
    assert cpu.endswith("m") and abs(int(cpu[:-1]) * 1e6 - rate) <= 0.1 * rate
    assert memory == f"{mine['memory']['workingSetBytes'] >> 20}Mi"
    containers = control_plane.kubectl("top", "pod", "vm", "-n", ns, "--containers").stdout
    assert containers.splitlines()[1].split()[:2] == ["vm", "vm"]


def test_a_tenant_with_edit_sees_its_own_pods_usage(metrics_server: MetricsServer,
                                                    control_plane: ControlPlane,
                                                    vm: dict[str, Any]) -> None:
    ns = vm["metadata"]["namespace"]
    control_plane.kubectl("create", "rolebinding", "tenant-edit", "-n", ns,
                          "--clusterrole=edit", "--user=msrv-tenant")
    tenant = control_plane.user_kubeconfig("msrv-tenant")

    def top() -> str:
        return control_plane.kubectl("top", "pod", "vm", "-n", ns, kubeconfig=tenant).stdout

    assert "vm" in eventually(top, timeout=90, what="kubectl top pod as the tenant")
    nodes = control_plane.kubectl("top", "node", kubeconfig=tenant, check=False)
    assert nodes.returncode != 0 and "forbidden" in nodes.stderr.lower()
