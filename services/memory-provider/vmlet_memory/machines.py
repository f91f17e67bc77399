"""The record of one pretend VM: its identity, pod, host, address, power state, log and snapshots.

There is no guest to run a pod's first-boot commands (`vmlet_contract.userdata`): at its first
boot a machine logs one line per command a cloud-init guest would run, `first-boot: <container>:
<argv>`, without running it, and without the env (values from Secrets stay out of the log).

A machine outlives its pod when the pod was deleted with keep_on_delete: it is then Stopped, has
no pod, keeps its address, disks and snapshots, and powers on again for the next pod of the same
identity.
"""

from __future__ import annotations

import asyncio
import enum
import shlex
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from vmlet.provider.v1 import pod_pb2, virtual_machine_service_pb2
from vmlet_contract.userdata import first_boot_commands

from .hosts import Usage

__all__ = ["LogLine", "Machine", "PodKey", "Power", "filled_in", "pod_key", "same_pod"]

PodKey = tuple[str, str]

_LOG_LINES_KEPT = 1000


def pod_key(ref: pod_pb2.PodRef) -> PodKey:
    """The (namespace, name) a pod is looked up by."""
    return (ref.namespace, ref.name)


def same_pod(a: pod_pb2.PodRef, b: pod_pb2.PodRef) -> bool:
    """Whether `a` and `b` are one pod: one namespace and name, and one UID where both have one."""
    return (a.namespace, a.name) == (b.namespace, b.name) and (
        not a.uid or not b.uid or a.uid == b.uid
    )


def filled_in(pod: pod_pb2.Pod, *, identity: str, node_name: str) -> pod_pb2.Pod:
    """A copy of `pod` with `identity` and `node_name` where it has none."""
    copy = pod_pb2.Pod()
    copy.CopyFrom(pod)
    copy.identity = copy.identity or identity
    copy.node_name = copy.node_name or node_name
    return copy


class Power(enum.StrEnum):
    """The power state of a machine."""

    POWERING_ON = "PoweringOn"
    RUNNING = "Running"
    STOPPED = "Stopped"


@dataclass(frozen=True)
class LogLine:
    """One line of a machine's event log; `seq` grows by one per line."""

    seq: int
    time: datetime
    text: str


@dataclass
class Machine:
    """One pretend VM."""

    identity: str
    uuid: str
    node: str
    ip: str
    created_at: datetime
    # Recorded at creation: the namespace the VM belongs to (never served to another), and
    # whether a VirtualMachine owns it (its pod's delete keeps it; only destroy removes it).
    namespace: str = ""
    keep: bool = False
    pod: pod_pb2.Pod | None = None
    power: Power = Power.STOPPED
    started_at: datetime | None = None
    usage: Usage | None = None
    status: pod_pb2.PodStatus | None = None
    snapshots: dict[str, virtual_machine_service_pb2.Snapshot] = field(default_factory=dict)
    log: deque[LogLine] = field(default_factory=lambda: deque(maxlen=_LOG_LINES_KEPT))
    log_seq: int = 0
    # Bumped on every power transition so a stale power-on timer knows to do nothing.
    generation: int = 0
    # Set when the guest shut itself down (its shell's `poweroff`, the exit-after knob): its
    # exit code and when; cleared at the next power-on.
    exited: int | None = None
    finished_at: datetime | None = None
    restarting: bool = False  # powering on again for a pod that ran (StartPod): Running meanwhile
    _log_changed: asyncio.Event | None = None

    @property
    def key(self) -> PodKey | None:
        """The (namespace, name) of the pod the machine serves, None when it has none."""
        return pod_key(self.pod.ref) if self.pod is not None else None

    @property
    def provider_id(self) -> str:
        """The machine's identifier, as an IaaS would report it."""
        return self.uuid

    @property
    def container_id(self) -> str:
        """The container ID of the pod's one container."""
        return f"memory://{self.uuid}"

    @property
    def size(self) -> tuple[int, int]:
        """(cpu millis, memory bytes) this pretend IaaS gives the machine: its pod's limits,
        requests where a limit is unset; (0, 0) without a pod."""
        sized = [c.resources for c in self.pod.containers] if self.pod is not None else []
        return (sum(r.cpu_limit_millis or r.cpu_request_millis for r in sized),
                sum(r.memory_limit_bytes or r.memory_request_bytes for r in sized))

    def boot(self, when: datetime) -> None:
        """Marks the machine running since `when`; its first boot logs its first-boot commands."""
        first = self.started_at is None
        self.power, self.restarting = Power.RUNNING, False
        self.started_at = when
        self.record("powered on", when)
        if first and self.pod is not None:
            for command in first_boot_commands(self.pod):
                self.record(f"first-boot: {command.container}: {shlex.join(command.argv)}", when)

    def record(self, text: str, when: datetime | None = None) -> None:
        """Appends a line to the event log and wakes followers."""
        self.log_seq += 1
        self.log.append(LogLine(self.log_seq, when or datetime.now(UTC), text))
        self.wake_followers()

    def wake_followers(self) -> None:
        """Wakes every follower of the log (a new line, or the pod went away)."""
        if self._log_changed is not None:
            self._log_changed.set()
            self._log_changed = None

    def log_changed(self) -> asyncio.Event:
        """An event set at the next line (or when followers must look again)."""
        if self._log_changed is None:
            self._log_changed = asyncio.Event()
        return self._log_changed
