"""The pretend hypervisor hosts: their size, what runs on them, and how they look as Nodes.

Each host admits VMs the way a kubelet admits pods: a powered-on VM takes one pod slot and its
CPU and memory requests; a VM that does not fit is refused with RESOURCE_EXHAUSTED. Powered-off
(kept) VMs take nothing.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from vmlet.provider.v1 import node_pb2, pod_pb2
from vmlet_contract import InvalidArgument, ResourceExhausted, podstatus

__all__ = ["Host", "Usage", "parse_quantity", "usage_of"]

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(text: str) -> Decimal:
    """Parses a Kubernetes quantity of the plain forms ("64", "500m", "256Gi", "1.5G")."""
    match = _QUANTITY.match(text.strip())
    if match is None or match.group(2) not in _SUFFIXES:
        raise ValueError(f"{text!r} is not a quantity")
    return Decimal(match.group(1)) * _SUFFIXES[match.group(2)]


@dataclass(frozen=True)
class Usage:
    """What one powered-on VM takes from its host."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    pods: int = 1


def usage_of(pod: pod_pb2.Pod) -> Usage:
    """The requests of a pod (a limit stands in for a missing request, as in Kubernetes)."""
    cpu = sum(
        c.resources.cpu_request_millis or c.resources.cpu_limit_millis for c in pod.containers
    )
    memory = sum(
        c.resources.memory_request_bytes or c.resources.memory_limit_bytes for c in pod.containers
    )
    return Usage(cpu_millis=cpu, memory_bytes=memory)


@dataclass
class Host:
    """One pretend hypervisor host, served as one Node."""

    name: str
    cpu: str
    memory: str
    pods: int
    booted_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    used_cpu_millis: int = 0
    used_memory_bytes: int = 0
    used_pods: int = 0

    def __post_init__(self) -> None:
        try:
            self.cpu_millis = int(parse_quantity(self.cpu) * 1000)
            self.memory_bytes = int(parse_quantity(self.memory))
        except ValueError as exc:
            raise InvalidArgument(f"host {self.name}: {exc}") from exc

    def admit(self, usage: Usage, *, what: str) -> None:
        """Takes `usage` from the host, or refuses with ResourceExhausted saying what is short."""
        short = []
        if self.used_pods + usage.pods > self.pods:
            short.append(f"pods ({self.used_pods}/{self.pods} in use)")
        if self.used_cpu_millis + usage.cpu_millis > self.cpu_millis:
            short.append(f"cpu ({self.used_cpu_millis}m of {self.cpu_millis}m requested)")
        if self.used_memory_bytes + usage.memory_bytes > self.memory_bytes:
            short.append(
                f"memory ({self.used_memory_bytes} of {self.memory_bytes} bytes requested)"
            )
        if short:
            raise ResourceExhausted(f"no room for {what} on {self.name}: " + ", ".join(short))
        self.take(usage)

    def take(self, usage: Usage) -> None:
        """Takes `usage` without checking (state loaded from disk was admitted before)."""
        self.used_pods += usage.pods
        self.used_cpu_millis += usage.cpu_millis
        self.used_memory_bytes += usage.memory_bytes

    def give_back(self, usage: Usage) -> None:
        """Returns what `admit` took."""
        self.used_pods -= usage.pods
        self.used_cpu_millis -= usage.cpu_millis
        self.used_memory_bytes -= usage.memory_bytes

    def as_node(self, *, version: str) -> node_pb2.Node:
        """The host as the Node the facade registers."""
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": str(self.pods)}
        now = podstatus.timestamp()
        return node_pb2.Node(
            name=self.name,
            labels={"node.vmlet.io/hypervisor": "memory"},
            capacity=resources,
            allocatable=resources,
            addresses=[
                node_pb2.NodeAddress(type="InternalIP", address="127.0.0.1"),
                node_pb2.NodeAddress(type="Hostname", address=self.name),
            ],
            conditions=[
                pod_pb2.Condition(
                    type="Ready",
                    status=pod_pb2.CONDITION_STATUS_TRUE,
                    reason="HostReady",
                    message="the in-memory host is up",
                    last_transition_time=podstatus.timestamp(self.booted_at),
                    last_heartbeat_time=now,
                )
            ],
            provider_id=f"memory://{self.name}",
            info=node_pb2.NodeInfo(
                operating_system="linux",
                architecture="amd64",
                kernel_version=f"vmlet-memory/{version}",
                os_image="vmlet in-memory hypervisor",
                system_uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.name}.memory.vmlet.io")),
            ),
        )
