"""A node's kubelet API follows the node to the facade replica that takes it over (issue 19
item 2): `kubectl logs` of a VM pod answers again through the new replica after the old one is
SIGKILLed, its serving certificate already valid (it names every node the replica may serve).

Each replica serves its kubelet API in a network namespace of its own (a test host at a
198.18.0.0/15 address, as tests/kubelet_api/ does), so the node's InternalIP says which replica
the apiserver reaches. Needs root, iproute2 and the control plane.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.shardedstack import holders as shard_holders
from tests.shardedstack import shard_args, sharded_stack, start_replica
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.netns import Netns, NetnsUnavailable, namespaces
from vmlet_localenv.stack import KUBELET_PORT, Stack, eventually, kubelet_api_args
from vmlet_localenv.terminal import kubectl

pytestmark = pytest.mark.controlplane

PROVIDER = "shardapi"
LEASE_NAMESPACE = "vmlet-shardapi"
SHARDS = shard_args(LEASE_NAMESPACE)


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[Netns, ...]]:
    try:
        with namespaces("vmlet-sha", "vmlet-shb") as made:
            yield made
    except NetnsUnavailable as err:
        pytest.fail(f"network namespaces are needed: {err}")


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, hosts: tuple[Netns, ...],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with sharded_stack(control_plane, tmp_path_factory.mktemp("shardapi"), PROVIDER, 2,
                       LEASE_NAMESPACE, [*SHARDS, *kubelet_api_args(control_plane, hosts[0],
                                                                    KUBELET_PORT)]) as s:
        yield s


def holders(stack: Stack) -> dict[str, str]:
    return shard_holders(stack, LEASE_NAMESPACE)


def internal_ip(stack: Stack, node: str) -> str:
    found = stack.kubectl_json("get", "node", node)["status"].get("addresses") or []
    return next((a["address"] for a in found if a["type"] == "InternalIP"), "")


def logs(cp: ControlPlane, ns: str, name: str) -> str | None:
    out = kubectl(cp, "logs", "-n", ns, name)
    return out.stdout if out.returncode == 0 and "powered on" in out.stdout else None


def test_a_taken_over_nodes_kubelet_api_answers_through_the_new_replica(
        stack: Stack, control_plane: ControlPlane, hosts: tuple[Netns, ...],
        tmp_path: Path) -> None:
    first_host, second_host = hosts
    second = start_replica(stack, tmp_path / "second",
                           [*SHARDS, *kubelet_api_args(control_plane, second_host, KUBELET_PORT)])
    try:
        stack.wait_kubelet_api(first_host.ip)
        stack.wait_kubelet_api(second_host.ip)
        shared = eventually(lambda: h if len(set((h := holders(stack)).values()) - {""}) == 2
                            and len(h) == 2 else None, timeout=90,
                            what="each replica serving one node")
        assert stack.facade is not None and stack.facade.process is not None
        pid = stack.facade.process.pid
        (node,) = [n for n, h in shared.items() if h.endswith(f"-{pid}")]
        eventually(lambda: internal_ip(stack, node) == first_host.ip, timeout=30,
                   what=f"node {node} at the first replica's address")

        ns = f"shardapi-{uuid.uuid4().hex[:8]}"
        control_plane.kubectl("create", "namespace", ns)
        pod: dict[str, Any] = stack.vm_pod("vm", PROVIDER)
        pod["spec"]["nodeName"] = node
        control_plane.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))
        eventually(lambda: logs(control_plane, ns, "vm"), timeout=90,
                   what="kubectl logs through the first replica")

        stack.facade.kill()
        killed = time.monotonic()
        eventually(lambda: internal_ip(stack, node) == second_host.ip, timeout=30, interval=0.3,
                   what=f"node {node} at the second replica's address")
        moved = time.monotonic() - killed
        eventually(lambda: logs(control_plane, ns, "vm"), timeout=30, interval=0.3,
                   what="kubectl logs through the second replica")
        answered = time.monotonic() - killed
        print(f"node moved after {moved:.1f}s, kubectl logs answered after {answered:.1f}s",
              flush=True)
        assert answered <= 20.0, answered
        control_plane.kubectl("delete", "namespace", ns, "--wait=false")
    finally:
        second.stop()
