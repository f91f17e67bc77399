"""The in-memory IaaS: machines by identity, the pods they serve, hosts, addresses, disks.

Every operation runs on the event loop without awaiting, so each one is atomic: twenty
concurrent CreatePod calls for one identity see one machine. Look-ups are dict look-ups, so
creating a pod costs O(1) however many run. Each change of a pod's status is published once to
the `vmlet_contract.Hub` that feeds NotifyPods, and `on_change` is called so the state file can
follow.

What a pod must be and the per-pod knobs for tests of the facade are in `podrules`; how a
machine shows, in `machinestatus`; what a restart keeps, in `cloudstate`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeAlias

from vmlet.provider.v1 import pod_notifier_service_pb2, pod_pb2, virtual_machine_service_pb2
from vmlet_contract import (
    AlreadyExists,
    FailedPrecondition,
    Hub,
    InvalidArgument,
    Mailbox,
    NotFound,
    ProviderError,
    check_namespace,
)

from .addresses import IpPool
from .disks import DiskStore, disk_handles
from .hosts import Host, Usage, usage_of
from .images import check_image_exists, image_name
from .machines import Machine, PodKey, Power, filled_in, pod_key, same_pod
from .machinestatus import status_of, taken_over, vm_record
from .networks import check_networks_exist
from .podrules import exit_after, injected_failure, start_delay, validate

__all__ = ["Cloud", "CloudOptions", "PodUpdate"]

_log = logging.getLogger(__name__)

PodUpdate: TypeAlias = pod_notifier_service_pb2.NotifyPodsResponse
KILLED = 137  # the exit code of a machine StopPod powered off, as of a container a kubelet killed


@dataclass(frozen=True)
class CloudOptions:
    """The shape of the pretend IaaS."""

    nodes: int = 2
    node_prefix: str = "vmlet-memory"
    cpu: str = "64"
    memory: str = "256Gi"
    pods: int = 250
    start_delay_seconds: float = 0.0
    ip_base: str = "10.88.0.0/16"
    subscriber_limit: int = 65536
    #: The images the IaaS has; empty means every well-formed name.
    images: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()  # the networks it has; empty means every name


def _now() -> datetime:
    return datetime.now(UTC)


class Cloud:
    """The whole pretend IaaS of one provider process."""

    def __init__(self, options: CloudOptions, *, version: str = "0") -> None:
        if options.nodes < 1:
            raise InvalidArgument("the provider needs at least one node")
        self.options = options
        self.version = version
        self.hosts: dict[str, Host] = {}
        for i in range(options.nodes):
            name = f"{options.node_prefix}-{i}"
            self.hosts[name] = Host(name, cpu=options.cpu, memory=options.memory, pods=options.pods)
        self.ips = IpPool(options.ip_base)
        self.disks = DiskStore()
        self.closing = asyncio.Event()
        # Set by the state file: called after every change, awaited before answering.
        self.on_change: Callable[[], None] = lambda: None
        self.flush: Callable[[], Awaitable[None]] = _nothing
        self._machines: dict[str, Machine] = {}
        self._by_pod: dict[PodKey, str] = {}
        self._hub: Hub[PodUpdate] = Hub(limit=options.subscriber_limit)
        self._timers: dict[str, asyncio.TimerHandle] = {}

    # Look-ups.

    def machines(self) -> Iterator[Machine]:
        """Every machine, with or without a pod."""
        return iter(self._machines.values())

    def machine(self, identity: str, namespace: str = "") -> Machine:
        """The machine of `identity`; NotFound otherwise, PermissionDenied when it belongs to
        another namespace than `namespace` (when given)."""
        vm = self.find(identity, namespace)
        if vm is None:
            raise NotFound(f"no VM with identity {identity}")
        return vm

    def find(self, identity: str, namespace: str = "") -> Machine | None:
        """The machine of `identity`, None when there is none; PermissionDenied when it belongs
        to another namespace than `namespace` (when given)."""
        vm = self._machines.get(identity)
        if vm is not None:
            check_namespace(vm.namespace, namespace, identity)
        return vm

    def pod_machine(self, namespace: str, name: str) -> Machine:
        """The machine serving pod namespace/name; NotFound otherwise."""
        identity = self._by_pod.get((namespace, name))
        if identity is None:
            raise NotFound(f"pod {namespace}/{name} not found")
        return self._machines[identity]

    def running_machine(self, namespace: str, name: str) -> Machine:
        """The machine serving pod namespace/name, which must be powered on."""
        vm = self.pod_machine(namespace, name)
        if vm.power is not Power.RUNNING:
            raise FailedPrecondition(f"pod {namespace}/{name} is not running ({vm.power})")
        return vm

    def host(self, name: str) -> Host:
        """The host named `name`; NotFound otherwise."""
        host = self.hosts.get(name)
        if host is None:
            raise NotFound(f"node {name} is not served by this provider")
        return host

    def pods(self) -> list[pod_pb2.PodWithStatus]:
        """Every pod with its status."""
        return [
            pod_pb2.PodWithStatus(pod=vm.pod, status=vm.status)
            for vm in self._machines.values()
            if vm.pod is not None
        ]

    # Notification.

    def subscribe(self) -> Mailbox[PodUpdate]:
        """A subscription that first gets every pod's current status, then each change."""
        initial = [
            (pod_key(vm.pod.ref), PodUpdate(ref=vm.pod.ref, status=vm.status))
            for vm in self._machines.values()
            if vm.pod is not None and vm.status is not None
        ]
        return self._hub.subscribe(initial)

    def unsubscribe(self, sub: Mailbox[PodUpdate]) -> None:
        """Ends interest in changes."""
        self._hub.unsubscribe(sub)

    def close(self) -> None:
        """Ends every stream: the provider is shutting down."""
        self.closing.set()
        self._hub.close("the provider is shutting down; reconnect")
        for timer in self._timers.values():
            timer.cancel()
        for vm in self._machines.values():
            vm.wake_followers()

    # Pod lifecycle.

    def create_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        """Makes the pod's machine, or finds it by identity (moving or powering it on as
        needed). Idempotent."""
        validate(pod)
        host = self.hosts.get(pod.node_name)
        if host is None:
            raise FailedPrecondition(f"node {pod.node_name} is not served by this provider")
        key = pod_key(pod.ref)
        owner = self._by_pod.get(key)
        if owner is not None and owner != pod.identity:
            raise AlreadyExists(
                f"pod {key[0]}/{key[1]} already runs VM {owner}; it cannot also run {pod.identity}"
            )
        vm = self._machines.get(pod.identity)
        if vm is not None:
            check_namespace(vm.namespace, pod.ref.namespace, vm.identity)
            vm.namespace = vm.namespace or pod.ref.namespace
            vm.keep = vm.keep or pod.keep_on_delete
        if vm is None:
            failure = injected_failure(pod)
            if failure is not None:
                raise failure
            check_image_exists(image_name(pod.containers[0].image), self.options.images)
            check_networks_exist((n.name for n in pod.networks), self.options.networks)
            vm = self._make(pod, host)
        elif vm.pod is not None and same_pod(vm.pod.ref, pod.ref):
            if vm.node != host.name:
                self._move(vm, host)
                self._publish(vm)
        elif vm.pod is not None:
            self._take_over(vm, pod, host)
        else:
            self._revive(vm, pod, host)
        self.on_change()
        assert vm.status is not None
        return vm.status

    def update_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        """Brings the machine in line with a changed pod: resources, annotations, node."""
        vm = self.pod_machine(pod.ref.namespace, pod.ref.name)
        if pod.identity and pod.identity != vm.identity:
            raise InvalidArgument(
                f"pod {pod.ref.namespace}/{pod.ref.name} runs VM {vm.identity}; "
                f"its identity cannot change to {pod.identity}"
            )
        if not pod.identity or not pod.node_name:
            pod = filled_in(pod, identity=vm.identity, node_name=vm.node)
        host = self.hosts.get(pod.node_name)
        if host is None:
            raise FailedPrecondition(f"node {pod.node_name} is not served by this provider")
        handles = disk_handles(pod)
        self.disks.check_attachable(handles, vm.identity)
        self._reaccount(vm, host, usage_of(pod), what=f"pod {pod.ref.namespace}/{pod.ref.name}")
        self.disks.attach_exactly(handles, vm.identity)
        vm.pod = pod
        vm.record("updated")
        self._publish(vm)
        self.on_change()
        assert vm.status is not None
        return vm.status

    def start_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        """Powers the pod's machine on again after its guest shut down; a machine that runs
        or is powering on is left as it is. NotFound for a pod without a machine."""
        vm = self._machine_of(pod)
        if vm.power is Power.STOPPED and vm.pod is not None:
            self.host(vm.node).admit(usage := usage_of(vm.pod), what=f"VM {vm.identity}")
            vm.usage, vm.restarting = usage, True
            vm.record("started again")
            self._power_on(vm)
            self.on_change()
        assert vm.status is not None
        return vm.status

    def stop_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        """Powers the pod's machine off, as killed (exit code 137: a pretend guest shuts down
        at once, whatever the grace), until StartPod; one that is off is left as it is."""
        vm = self._machine_of(pod)
        self.guest_shutdown(vm.identity, KILLED, "stopped by StopPod")
        assert vm.status is not None
        return vm.status

    def guest_shutdown(self, identity: str, exit_code: int, why: str = "guest shut down") -> None:
        """The guest of `identity` shuts down with `exit_code` (its shell's `poweroff`, the
        exit-after knob, StopPod): off, its container terminated, until StartPod."""
        vm = self._machines.get(identity)
        if vm is None or vm.pod is None or vm.power is Power.STOPPED:
            return
        self._power_off(vm)
        vm.exited, vm.finished_at = exit_code, _now()
        vm.record(f"{why} (exit code {exit_code})")
        self._publish(vm)
        self.on_change()

    def _machine_of(self, pod: pod_pb2.Pod) -> Machine:
        vm = self.pod_machine(pod.ref.namespace, pod.ref.name)
        if pod.identity and pod.identity != vm.identity:
            raise InvalidArgument(f"pod {pod.ref.namespace}/{pod.ref.name} runs VM "
                                  f"{vm.identity}, not {pod.identity}")
        return vm

    def delete_pod(self, pod: pod_pb2.Pod) -> None:
        """Powers the pod's machine off and destroys it unless keep_on_delete. Unknown pods,
        and pods whose machine now serves another pod, succeed without touching anything. A
        pod that names only an identity whose machine is kept destroys it when not kept."""
        key = pod_key(pod.ref)
        identity = pod.identity or self._by_pod.get(key, "")
        vm = self._machines.get(identity)
        if vm is None:
            return
        check_namespace(vm.namespace, pod.ref.namespace, identity)
        if vm.pod is not None:
            if not same_pod(vm.pod.ref, pod.ref):
                return
            self._power_off(vm)
            del self._by_pod[pod_key(vm.pod.ref)]
            vm.pod, vm.status = None, None
            vm.wake_followers()
        if pod.keep_on_delete or vm.keep:
            vm.record("kept: powered off with its disks")
        else:
            self._destroy(vm)
        self.on_change()

    def describe(
        self, identity: str, namespace: str = ""
    ) -> virtual_machine_service_pb2.VirtualMachine:
        """What the cloud holds for `identity`; NotFound otherwise."""
        vm = self.machine(identity, namespace)
        return vm_record(vm, sorted(d.handle for d in self.disks if d.attached_to == identity))

    def destroy(self, identity: str, namespace: str = "") -> None:
        """Destroys the machine of `identity` whatever its state; unknown ones succeed."""
        vm = self._machines.get(identity)
        if vm is None:
            return
        check_namespace(vm.namespace, namespace, identity)
        if vm.pod is not None:
            self._by_pod.pop(pod_key(vm.pod.ref), None)
            vm.pod, vm.status = None, None
            vm.wake_followers()
        self._destroy(vm)
        self.on_change()

    # Transitions.

    def _make(self, pod: pod_pb2.Pod, host: Host) -> Machine:
        handles = disk_handles(pod)
        self.disks.check_attachable(handles, pod.identity)
        usage = usage_of(pod)
        host.admit(usage, what=f"pod {pod.ref.namespace}/{pod.ref.name}")
        try:
            ip = self.ips.allocate()
        except ProviderError:
            host.give_back(usage)
            raise
        vm = Machine(
            identity=pod.identity,
            uuid=str(uuid.uuid4()),
            node=host.name,
            ip=ip,
            created_at=_now(),
            pod=pod,
            usage=usage,
            namespace=pod.ref.namespace,
            keep=pod.keep_on_delete,
        )
        self.disks.attach(handles, vm.identity)
        self._machines[vm.identity] = vm
        self._by_pod[pod_key(pod.ref)] = vm.identity
        vm.record(f"created on {host.name} with address {ip}")
        self._power_on(vm)
        return vm

    def _take_over(self, vm: Machine, pod: pod_pb2.Pod, host: Host) -> None:
        """A new pod claims a machine another pod holds (a VM pod recreated elsewhere)."""
        assert vm.pod is not None
        old = vm.pod
        self.disks.check_attachable(disk_handles(pod), vm.identity)
        if vm.node != host.name:
            self._move(vm, host)
        del self._by_pod[pod_key(old.ref)]
        new_key = pod_key(pod.ref)
        if pod_key(old.ref) != new_key:
            gone = taken_over(old, vm, f"{new_key[0]}/{new_key[1]}")
            self._hub.publish(pod_key(old.ref), PodUpdate(ref=old.ref, status=gone))
        self.disks.attach_exactly(disk_handles(pod), vm.identity)
        vm.pod = pod
        self._by_pod[new_key] = vm.identity
        vm.record(f"now serving pod {new_key[0]}/{new_key[1]}")
        self._publish(vm)

    def _reaccount(self, vm: Machine, host: Host, usage: Usage, *, what: str) -> None:
        """Moves a powered machine's share to `usage` on `host` (its own or another), all or
        nothing."""
        old_host = self.hosts.get(vm.node)
        if vm.usage is not None and old_host is not None:
            old_host.give_back(vm.usage)
        try:
            host.admit(usage, what=what)
        except ProviderError:
            if vm.usage is not None and old_host is not None:
                old_host.take(vm.usage)
            raise
        vm.usage = usage
        if vm.node != host.name:
            vm.record(f"moved from {vm.node} to {host.name}")
            vm.node = host.name

    def _revive(self, vm: Machine, pod: pod_pb2.Pod, host: Host) -> None:
        """A new pod for a kept (stopped) machine: bind it, move it if asked, power it on."""
        handles = disk_handles(pod)
        self.disks.check_attachable(handles, vm.identity)
        if vm.node != host.name:
            vm.record(f"moved from {vm.node} to {host.name}")
            vm.node = host.name
        usage = usage_of(pod)
        host.admit(usage, what=f"pod {pod.ref.namespace}/{pod.ref.name}")
        vm.usage = usage
        self.disks.attach_exactly(handles, vm.identity)
        vm.pod = pod
        self._by_pod[pod_key(pod.ref)] = vm.identity
        self._power_on(vm)

    def _move(self, vm: Machine, host: Host) -> None:
        """Relocates a machine to another host, taking its share of the new host."""
        if vm.power is not Power.STOPPED and vm.usage is not None:
            self._reaccount(vm, host, vm.usage, what=f"VM {vm.identity}")
        else:
            vm.record(f"moved from {vm.node} to {host.name}")
            vm.node = host.name

    def _power_on(self, vm: Machine) -> None:
        assert vm.pod is not None
        delay = start_delay(vm.pod, self.options.start_delay_seconds)
        vm.generation += 1
        vm.exited = vm.finished_at = None
        if delay <= 0:
            self._running(vm)
            return
        vm.power = Power.POWERING_ON
        vm.record("powering on")
        self._publish(vm)
        self._schedule_power_on(vm, delay)

    def _schedule_power_on(self, vm: Machine, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._timers[vm.identity] = loop.call_later(
            delay, self._finish_power_on, vm.identity, vm.generation
        )

    def _finish_power_on(self, identity: str, generation: int) -> None:
        self._timers.pop(identity, None)
        vm = self._machines.get(identity)
        if vm is None or vm.generation != generation or vm.power is not Power.POWERING_ON:
            return
        self._running(vm)
        self.on_change()

    def _running(self, vm: Machine) -> None:
        vm.boot(_now())
        self._publish(vm)
        assert vm.pod is not None
        if (ending := exit_after(vm.pod)) is not None:
            seconds, code = ending
            self._timers[vm.identity] = asyncio.get_running_loop().call_later(
                seconds, self._guest_timer, vm.identity, vm.generation, code)

    def _guest_timer(self, identity: str, generation: int, code: int) -> None:
        if (vm := self._machines.get(identity)) is not None and vm.generation == generation:
            self._timers.pop(identity, None)
            self.guest_shutdown(identity, code)

    def _power_off(self, vm: Machine) -> None:
        if vm.power is Power.STOPPED:
            return
        timer = self._timers.pop(vm.identity, None)
        if timer is not None:
            timer.cancel()
        host = self.hosts.get(vm.node)
        if host is not None and vm.usage is not None:
            host.give_back(vm.usage)
        vm.usage = None
        vm.power = Power.STOPPED
        vm.generation += 1
        vm.record("powered off")

    def _destroy(self, vm: Machine) -> None:
        self._power_off(vm)
        self.ips.release(vm.ip)
        self.disks.detach_all(vm.identity)
        del self._machines[vm.identity]
        vm.record("destroyed")

    def _publish(self, vm: Machine) -> None:
        vm.status = status_of(vm)
        if vm.pod is not None and vm.status is not None:
            self._hub.publish(pod_key(vm.pod.ref), PodUpdate(ref=vm.pod.ref, status=vm.status))

    # Restart.

    def restore_machine(self, vm: Machine) -> None:
        """Takes back a machine `cloudstate` saved (into a cloud being restored): its address,
        its pod, its share of its host, its pending power-on."""
        if vm.pod is not None:
            self._by_pod[pod_key(vm.pod.ref)] = vm.identity
        self.ips.claim(vm.ip)
        if vm.pod is None:
            vm.power = Power.STOPPED
        elif vm.power is not Power.STOPPED:
            vm.usage = usage_of(vm.pod)
            host = self.hosts.get(vm.node)
            if host is not None:
                host.take(vm.usage)
            else:
                _log.warning(
                    "VM on a node this provider no longer serves",
                    extra={"identity": vm.identity, "node": vm.node},
                )
        self._machines[vm.identity] = vm
        if vm.power is Power.POWERING_ON:
            self._schedule_power_on(vm, self.options.start_delay_seconds)
        vm.status = status_of(vm)


async def _nothing() -> None:
    return None
