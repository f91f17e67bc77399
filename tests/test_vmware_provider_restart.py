"""StartPod, StopPod and guest exit codes on the vSphere provider against vcsim, through its gRPC
server: a VM that stops on its own reports the exit code its guest left in
guestinfo.vmlet.exitCode, StartPod powers it on again (once, however often it is asked),
clearing that code, and StopPod powers it off (once), exit code 137 unless the guest left one.

vcsim stands in for the guest: the tests write guestinfo.vmlet.exitCode into the VM's
extraConfig, where `vmware-rpctool "info-set guestinfo.vmlet.exitCode 3"` puts it on a real
host, then power the VM off as the guest's shutdown would. vcsim's VMs run no VMware Tools
(guest.toolsRunningStatus guestToolsNotRunning) unless a test says they do with vcsim's
`SET.guest.toolsRunningStatus` extraConfig key; vcsim's ShutdownGuest then powers the VM off at
once, or after `-method-delay ShutdownGuest:<ms>` twice over (the call, then its task).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
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
    start_provider,
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


def count_events(sim: VcSim, identity: str, kind: type[Any]) -> int:
    """How many events of `kind` vCenter posted for the VM of `identity`."""
    with sim.connect() as si:
        (vm,) = vms_with_identity(si, identity)
        spec = vim.event.EventFilterSpec(
            entity=vim.event.EventFilterSpec.ByEntity(entity=vm, recursion="self"),
            eventTypeId=[kind.__name__.rsplit(".", 1)[-1]],
        )
        events: list[Any] = si.RetrieveContent().eventManager.QueryEvents(spec) or []
        return sum(isinstance(e, kind) for e in events)


def power_ons(sim: VcSim, identity: str) -> int:
    """How many times vCenter powered the VM of `identity` on."""
    return count_events(sim, identity, vim.event.VmPoweredOnEvent)


def power_offs(sim: VcSim, identity: str) -> int:
    """How many times the VM of `identity` went off (a power-off or a guest shutdown)."""
    return count_events(sim, identity, vim.event.VmPoweredOffEvent)


def shutdowns_asked(sim: VcSim, identity: str) -> int:
    """How many times vCenter asked the guest of the VM of `identity` to shut down."""
    return count_events(sim, identity, vim.event.VmGuestShutdownEvent)


def run_tools(sim: VcSim, identity: str) -> None:
    """Makes vcsim report VMware Tools running in the VM of `identity`."""
    option = vim.option.OptionValue(key="SET.guest.toolsRunningStatus", value="guestToolsRunning")
    reconfigure_vm(sim, identity, vim.vm.ConfigSpec(extraConfig=[option]))


def stop(provider: Provider, pod: pod_pb2.Pod, grace_seconds: int) -> pod_pb2.PodStatus:
    status: pod_pb2.PodStatus = provider.pods.StopPod(
        lpb.StopPodRequest(pod=pod, grace_seconds=grace_seconds),
        timeout=provider.timeout + grace_seconds,
    ).status
    return status


def timed_stop(
    provider: Provider, pod: pod_pb2.Pod, grace_seconds: int
) -> tuple[pod_pb2.PodStatus, float]:
    """StopPod of `pod`, and how many seconds it took."""
    began = time.monotonic()
    status = stop(provider, pod, grace_seconds)
    return status, time.monotonic() - began


def killed(status: pod_pb2.PodStatus, exit_code: int = 137) -> bool:
    """Whether `status` is of a VM StopPod stopped: terminated with `exit_code`, STOPPED."""
    container = terminated(status)
    return (
        container is not None
        and (container.exit_code, container.reason) == (exit_code, "PoweredOff")
        and (status.phase, status.progress) == (RUNNING, pod_pb2.PROGRESS_STOPPED)
        and not status.ready
    )


def stopping(status: pod_pb2.PodStatus) -> bool:
    """Whether `status` shows the provider stopping the VM."""
    return (
        status.phase == RUNNING
        and not status.ready
        and status.progress == pod_pb2.PROGRESS_BUSY
        and status.not_ready_reason == "Stopping"
    )


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


# StopPod.


def test_stop_pod_kills_the_vm_and_start_pod_runs_it_again(
    provider: Provider, vcsim: VcSim
) -> None:
    pod = make_pod(NODES[0])
    stream = provider.stream()
    with provider.cleanup(pod.identity):
        provider.create(pod)
        moid, offs = the_vm(vcsim, pod.identity)["moid"], power_offs(vcsim, pod.identity)

        status = stop(provider, pod, 0)
        assert killed(status), status
        assert "StopPod" in status.container_statuses[0].terminated.message
        vm = the_vm(vcsim, pod.identity)
        assert (vm["moid"], vm["power"], vm["extra"][KEY]) == (moid, "poweredOff", "137")
        assert power_offs(vcsim, pod.identity) == offs + 1
        assert shutdowns_asked(vcsim, pod.identity) == 0  # grace 0: never asked
        assert killed(provider.status(pod))
        # Streamed: the step while it lasted, then the kill; never a clean exit in between.
        stream.wait(pod.ref.name, killed, timeout=60)
        pushed = stream.of(pod.ref.name)
        assert any(stopping(s) for s in pushed)
        assert {t.exit_code for s in pushed if (t := terminated(s)) is not None} == {137}

        # A VM that is off: no change, however often and by however many at once.
        assert killed(stop(provider, pod, 0))
        with ThreadPoolExecutor(4) as pool:
            assert all(killed(s) for s in pool.map(lambda g: stop(provider, pod, g), (0, 5, 0, 5)))
        assert power_offs(vcsim, pod.identity) == offs + 1
        assert shutdowns_asked(vcsim, pod.identity) == 0

        started = start(provider, pod)
        assert started.phase == RUNNING and terminated(started) is None
        vm = the_vm(vcsim, pod.identity)
        assert (vm["moid"], vm["power"], vm["extra"].get(KEY, "")) == (moid, "poweredOn", "")

        # Four StopPods at once while it runs: one power-off.
        with ThreadPoolExecutor(4) as pool:
            assert all(killed(s) for s in pool.map(lambda _: stop(provider, pod, 0), range(4)))
        assert power_offs(vcsim, pod.identity) == offs + 2
        assert the_vm(vcsim, pod.identity)["extra"][KEY] == "137"
        assert count_running(provider, pod) == 1  # listed once, Running with its VM off
    stream.close()


def test_stop_pod_asks_the_guest_when_vmware_tools_run(provider: Provider, vcsim: VcSim) -> None:
    pod = make_pod(NODES[1])
    with provider.cleanup(pod.identity):
        provider.create(pod)
        run_tools(vcsim, pod.identity)
        offs = power_offs(vcsim, pod.identity)
        status, took = timed_stop(provider, pod, 60)
        assert killed(status), status  # shut down on request, leaving no code: killed all the same
        assert took < 30, "vcsim's guest shuts down at once; the provider waited for nothing"
        assert shutdowns_asked(vcsim, pod.identity) == 1
        assert power_offs(vcsim, pod.identity) == offs + 1
        assert the_vm(vcsim, pod.identity)["power"] == "poweredOff"

        # A guest that leaves its own code on its way out keeps it.
        start(provider, pod)
        option = vim.option.OptionValue(key=KEY, value="5")
        reconfigure_vm(vcsim, pod.identity, vim.vm.ConfigSpec(extraConfig=[option]))
        status = stop(provider, pod, 60)
        assert killed(status, 5), status
        assert "its guest left exit code 5" in status.container_statuses[0].terminated.message
        assert shutdowns_asked(vcsim, pod.identity) == 2
        assert the_vm(vcsim, pod.identity)["extra"][KEY] == "5"
        assert killed(provider.status(pod), 5)


def test_stop_pod_powers_off_at_once_when_the_guest_cannot_be_asked(
    provider: Provider, vcsim: VcSim
) -> None:
    pod = make_pod(NODES[2])
    with provider.cleanup(pod.identity):
        provider.create(pod)
        offs = power_offs(vcsim, pod.identity)
        status, took = timed_stop(provider, pod, 120)  # vcsim's VMs run no VMware Tools
        assert killed(status), status
        assert took < 30, f"no guest to wait for, yet StopPod took {took:.1f}s"
        assert shutdowns_asked(vcsim, pod.identity) == 0
        assert power_offs(vcsim, pod.identity) == offs + 1
        assert the_vm(vcsim, pod.identity)["extra"][KEY] == "137"


def test_stop_pod_refusals(provider: Provider, vcsim: VcSim) -> None:
    unknown = make_pod(NODES[0])
    assert code_of(lambda: stop(provider, unknown, 0)) == grpc.StatusCode.NOT_FOUND
    pod = make_pod(NODES[0])
    with provider.cleanup(pod.identity):
        provider.create(pod)
        other_identity = make_pod(NODES[0], name=pod.ref.name)
        assert code_of(lambda: stop(provider, other_identity, 0)) == grpc.StatusCode.NOT_FOUND
        intruder = make_pod(NODES[0], name=pod.ref.name, identity=pod.identity)
        intruder.ref.namespace = "elsewhere"
        assert code_of(lambda: stop(provider, intruder, 0)) == grpc.StatusCode.PERMISSION_DENIED
        vm = the_vm(vcsim, pod.identity)
        assert (vm["power"], vm["extra"].get(KEY, "")) == ("poweredOn", "")
        assert terminated(provider.status(pod)) is None

        pod.keep_on_delete = True
        provider.delete(pod)
        assert code_of(lambda: stop(provider, pod, 0)) == grpc.StatusCode.NOT_FOUND


def test_stop_pod_powers_off_a_guest_that_outlasts_its_grace(tmp_path: Path) -> None:
    """A guest asked to shut down that is still up when its grace period ends is powered off
    hard then. vcsim here takes 2.5 s to answer ShutdownGuest and 2.5 s more to power the VM
    off: the guest would be off after 5 s, its grace is 3 s."""
    sim = VcSim(hosts=1, state_dir=tmp_path / "vcsim",
                extra_args=("-method-delay", "ShutdownGuest:2500,LockHandoff:0")).start()
    running = start_provider(sim, tmp_path / "provider")
    try:
        node = eventually(running.list_nodes, what="a node")[0].name
        pod = make_pod(node)
        running.create(pod)
        run_tools(sim, pod.identity)
        with ThreadPoolExecutor(1) as pool:
            stopped = pool.submit(timed_stop, running, pod, 3)
            shown = eventually(lambda: s if stopping(s := running.status(pod)) else None,
                               timeout=10, what="the Stopping step")  # fmt: skip
            status, took = stopped.result()
        vm = the_vm(sim, pod.identity)  # before the guest's own shutdown would end
        assert vm["power"] == "poweredOff" and vm["extra"][KEY] == "137"
        assert "3s" in shown.message
        assert 3 <= took < 5, f"StopPod took {took:.1f}s for a grace of 3s"
        assert killed(status), status
        assert shutdowns_asked(sim, pod.identity) == 1
        time.sleep(5 - took + 0.5)  # the guest's shutdown lands on a VM that is off
        assert killed(running.status(pod))
        assert the_vm(sim, pod.identity)["power"] == "poweredOff"
    finally:
        running.stop()
        sim.stop()
