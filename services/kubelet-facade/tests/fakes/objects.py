"""Builders of the Kubernetes objects the controller tests seed: a VirtualMachine and its pod."""

from __future__ import annotations

from typing import Any

from vmlet_facade.vmapi import FINALIZER, vm_pod

__all__ = ["running_vm_pod", "vm_object"]

Obj = dict[str, Any]


def vm_object(name: str = "db", replicas: int = 1, **spec: Any) -> Obj:
    """VirtualMachine ``ns/name`` (uid "vm-uid", provider "fake", 1 CPU, 1Gi), finalizer set;
    ``spec`` adds or replaces spec fields."""
    return {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": "ns", "uid": "vm-uid",
                         "finalizers": [FINALIZER]},
            "spec": {"provider": "fake", "image": "debian-12", "cpu": 1, "memory": "1Gi",
                     "replicas": replicas, **spec}}


def running_vm_pod(vm: Obj, node: str = "node-1", ip: str = "10.0.0.5") -> Obj:
    """The VM pod of ``vm`` (uid "pod-uid") bound to ``node``, Running and Ready at ``ip``."""
    pod = vm_pod(vm)
    pod["metadata"]["uid"] = "pod-uid"
    pod["spec"]["nodeName"] = node
    pod["status"] = {"phase": "Running", "podIPs": [{"ip": ip}],
                     "conditions": [{"type": "Ready", "status": "True"}],
                     "containerStatuses": [{"name": "vm", "ready": True,
                                            "containerID": "fake://vm-1",
                                            "state": {"running": {}}}]}
    return pod
