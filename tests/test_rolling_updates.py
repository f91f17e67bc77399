"""Rolling updates of the facade and of a provider in the middle of 200 VM creations (issue 19
item 4), on the real control plane and a memory provider of four nodes.

The facade runs as its Deployment runs it: two replicas sharing the nodes (--shard-nodes). Its
rollout is replayed as a RollingUpdate of maxSurge 1, maxUnavailable 0 does it: a new replica
starts, then an old one gets SIGTERM; twice, so both replicas are replaced. The provider's
rollout is a Recreate, as its Deployment's strategy says (one active process per IaaS
endpoint): SIGTERM, then a new process on the same state. Meanwhile 200 bare VM pods are
created in batches. Afterwards: exactly 200 VMs at the provider, one per pod (none twice, no
orphan), every pod Running.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.shardedstack import holders as shard_holders
from tests.shardedstack import members as shard_members
from tests.shardedstack import shard_args, sharded_stack, start_replica
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lpb
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lpb_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.services import FacadeProcess
from vmlet_localenv.stack import Stack, eventually

pytestmark = pytest.mark.controlplane

PROVIDER = "rolling"
NODES = 4
PODS = 200
BATCH = 10
LEASE_NAMESPACE = "vmlet-rolling"
ARGS = [*shard_args(LEASE_NAMESPACE), "--kubelet-port=0"]


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    with sharded_stack(control_plane, tmp_path_factory.mktemp("rolling"), PROVIDER, NODES,
                       LEASE_NAMESPACE, ARGS) as s:
        yield s


def replica(stack: Stack, directory: Path) -> FacadeProcess:
    return start_replica(stack, directory, ARGS)


def holders(stack: Stack) -> set[str]:
    return set(shard_holders(stack, LEASE_NAMESPACE).values()) - {""}


def members(stack: Stack) -> set[str]:
    return shard_members(stack, LEASE_NAMESPACE)


def pods(stack: Stack, ns: str) -> list[Any]:
    return list(stack.kubectl_json("get", "pods", "-n", ns)["items"])


def provider_pods(stack: Stack) -> list[Any]:
    with stack.channel(PROVIDER) as channel:
        return list(lpb_grpc.PodLifecycleServiceStub(channel).GetPods(
            lpb.GetPodsRequest(), timeout=30).pods)


def test_facade_and_provider_rollouts_during_200_creations_leave_200_vms(
        stack: Stack, control_plane: ControlPlane, tmp_path: Path) -> None:
    start = time.monotonic()

    def say(what: str) -> None:
        print(f"[rolling +{time.monotonic() - start:6.1f}s] {what}", flush=True)

    ns = f"rolling-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", ns)
    replicas = {"b": replica(stack, tmp_path / "b")}
    created: list[int] = []
    errors: list[str] = []

    def create() -> None:
        for first in range(0, PODS, BATCH):
            items = [stack.vm_pod(f"vm-{i:03d}", PROVIDER) for i in range(first, first + BATCH)]
            done = control_plane.kubectl(
                "apply", "-n", ns, "-f", "-", check=False,
                input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
            if done.returncode != 0:
                errors.append(done.stderr)
            created.append(first + BATCH)
            time.sleep(0.5)

    try:
        eventually(lambda: len(holders(stack)) == 2, timeout=90, what="two replicas serving")
        eventually(lambda: len(members(stack)) == 2, timeout=30, what="two members")
        creator = threading.Thread(target=create, name="creator")
        creator.start()

        def roll_facade(old: FacadeProcess, new: str) -> None:
            replicas[new] = replica(stack, tmp_path / new)  # maxSurge 1: the new one first
            eventually(lambda: len(members(stack)) == 3, timeout=60,
                       what=f"replica {new} a member")
            old.stop()  # then SIGTERM to an old one (maxUnavailable 0)
            say(f"facade rolled to {new} at {created[-1] if created else 0} pods")

        eventually(lambda: len(created) >= 5, timeout=60, what="50 pods created")
        assert stack.facade is not None
        roll_facade(stack.facade, "c")
        eventually(lambda: len(created) >= 10, timeout=60, what="100 pods created")
        roll_facade(replicas.pop("b"), "d")
        eventually(lambda: len(created) >= 15, timeout=60, what="150 pods created")
        provider = stack.providers[PROVIDER]
        provider.stop()  # Recreate: the old process ends before the new one starts
        provider.start()
        say(f"provider recreated at {created[-1]} pods")
        creator.join(120)
        assert not creator.is_alive() and not errors, errors

        def all_running() -> list[Any] | None:
            found = pods(stack, ns)
            ok = len(found) == PODS and all(p.get("status", {}).get("phase") == "Running"
                                            for p in found)
            return found if ok else None

        running = eventually(all_running, timeout=300, interval=2, what="200 pods Running")
        say("200 pods Running")
        assert len(holders(stack)) == 2  # the two new replicas serve every node
        at_provider = provider_pods(stack)
        uids = {p["metadata"]["uid"] for p in running}
        identities = [p.pod.identity for p in at_provider]
        assert len(at_provider) == PODS, len(at_provider)
        assert len(set(identities)) == PODS  # no VM twice
        assert {p.pod.ref.uid for p in at_provider} == uids  # none without its pod
        assert set(identities) == uids  # bare pods: each VM has its pod's UID as identity
    finally:
        for process in replicas.values():
            process.stop()
        control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)
