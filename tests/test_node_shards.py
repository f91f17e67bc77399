"""Two facade replicas share the virtual nodes (--shard-nodes), and one SIGKILLed hands its
nodes to the other (issue 19 items 1 and 2), on the real control plane and a memory provider.

What is checked: each node is served by exactly one replica (its shard Lease names it), the
replicas split the nodes evenly; after a SIGKILL the survivor takes every node within 15 s,
before the node Leases (40 s) expire, so no node turns NotReady; the pods stay Running and
Ready all along (no status goes backwards), with no VM made twice, destroyed or stopped (the
provider's CreatePod, DeletePod and StopPod counts and its pods); pods created afterwards on
the dead replica's nodes run; a replica that comes back gets its share again; and one stopped
with SIGTERM hands its nodes over at once.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.shardedstack import holders as shard_holders
from tests.shardedstack import shard_args, sharded_stack, start_replica
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lpb
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lpb_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.services import FacadeProcess
from vmlet_localenv.stack import Stack, eventually

pytestmark = pytest.mark.controlplane

PROVIDER = "sharded"
NODES = 4
SHARD_NAMESPACE = "vmlet-shards"
ARGS = [*shard_args(SHARD_NAMESPACE), "--kubelet-port=0", "--lease-seconds=10"]
FAILOVER_SECONDS = 15.0


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    with sharded_stack(control_plane, tmp_path_factory.mktemp("shards"), PROVIDER, NODES,
                       SHARD_NAMESPACE, ARGS) as s:
        yield s


def replica(stack: Stack, directory: Path) -> FacadeProcess:
    return start_replica(stack, directory, ARGS)


def holders(stack: Stack) -> dict[str, str]:
    return shard_holders(stack, SHARD_NAMESPACE)


def even(found: dict[str, str]) -> dict[str, str] | None:
    """``found`` (node -> holder) when two replicas hold 2 nodes each, else None."""
    counts = sorted(list(found.values()).count(h) for h in set(found.values()))
    return found if len(found) == NODES and "" not in found.values() and \
        counts == [2, 2] else None


def not_ready(stack: Stack) -> list[str]:
    return [n["metadata"]["name"] for n in stack.nodes(PROVIDER)
            if n["metadata"]["name"] not in stack.ready_nodes(PROVIDER)]


def provider_pods(stack: Stack) -> list[Any]:
    with stack.channel(PROVIDER) as channel:
        return list(lpb_grpc.PodLifecycleServiceStub(channel).GetPods(
            lpb.GetPodsRequest(), timeout=10).pods)


def running(stack: Stack, ns: str) -> dict[str, str]:
    """Pod name -> node, of the namespace's pods that are Running."""
    items = stack.kubectl_json("get", "pods", "-n", ns)["items"]
    return {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in items
            if p.get("status", {}).get("phase") == "Running"}


