"""The provider kit: the gRPC servicers of the whole contract, over one small backend per service.

A provider writes its IaaS-specific code as backends, plain async methods on typed messages
(`PodLifecycleBackend`, `PodNotifierBackend`, `NodeProviderBackend`, `KubeletEndpointBackend`,
`VirtualMachineBackend`, `DiskBackend`), and serves them with
`ProviderServicers.from_backends(...)`. The kit's servicers do what every provider would repeat:
read requests (logs options, the first message of each stream, the container named), check a
VM's namespace before its snapshots are touched, relay notification mailboxes until the backend
closes its `Hub` at shutdown, close streams when the caller goes away, and answer. The bounds of
every request are checked before (`requestbounds`, in the interceptor), and errors raised as
`vmlet_contract` errors are mapped to status codes after.

Modules: `lifecycle`, `notifier`, `nodes`, `endpoints`, `vms`, `disks` (one per service, each
holding its backend Protocol and servicer), `streams` (mailbox relay).
"""

from .disks import DiskBackend, DiskServicer
from .endpoints import (
    KubeletEndpointBackend,
    KubeletEndpointServicer,
    LogSource,
    attach_start,
    container_of,
    unsupported,
)
from .lifecycle import PodLifecycleBackend, PodLifecycleServicer
from .nodes import NodeProviderBackend, NodeProviderServicer
from .notifier import PodNotifierBackend, PodNotifierServicer
from .streams import relay
from .vms import VirtualMachineBackend, VirtualMachineServicer

__all__ = [
    "DiskBackend",
    "DiskServicer",
    "KubeletEndpointBackend",
    "KubeletEndpointServicer",
    "LogSource",
    "NodeProviderBackend",
    "NodeProviderServicer",
    "PodLifecycleBackend",
    "PodLifecycleServicer",
    "PodNotifierBackend",
    "PodNotifierServicer",
    "VirtualMachineBackend",
    "VirtualMachineServicer",
    "attach_start",
    "container_of",
    "relay",
    "unsupported",
]
