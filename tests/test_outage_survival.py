"""No VM dies because vmlet was away (issue 19): the facade killed in the middle of 100 VM
creations, and away past the node lifecycle controller's grace and DefaultTolerationSeconds.

Without the fix the node lifecycle controller taints the nodes `unreachable` (NoExecute), the
taint manager evicts every pod once the 300 s DefaultTolerationSeconds gave it run out, and the
returning facade destroys each evicted bare pod's VM. Here the timings are the real components'
own, shortened through their flags so the test takes a minute instead of six: a control plane of
its own with DefaultTolerationSeconds at 10 s (kube-apiserver's
--default-not-ready/unreachable-toleration-seconds) and a node grace period of 16 s
(kube-controller-manager's --node-monitor-grace-period); the facade renews its leases every 2 s.

Three nodes of a second facade stay up (see `steady`), as real workers would. What must hold:
every VM that ran when the facade died still runs, none was destroyed or made twice; no pod with
a VM was evicted (their tolerations lost their seconds before their VM was made); a pod the
taint manager did evict had no VM, and none is made for it; once a facade is back everything
converges: exactly one VM per pod, all Running.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lifecycle
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lifecycle_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, eventually

pytestmark = [pytest.mark.controlplane]

PROVIDER = "outage"
PODS = 100
TOLERATION_SECONDS = 10
GRACE_SECONDS = 16
RUNNING = 2  # pod phase Running in the contract (POD_PHASE_RUNNING)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = ControlPlane(
        state_dir=tmp_path_factory.mktemp("outage-cp"),
        apiserver_args=(f"--default-not-ready-toleration-seconds={TOLERATION_SECONDS}",
                        f"--default-unreachable-toleration-seconds={TOLERATION_SECONDS}"),
        controller_manager_args=(f"--node-monitor-grace-period={GRACE_SECONDS}s",
                                 "--node-monitor-period=2s")).start()
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def steady(cluster: ControlPlane, tmp_path: Path) -> Iterator[Stack]:
    """Three nodes of another facade that stays up. The node lifecycle controller neither taints
    nor evicts in a zone whose nodes are all (>= 55%) unhealthy, taking that for its own loss of
    the control plane ("full disruption"): with only the killed facade's two nodes, whether they
    are tainted at all would depend on whether both turned Unknown in one monitor pass."""
    (tmp_path / "steady").mkdir()
    s = Stack(cluster, tmp_path / "steady", {"steady": ["--nodes", "3"]},
              facade_args=["--lease-seconds", "2"]).start()
    try:
        eventually(lambda: len(s.ready_nodes("steady")) == 3, what="steady nodes Ready")
        yield s
    finally:
        s.stop()


@pytest.fixture
def stack(cluster: ControlPlane, steady: Stack, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(cluster, tmp_path, {PROVIDER: ["--nodes", "2", "--start-delay-seconds", "2"]},
              facade_args=["--lease-seconds", "2", "--ping-seconds", "1"]).start()
    try:
        eventually(lambda: len(s.ready_nodes(PROVIDER)) == 2, what="nodes Ready")
        yield s
    finally:
        s.stop()
        s.print_logs(60)


def vms(stack: Stack) -> dict[str, tuple[str, int]]:
    """identity -> (pod name, phase) of every VM the provider runs."""
    with stack.channel(PROVIDER) as channel:
        listed = lifecycle_grpc.PodLifecycleServiceStub(channel).GetPods(
            lifecycle.GetPodsRequest(), timeout=10)
    return {p.pod.identity: (p.pod.ref.name, p.status.phase) for p in listed.pods}


def pods(stack: Stack, ns: str) -> list[dict[str, Any]]:
    return list(stack.kubectl_json("get", "pods", "-n", ns)["items"])


def node_taints(stack: Stack) -> set[str]:
    return {t["key"] for n in stack.nodes(PROVIDER) for t in n["spec"].get("taints") or []
            if t.get("effect") == "NoExecute"}


def test_vms_outlive_a_facade_away_past_every_toleration(stack: Stack,
                                                         cluster: ControlPlane) -> None:
    ns = f"outage-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    started = time.monotonic()
    manifests = [stack.vm_pod(f"vm-{i:03}", PROVIDER) for i in range(PODS)]
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": manifests}))

    eventually(lambda: len(vms(stack)) >= PODS // 4, timeout=120, interval=0.1,
               what=f"{PODS // 4} VMs made")
    assert stack.facade is not None
    stack.facade.kill()  # SIGKILL, in the middle of the creations
    killed = time.monotonic()
    time.sleep(1.0)  # CreatePods the facade sent may still land at the provider
    before = vms(stack)
    print(f"\nfacade killed {killed - started:.1f}s after the apply: {len(before)} VMs, "
          f"{sum(p == RUNNING for _, p in before.values())} running", flush=True)
    assert before, "no VM was made before the kill"

    # Away past the grace period and the tolerations: the nodes tainted, evictions due.
    eventually(lambda: "node.kubernetes.io/unreachable" in node_taints(stack), timeout=60,
               what="the nodes tainted unreachable (NoExecute)")
    time.sleep(TOLERATION_SECONDS + 15)
    print(f"facade away {time.monotonic() - killed:.0f}s", flush=True)
    during = vms(stack)
    assert during.keys() == before.keys(), "a VM was made or destroyed while the facade was away"
    stopped = [name for i, (name, phase) in before.items()
               if phase == RUNNING and during[i][1] != RUNNING]
    assert not stopped, f"VMs stopped while the facade was away: {stopped}"
    evicted = {p["metadata"]["name"] for p in pods(stack, ns)
               if p["metadata"].get("deletionTimestamp")}
    with_vm = {name for name, _ in before.values()}
    assert not evicted & with_vm, f"pods with a VM were evicted: {sorted(evicted & with_vm)}"
    for p in pods(stack, ns):
        if p["metadata"]["name"] in with_vm:
            seconds = [t for t in p["spec"].get("tolerations") or []
                       if t.get("key", "").startswith("node.kubernetes.io/")
                       and "tolerationSeconds" in t]
            assert not seconds, (p["metadata"]["name"], seconds)
    print(f"evicted while away (no VM yet): {len(evicted)}", flush=True)

    stack.start_facade()

    seen: list[str] = []

    def converged() -> dict[str, tuple[str, int]] | None:
        now = vms(stack)
        live = [p for p in pods(stack, ns) if not p["metadata"].get("deletionTimestamp")]
        running = [p for p in live if p.get("status", {}).get("phase") == "Running"]
        ok = (len(running) == len(live) and len(now) == len(live)
              and all(phase == RUNNING for _, phase in now.values()))
        seen[:] = [f"{len(live)} pods, {len(running)} Running, {len(now)} VMs, "
                   f"{sum(phase == RUNNING for _, phase in now.values())} running"]
        return now if ok else None

    try:
        after = eventually(converged, timeout=180, interval=1.0,
                           what="everything Running again")
    finally:
        print(f"last seen: {seen}", flush=True)
    print(f"converged {time.monotonic() - killed:.0f}s after the kill: {len(after)} VMs",
          flush=True)
    for identity, (name, _) in before.items():
        assert after.get(identity, ("", 0))[0] == name, f"the VM of {name} is not the same"
    names = [name for name, _ in after.values()]
    assert len(names) == len(set(names)), "a pod has two VMs"
    assert not {name for name in names} & evicted, "an evicted pod got a VM"
    live = {p["metadata"]["name"] for p in pods(stack, ns)}
    assert set(names) == live and len(live) == PODS - len(evicted)