def test_replicas_share_the_nodes_and_one_killed_hands_them_over(
        stack: Stack, control_plane: ControlPlane, tmp_path: Path) -> None:
    start = time.monotonic()

    def say(what: str) -> None:
        print(f"[shards +{time.monotonic() - start:6.1f}s] {what}", flush=True)

    second = replica(stack, tmp_path / "second")
    try:
        shared = eventually(lambda: even(holders(stack)), timeout=90,
                            what="two replicas with 2 nodes each")
        say(f"shared: {shared}")
        eventually(lambda: len(stack.ready_nodes(PROVIDER)) == NODES, timeout=60,
                   what="every node Ready")

        ns = f"shards-{uuid.uuid4().hex[:8]}"
        control_plane.kubectl("create", "namespace", ns)
        pods = [stack.vm_pod(f"vm-{i}", PROVIDER) for i in range(8)]
        for pod in pods:
            pod["spec"]["topologySpreadConstraints"] = [{
                "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {
                    "app": "sharded"}}}]
            pod["metadata"]["labels"] = {"app": "sharded"}
            control_plane.kubectl("apply", "-n", ns, "-f", "-", input=_json(pod))
        placed = eventually(lambda: running(stack, ns) if len(running(stack, ns)) == 8
                            else None, timeout=120, what="8 pods Running")
        assert len(set(placed.values())) == NODES, placed  # both replicas serve pods
        say("8 pods Running across the nodes")
        creates = stack.provider_calls(PROVIDER, "CreatePod")
        before = {p.pod.ref.uid: p.pod.identity for p in provider_pods(stack)}
        assert len(before) == 8

        # SIGKILL the stack's own facade: its nodes must go to the second within 15 s.
        assert stack.facade is not None and stack.facade.process is not None
        first_nodes = {n for n, h in shared.items()
                       if h.endswith(f"-{stack.facade.process.pid}")}
        assert len(first_nodes) == 2, (shared, stack.facade.process.pid)
        stack.facade.kill()
        killed_at = time.monotonic()
        seen_not_ready: set[str] = set()

        backwards: list[str] = []

        def watch_pods() -> None:
            """No pod goes back from Running (or loses its readiness) during the takeover."""
            for p in stack.kubectl_json("get", "pods", "-n", ns)["items"]:
                status = p.get("status", {})
                ready = {c["type"]: c["status"] for c in status.get("conditions") or []}
                if status.get("phase") != "Running" or ready.get("Ready") != "True":
                    backwards.append(f"{p['metadata']['name']}: {status.get('phase')} {ready}")

        def taken_over() -> bool:
            seen_not_ready.update(not_ready(stack))
            watch_pods()
            values = set(holders(stack).values())
            return len(values) == 1 and "" not in values

        eventually(taken_over, timeout=30, interval=0.3, what="one replica holding every node")
        took = time.monotonic() - killed_at
        say(f"taken over in {took:.1f}s")
        assert took <= FAILOVER_SECONDS, took
        for _ in range(20):  # and while the survivor settles in
            seen_not_ready.update(not_ready(stack))
            watch_pods()
            time.sleep(0.5)
        assert seen_not_ready == set(), seen_not_ready
        assert backwards == [], backwards[:5]

        more = [stack.vm_pod(f"late-{i}", PROVIDER) for i in range(4)]
        for pod in more:
            control_plane.kubectl("apply", "-n", ns, "-f", "-", input=_json(pod))
        eventually(lambda: len(running(stack, ns)) == 12, timeout=120, what="12 pods Running")
        say("4 more pods Running, served by the survivor")
        after = {p.pod.ref.uid: p.pod.identity for p in provider_pods(stack)}
        assert {u: i for u, i in after.items() if u in before} == before  # none made again
        assert len(after) == 12
        # Only the 4 new pods were created (a taken-over pod's CreatePod would be a second).
        assert stack.provider_calls(PROVIDER, "CreatePod") - creates == 4
        assert stack.provider_calls(PROVIDER, "DeletePod") == 0
        assert stack.provider_calls(PROVIDER, "StopPod") == 0

        # The killed replica comes back: the nodes are shared again, nothing is made twice.
        stack.start_facade()
        eventually(lambda: len(set(holders(stack).values()) - {""}) == 2, timeout=60,
                   what="the nodes shared again")
        say(f"shared again: {holders(stack)}")
        eventually(lambda: even(holders(stack)), timeout=30, what="2 nodes each again")
        # Nodes handed over with their pods while both replicas run: nothing made again.
        assert stack.provider_calls(PROVIDER, "CreatePod") - creates == 4
        assert len(provider_pods(stack)) == 12
        assert len(running(stack, ns)) == 12
        assert stack.provider_calls(PROVIDER, "DeletePod") == 0

        # A replica stopped as a rolling update stops it (SIGTERM) gives its nodes back at
        # once: the other holds them all well before the Leases would expire.
        assert second.process is not None
        stopped_at = time.monotonic()
        second.process.signal(signal.SIGTERM)
        eventually(lambda: len(set(holders(stack).values())) == 1 and "" not in
                   holders(stack).values(), timeout=30, interval=0.3,
                   what="the remaining replica holding every node")
        handed = time.monotonic() - stopped_at
        say(f"handed over on SIGTERM in {handed:.1f}s")
        assert handed < 8.0, handed
        eventually(lambda: not second.process or not second.process.running(), timeout=30,
                   what="the stopped replica gone")
        say(f"the stopped replica exited after {time.monotonic() - stopped_at:.1f}s")
        assert not_ready(stack) == [] and len(running(stack, ns)) == 12
        control_plane.kubectl("delete", "namespace", ns, "--wait=false")
    finally:
        second.stop()


def _json(obj: object) -> str:
    return json.dumps(obj)
