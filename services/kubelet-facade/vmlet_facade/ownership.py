"""Whose VM a pod runs: its identity, and whether deleting the pod keeps the VM, decided here only.

Nothing a tenant writes chooses an identity (labels and annotations are theirs to write, and an
ownerReference may name any UID). A pod runs the VM of a VirtualMachine only when all of this
holds, read from the apiserver and not from the pod alone:

- its controller ownerReference is a ``vmlet.io`` VirtualMachine (name, uid);
- that VirtualMachine exists in the pod's own namespace with that very UID;
- the pod carries the name the VirtualMachine controller gives the one pod it makes for that
  VirtualMachine (``vm_pod_name``): names are unique in a namespace, so no second pod can claim
  the same VM.

Then the identity is the VirtualMachine's UID (its one carrier: no annotation or status repeats
it, and the ``vmlet.io/vm-uid`` label only selects) and deleting the pod keeps the VM (a stop). Any
other pod is a bare pod: its own UID is its identity, and deleting it destroys its VM. Providers
record the identity with the namespace in the IaaS and refuse to serve it to another namespace.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from vmlet_api.names import GROUP, VIRTUAL_MACHINE
from vmlet_facade.kube.objects import KubeObject, OwnerReference, Pod, VirtualMachine

__all__ = ["Ownership", "claimed_vm", "derive", "keeps_vm", "prove", "vm_pod_name"]

_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")

#: Looks up a VirtualMachine by namespace and name: None when there is none.
VmLookup = Callable[[str, str], Awaitable[VirtualMachine | None]]


@dataclass(frozen=True)
class Ownership:
    """The identity a pod's VM has, and what deleting the pod does to that VM."""

    identity: str
    keep_on_delete: bool
    owner: str = ""  # the owning VirtualMachine's name; "" for a bare pod

    @property
    def bare(self) -> bool:
        return not self.owner


def keeps_vm(identity: str, pod_uid: str, *, recorded: bool = False) -> bool:
    """Whether deleting the pod of UID ``pod_uid``, whose VM has ``identity``, keeps that VM: the
    one keep-on-delete rule. A bare pod's VM has the pod's own UID as identity and goes with the
    pod; any other identity is a VirtualMachine's, whose VM outlives its pods (a stop).
    ``recorded`` is a keep a provider recorded for the pod: once decided, it stands."""
    return recorded or identity != pod_uid


def vm_pod_name(vm: KubeObject) -> str:
    """The name of the one pod that runs ``vm``: its own name (a second create is AlreadyExists)."""
    return str(vm["metadata"]["name"])


def claimed_vm(pod: Pod) -> OwnerReference | None:
    """The controller ownerReference of ``pod`` when it names a vmlet.io VirtualMachine."""
    for ref in pod["metadata"].get("ownerReferences") or []:
        group = str(ref.get("apiVersion", "")).split("/")[0]
        if ref.get("controller") and group == GROUP and ref.get("kind") == VIRTUAL_MACHINE.kind:
            return ref.copy()
    return None


def prove(pod: Pod, vm: VirtualMachine | None) -> Ownership:
    """The ownership of ``pod`` given the VirtualMachine its ownerReference names, as read from
    the apiserver in the pod's namespace (None when there is none)."""
    meta = pod["metadata"]
    uid = str(meta["uid"])
    bare = Ownership(identity=uid, keep_on_delete=keeps_vm(uid, uid))
    ref = claimed_vm(pod)
    if ref is None or vm is None:
        return bare
    vmeta = vm["metadata"]
    if (vmeta.get("uid") != ref.get("uid") or vmeta.get("name") != ref.get("name")
            or vmeta.get("namespace") != meta.get("namespace")
            or meta.get("name") != vm_pod_name(vm)):
        return bare
    identity = str(vmeta["uid"])
    return Ownership(identity=identity, keep_on_delete=keeps_vm(identity, uid),
                     owner=str(vmeta["name"]))


async def derive(pod: Pod, lookup: VmLookup) -> Ownership:
    """The ownership of ``pod``: ``lookup`` reads the VirtualMachine it claims, in its namespace.

    Errors of ``lookup`` other than "there is none" propagate (try again later): an unproven
    claim would make a VM pod a bare pod.
    """
    ref = claimed_vm(pod)
    if ref is None or not _NAME.fullmatch(str(ref.get("name", ""))):
        return prove(pod, None)
    return prove(pod, await lookup(str(pod["metadata"]["namespace"]), str(ref["name"])))
