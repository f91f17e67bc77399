"""StartPod and guest exit codes on the vSphere provider against vcsim, through its gRPC server:
a VM that stops on its own reports the exit code its guest left in guestinfo.vmlet.exitCode,
and StartPod powers it on again (once, however often it is asked), clearing that code.

vcsim stands in for the guest: the tests write guestinfo.vmlet.exitCode into the VM's
extraConfig, where `vmware-rpctool "info-set guestinfo.vmlet.exitCode 3"` puts it on a real
host, then power the VM off as the guest's shutdown would.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from pyVmomi import vim

from tests import vmwareprovider
from tests.vmwareprovider import (
    NODES,
    RUNNING,
    Provider,
    eventually,
    make_pod,
    reconfigure_vm,
    the_vm,
)
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lpb
from vmlet.provider.v1 import pod_pb2
from vmlet_conformance import code_of
from vmlet_localenv.stack import vms_with_identity
from vmlet_localenv.vcsim import VcSim, _wait_task

pytestmark = pytest.mark.vcsim

provider = vmwareprovider.provider
KEY = "guestinfo.vmlet.exitCode"


def start(provider: Provider, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
    status: pod_pb2.PodStatus = provider.pods.StartPod(
        lpb.StartPodRequest(pod=pod), timeout=provider.timeout
    ).status
    return status


def stop_as_guest(sim: VcSim, identity: str, exit_code: str | None) -> None:
    """What a guest does on its way out: leave `exit_code` (None: nothing), then shut down."""
    if exit_code is not None:
        option = vim.option.OptionValue(key=KEY, value=exit_code)
        reconfigure_vm(sim, identity, vim.vm.ConfigSpec(extraConfig=[option]))
    with sim.connect() as si:
        (vm,) = vms_with_identity(si, identity)
        _wait_task(vm.PowerOffVM_Task())


def power_ons(sim: VcSim, identity: str) -> int:
    """How many times vCenter powered the VM of `identity` on."""
    with sim.connect() as si:
        (vm,) = vms_with_identity(si, identity)
        spec = vim.event.EventFilterSpec(
            entity=vim.event.EventFilterSpec.ByEntity(entity=vm, recursion="self"),
            eventTypeId=["VmPoweredOnEvent"],
        )
        events: list[Any] = si.RetrieveContent().eventManager.QueryEvents(spec) or []
        return sum(isinstance(e, vim.event.VmPoweredOnEvent) for e in events)


def terminated(status: pod_pb2.PodStatus) -> pod_pb2.ContainerStateTerminated | None:
    (container,) = status.container_statuses
    return container.terminated if container.HasField("terminated") else None


def start_at_once(provider: Provider, pod: pod_pb2.Pod, calls: int) -> list[pod_pb2.PodStatus]:
    """`calls` StartPods of `pod` at the same time."""
    with ThreadPoolExecutor(calls) as pool:
        return list(pool.map(lambda _: start(provider, pod), range(calls)))


def wait_stopped(provider: Provider, pod: pod_pb2.Pod) -> pod_pb2.ContainerStateTerminated:
    """The terminated state of `pod`'s container, once GetPodStatus shows one."""

    def check() -> pod_pb2.ContainerStateTerminated | None:
        return terminated(provider.status(pod))

    return eventually(check, what=f"pod {pod.ref.name} stopped")


def count_running(provider: Provider, pod: pod_pb2.Pod) -> int:
    return sum(1 for p in provider.listed_named(pod.ref.name) if p.status.phase == RUNNING)


