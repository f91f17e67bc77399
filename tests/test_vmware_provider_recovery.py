"""The vSphere provider against vcsim when things go wrong: concurrent and throttled creates,
a VM destroyed behind its back, the provider SIGKILLed mid-create or restarted, vCenter's
session expiring, vCenter going away and coming back. Checked through pyvmomi: vCenter must
hold exactly one VM per identity whatever happened (the conformance suite sees the provider's
answers only). The provider and vcsim: tests/vmwareprovider.py."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from pyVmomi import vim

from tests import vmwareprovider
from tests.vmwareprovider import (
    NODES,
    RUNNING,
    Provider,
    count_vms,
    eventually,
    make_pod,
    start_provider,
    the_vm,
)
from vmlet.provider.v1 import node_provider_service_pb2 as npb
from vmlet.provider.v1 import pod_pb2
from vmlet_conformance import code_of
from vmlet_localenv.stack import set_guest_ip, vms_with_identity
from vmlet_localenv.vcsim import VcSim, _wait_task

pytestmark = pytest.mark.vcsim

TRUE = pod_pb2.CONDITION_STATUS_TRUE
provider = vmwareprovider.provider


def test_concurrent_duplicate_creates_make_one_vm(provider: Provider, vcsim: VcSim) -> None:
    pod = make_pod(NODES[2])
    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(lambda _: provider.create(pod), range(10)))
    assert all(s.phase == RUNNING for s in statuses)
    assert count_vms(vcsim, pod.identity) == 1
    provider.delete(pod)


def test_max_creates_makes_one_vm_at_a_time(vcsim: VcSim, tmp_path: Path) -> None:
    provider = start_provider(vcsim, tmp_path, "--max-creates", "1")
    pods = [make_pod(NODES[i % 3]) for i in range(3)]
    try:
        with ThreadPoolExecutor(3) as pool:
            statuses = list(pool.map(provider.create, pods))
        assert all(s.phase == RUNNING for s in statuses)
        names = {the_vm(vcsim, pod.identity)["name"] for pod in pods}
        # vCenter's own record, in the order it posted it: one VM made at a time means each
        # clone starts only once the VM before it is powered on.
        with vcsim.connect() as si:
            spec = vim.event.EventFilterSpec(
                eventTypeId=["VmBeingClonedEvent", "VmPoweredOnEvent"], maxCount=1000
            )
            events = si.RetrieveContent().eventManager.QueryEvents(spec)
        steps = []
        for event in sorted(events, key=lambda e: e.key):
            if isinstance(event, vim.event.VmBeingClonedEvent) and event.destName in names:
                steps.append(("clone", event.destName))
            elif isinstance(event, vim.event.VmPoweredOnEvent) and event.vm.name in names:
                steps.append(("on", event.vm.name))
        assert len(steps) == 6, steps
        for (kind, name), (next_kind, next_name) in zip(steps[::2], steps[1::2], strict=True):
            assert (kind, next_kind, next_name) == ("clone", "on", name), steps
        for pod in pods:
            provider.delete(pod)
    finally:
        provider.stop()


def test_vanished_vm_fails_the_pod_and_is_not_made_again(provider: Provider, vcsim: VcSim) -> None:
    pod = make_pod(NODES[0])
    provider.create(pod)
    with contextlib.closing(provider.stream()) as stream:
        with vcsim.connect() as si:
            (vm,) = vms_with_identity(si, pod.identity)
            _wait_task(vm.PowerOffVM_Task())
            _wait_task(vm.Destroy_Task())
        failed = stream.wait(pod.ref.name, lambda s: s.phase == pod_pb2.POD_PHASE_FAILED,
                             timeout=30)
    assert failed.reason == "VMVanished"
    assert provider.create(pod).reason == "VMVanished"  # a retry does not recreate it
    assert count_vms(vcsim, pod.identity) == 0
    provider.delete(pod)
    assert code_of(lambda: provider.status(pod)) == grpc.StatusCode.NOT_FOUND


def test_sigkill_mid_create_leaves_one_vm(vcsim: VcSim, tmp_path: Path) -> None:
    pods = [make_pod(NODES[i % 3]) for i in range(4)]
    for i, (pod, delay) in enumerate(zip(pods, (0.0, 0.05, 0.15, 0.4), strict=True)):
        victim = start_provider(vcsim, tmp_path / f"victim-{i}")
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(victim.create, pod)
            time.sleep(delay)
            victim.process.kill()
            try:
                pending.result(timeout=30)
            except grpc.RpcError:
                pass
        victim.channel.close()
        survivor = start_provider(vcsim, tmp_path / f"survivor-{i}")
        try:
            assert survivor.create(pod).phase == RUNNING
            assert count_vms(vcsim, pod.identity) == 1
            survivor.delete(pod)
            assert count_vms(vcsim, pod.identity) == 0
        finally:
            survivor.stop()


def test_restarted_provider_knows_its_pods(vcsim: VcSim, tmp_path: Path) -> None:
    first = start_provider(vcsim, tmp_path / "first")
    pod = make_pod(NODES[1])
    try:
        first.create(pod)
    finally:
        first.stop()
    second = start_provider(vcsim, tmp_path / "second")
    try:
        status = eventually(lambda: second.status(pod), what="pod known after restart")
        assert status.phase == RUNNING
        (found,) = second.listed_named(pod.ref.name)
        assert found.pod.identity == pod.identity and found.pod.node_name == NODES[1]
        second.delete(pod)
        assert count_vms(vcsim, pod.identity) == 0
    finally:
        second.stop()


# vCenter goes away and comes back.


def test_expired_session_is_logged_in_again(provider: Provider, vcsim: VcSim) -> None:
    with vcsim.connect() as si:
        manager = si.content.sessionManager
        mine = manager.currentSession.key
        others = [s.key for s in manager.sessionList if s.key != mine]
        assert others
        manager.TerminateSession(sessionId=others)
    # The next call meets NotAuthenticated; the provider logs in again and carries on.
    pod = make_pod(NODES[0])
    assert provider.create(pod).phase == RUNNING
    provider.ping()
    # The watch, whose collector ended with the old session, starts over and still pushes.
    with contextlib.closing(provider.stream()) as stream:
        assert set_guest_ip(vcsim, pod.identity, "10.9.8.7")
        pushed = stream.wait(pod.ref.name, lambda s: s.pod_ip == "10.9.8.7", timeout=30)
        assert pushed.phase == RUNNING
    provider.delete(pod)


def test_vcenter_restart_relogin_and_recovery(tmp_path: Path) -> None:
    sim = VcSim(state_dir=tmp_path / "vcsim").start()
    try:
        provider = start_provider(sim, tmp_path / "provider")
    except BaseException:
        sim.stop()
        raise
    try:
        pod = make_pod(NODES[0])
        provider.create(pod)
        pushed = provider.node_provider.NotifyNodeStatus(npb.NotifyNodeStatusRequest(),
                                                         timeout=120)
        assert sorted(next(pushed).node.name for _ in NODES) == sorted(NODES)

        assert sim.process is not None
        sim.process.stop()
        eventually(
            lambda: code_of(provider.ping) == grpc.StatusCode.UNAVAILABLE,
            what="ping failing while vCenter is down",
        )
        unknown: dict[str, pod_pb2.Condition] = {}
        while len(unknown) < len(NODES):  # each node is pushed as Ready=Unknown
            node = next(pushed).node
            if node.conditions[0].status == pod_pb2.CONDITION_STATUS_UNKNOWN:
                unknown[node.name] = node.conditions[0]
        assert {c.reason for c in unknown.values()} == {"VCenterUnreachable"}
        nodes = provider.list_nodes()
        assert len(nodes) == 3
        assert all(
            c.status == pod_pb2.CONDITION_STATUS_UNKNOWN and c.reason == "VCenterUnreachable"
            for n in nodes
            for c in n.conditions
        )
        unreachable = make_pod(NODES[0])
        assert code_of(lambda: provider.create(unreachable)) == grpc.StatusCode.UNAVAILABLE

        sim.restart()  # same port, a fresh inventory: the old VM is gone
        eventually(provider.pong, timeout=60, what="ping after vCenter came back")
        ready_again = eventually(
            lambda: [n for n in provider.list_nodes() if n.conditions[0].status == TRUE],
            what="nodes ready again",
        )
        assert sorted(n.name for n in ready_again) == sorted(NODES)
        pushed.cancel()
        failed = eventually(
            lambda: s if (s := provider.status(pod)).phase == pod_pb2.POD_PHASE_FAILED else None,
            what="pod of the vanished VM failed",
        )
        assert failed.reason == "VMVanished"
        fresh = make_pod(NODES[1])
        created = eventually(lambda: provider.create(fresh), what="create after restart")
        assert created.phase == RUNNING
        assert count_vms(sim, fresh.identity) == 1
    finally:
        provider.stop()
        print(provider.process.tail(60))
        sim.stop()
