"""Operation pods: pods on a vmlet node that ask for an operation on an existing VM instead of a
VM of their own (annotation vmlet.io/operation). The facade carries them out through the
provider's explicit RPCs and ends the pod Succeeded or Failed, as a container would, with the
result as the termination message.
"""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_api.names import BACKUP_OPERATION
from vmlet_contract import ProviderError, is_retryable
from vmlet_facade.kube.client import KubeClient
from vmlet_facade.kube.objects import Pod, VirtualMachine
from vmlet_facade.provider import VmOperations
from vmlet_facade.vmapi import (
    OPERATION_ANNOTATION,
    SNAPSHOT_NAME_ANNOTATION,
    TARGET_IDENTITY_ANNOTATION,
    path,
)

__all__ = ["carry_out", "operation_of", "refused", "run_operation"]


def operation_of(pod: Pod) -> str | None:
    """The operation ``pod`` asks for, or None for a VM pod."""
    value = (pod["metadata"].get("annotations") or {}).get(OPERATION_ANNOTATION)
    return str(value) if value else None


def _ended(container: str, exit_code: int, reason: str, message: str) -> pb.PodStatus:
    now = Timestamp()
    now.FromDatetime(dt.datetime.now(dt.UTC))
    status = pb.PodStatus(
        phase=pb.POD_PHASE_SUCCEEDED if exit_code == 0 else pb.POD_PHASE_FAILED,
        reason="" if exit_code == 0 else reason, message="" if exit_code == 0 else message)
    status.start_time.CopyFrom(now)
    cs = status.container_statuses.add(name=container, ready=False)
    cs.terminated.exit_code = exit_code
    cs.terminated.reason = reason
    cs.terminated.message = message
    cs.terminated.started_at.CopyFrom(now)
    cs.terminated.finished_at.CopyFrom(now)
    return status


def refused(pod: Pod, message: str) -> pb.PodStatus:
    """The status of an operation pod vmlet will not carry out (its target is not its own)."""
    return _ended(pod["spec"]["containers"][0]["name"], 3, "TargetNotInNamespace", message)


async def run_operation(pod: Pod, provider: VmOperations) -> pb.PodStatus:
    """Carry out ``pod``'s operation; a retryable provider error propagates (try again)."""
    annotations = pod["metadata"].get("annotations") or {}
    container = pod["spec"]["containers"][0]["name"]
    operation = operation_of(pod)
    identity = annotations.get(TARGET_IDENTITY_ANNOTATION, "")
    if operation != BACKUP_OPERATION or not identity:
        return _ended(container, 2, "UnknownOperation",
                      f"vmlet cannot carry out operation {operation!r} on {identity!r}")
    name = annotations.get(SNAPSHOT_NAME_ANNOTATION) or pod["metadata"]["name"]
    try:
        snapshot = await provider.create_snapshot(identity, name, f"vmlet backup {name}",
                                                  pod["metadata"]["namespace"])
    except ProviderError as err:
        if is_retryable(err.code):
            raise
        return _ended(container, 1, err.reason, err.message)
    return _ended(container, 0, "Completed", snapshot.id)


async def _target_in_namespace(client: KubeClient, pod: Pod) -> bool:
    """Whether the VM an operation pod aims at belongs to a VirtualMachine of its namespace."""
    target = (pod["metadata"].get("annotations") or {}).get(TARGET_IDENTITY_ANNOTATION, "")
    listing = await client.get(path("virtualmachines", pod["metadata"]["namespace"]))
    vms: list[VirtualMachine] = listing.get("items") or []
    return bool(target) and any(vm["metadata"].get("uid") == target for vm in vms)


async def carry_out(client: KubeClient, pod: Pod, provider: VmOperations) -> pb.PodStatus:
    """``run_operation`` when the VM ``pod`` aims at is a VirtualMachine's of its namespace
    (read through ``client``), else ``refused``."""
    if await _target_in_namespace(client, pod):
        return await run_operation(pod, provider)
    return refused(pod, "the operation's target is not a VirtualMachine of namespace "
                   f"{pod['metadata']['namespace']}")