def test_exit_code_of_the_guest_then_start_pod_once(provider: Provider, vcsim: VcSim) -> None:
    pod = make_pod(NODES[0])
    stream = provider.stream()
    with provider.cleanup(pod.identity):
        assert provider.create(pod).phase == RUNNING
        ons = power_ons(vcsim, pod.identity)
        stop_as_guest(vcsim, pod.identity, "3")

        pushed = stream.wait(pod.ref.name, lambda s: terminated(s) is not None, timeout=60)
        stopped = terminated(pushed)
        assert stopped is not None and stopped.exit_code == 3
        assert (stopped.reason, pushed.phase) == ("PoweredOff", RUNNING)
        assert pushed.progress == pod_pb2.PROGRESS_STOPPED and not pushed.ready
        assert "exit code 3" in stopped.message
        assert wait_stopped(provider, pod).exit_code == 3  # GetPodStatus says so too

        status = start(provider, pod)
        vm = the_vm(vcsim, pod.identity)
        assert vm["power"] == "poweredOn"
        assert vm["extra"].get(KEY, "") == ""  # cleared before the power-on
        assert vm["extra"]["vmlet.identity"] == pod.identity  # the same VM
        assert status.phase == RUNNING and terminated(status) is None
        assert power_ons(vcsim, pod.identity) == ons + 1
        stream.wait(pod.ref.name, lambda s: s.container_statuses[0].HasField("running"),
                    timeout=60)  # fmt: skip

        # Asked again (a retry), or by several at once: nothing more happens.
        again = start(provider, pod)
        assert again.phase == RUNNING and terminated(again) is None
        assert all(s.phase == RUNNING for s in start_at_once(provider, pod, 4))
        assert power_ons(vcsim, pod.identity) == ons + 1
        assert the_vm(vcsim, pod.identity)["power"] == "poweredOn"
        assert count_running(provider, pod) == 1
    stream.close()


def test_a_clean_shutdown_is_0_and_a_bad_code_is_1(provider: Provider, vcsim: VcSim) -> None:
    pod = make_pod(NODES[1])
    with provider.cleanup(pod.identity):
        provider.create(pod)
        stop_as_guest(vcsim, pod.identity, None)
        clean = wait_stopped(provider, pod)
        assert (clean.exit_code, clean.reason) == (0, "PoweredOff")
        assert "exit code" not in clean.message

        # Started by several callers at once: one power-on.
        ons = power_ons(vcsim, pod.identity)
        assert all(s.phase == RUNNING for s in start_at_once(provider, pod, 3))
        assert power_ons(vcsim, pod.identity) == ons + 1

        stop_as_guest(vcsim, pod.identity, "three\n")
        bad = wait_stopped(provider, pod)
        assert bad.exit_code == 1
        assert KEY in bad.message and "'three'" in bad.message and "int32" in bad.message

        start(provider, pod)
        assert the_vm(vcsim, pod.identity)["extra"].get(KEY, "") == ""
        stop_as_guest(vcsim, pod.identity, "2147483648")  # beyond int32
        over = wait_stopped(provider, pod)
        assert over.exit_code == 1 and "'2147483648'" in over.message
        provider.delete(pod)


def test_start_pod_refusals(provider: Provider, vcsim: VcSim) -> None:
    unknown = make_pod(NODES[0])
    assert code_of(lambda: start(provider, unknown)) == grpc.StatusCode.NOT_FOUND
    pod = make_pod(NODES[0])
    with provider.cleanup(pod.identity):
        provider.create(pod)
        stop_as_guest(vcsim, pod.identity, "5")
        assert wait_stopped(provider, pod).exit_code == 5

        # Another identity under the pod's name runs no VM for it.
        other_identity = make_pod(NODES[0], name=pod.ref.name)
        assert code_of(lambda: start(provider, other_identity)) == grpc.StatusCode.NOT_FOUND

        # A pod of another namespace naming the VM's identity: refused as create and delete
        # refuse it, and the VM stays as it was.
        intruder = make_pod(NODES[0], name=pod.ref.name, identity=pod.identity)
        intruder.ref.namespace = "elsewhere"
        denied = grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: provider.create(intruder)) == denied
        assert code_of(lambda: provider.delete(intruder)) == denied
        assert code_of(lambda: start(provider, intruder)) == denied
        vm = the_vm(vcsim, pod.identity)
        assert (vm["power"], vm["extra"][KEY]) == ("poweredOff", "5")
        assert wait_stopped(provider, pod).exit_code == 5

        # Gone from the provider (deleted, VM kept): nothing to start.
        pod.keep_on_delete = True
        provider.delete(pod)
        assert code_of(lambda: start(provider, pod)) == grpc.StatusCode.NOT_FOUND
        assert the_vm(vcsim, pod.identity)["power"] == "poweredOff"
