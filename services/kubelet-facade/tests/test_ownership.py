"""The one keep-on-delete rule (ownership.keeps_vm), and prove deciding by it."""

from __future__ import annotations

from typing import Any

from vmlet_facade.ownership import keeps_vm, prove

Obj = dict[str, Any]
_VM = {"metadata": {"name": "vm", "namespace": "ns", "uid": "vm-uid"}}
_REF = {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine", "name": "vm",
        "uid": "vm-uid", "controller": True}


def _pod(**meta: Any) -> Obj:
    return {"metadata": {"name": "vm", "namespace": "ns", "uid": "pod-uid", **meta}}


def test_a_vm_is_kept_unless_its_identity_is_its_pods_own() -> None:
    assert not keeps_vm("pod-uid", "pod-uid")  # a bare pod's VM goes with the pod
    assert keeps_vm("vm-uid", "pod-uid")  # a VirtualMachine's outlives its pods
    # A keep a provider recorded stands (the pod controller's orphans).
    assert keeps_vm("pod-uid", "pod-uid", recorded=True)


def test_prove_decides_keep_on_delete_by_the_rule() -> None:
    owned = prove(_pod(ownerReferences=[_REF]), _VM)
    assert owned.identity == "vm-uid" and owned.keep_on_delete
    assert owned.keep_on_delete == keeps_vm(owned.identity, "pod-uid")
    # An annotation asks for nothing: no ownerReference, a bare pod, destroyed with its pod.
    bare = prove(_pod(annotations={"vmlet.io/keep-on-delete": "true"}), _VM)
    assert bare.identity == "pod-uid" and not bare.keep_on_delete
    assert bare.keep_on_delete == keeps_vm(bare.identity, "pod-uid")
