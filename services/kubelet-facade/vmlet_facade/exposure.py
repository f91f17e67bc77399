"""VirtualMachines behind Services: a VM that asks to be exposed (spec.expose.ports) gets a
selector-less Service and an EndpointSlice with its IPs, ready when the VM is Ready, emptied when
it stops. (Ordinary selector Services over VM pods work without this: VM pods carry podIPs.)
"""

from __future__ import annotations

import logging

from vmlet_api import names
from vmlet_facade.kube import ApiError, KubeClient
from vmlet_facade.kube.informer import synced_gate
from vmlet_facade.kube.objects import ExposedPort, VirtualMachine
from vmlet_facade.kube.paths import api_path
from vmlet_facade.queueing import SerialWorkers
from vmlet_facade.virtualmachines import VirtualMachineController
from vmlet_facade.vmapi import VM_LABEL, object_key, owner_ref

__all__ = ["ExposureController"]

log = logging.getLogger(__name__)

def _slice_name(vm: VirtualMachine) -> str:
    return f"{vm['metadata']['name']}-vmlet"


class ExposureController:
    """Keeps the Service and EndpointSlice of each exposed VirtualMachine."""

    def __init__(self, client: KubeClient, vms: VirtualMachineController) -> None:
        self._client = client
        self._vms = vms
        self._workers = SerialWorkers(self._sync, ready=synced_gate(vms.vms, vms.pods),
                                      concurrency=8, name="exposure")
        self._exposed: set[str] = set()
        vms.listeners.append(lambda vm: self._workers.submit(object_key(vm)))

    async def stop(self) -> None:
        await self._workers.stop()

    async def _sync(self, key: str) -> None:
        vm = self._vms.vm(key)
        ports: list[ExposedPort] = []
        if vm is not None:
            ports = (vm.get("spec", {}).get("expose") or {}).get("ports") or []
        if vm is None or not ports or vm["metadata"].get("deletionTimestamp"):
            if key in self._exposed and vm is not None:
                await self._remove(vm)
            self._exposed.discard(key)
            return
        try:
            await self._apply(vm, ports)
            self._exposed.add(key)
        except ApiError as err:
            delay = self._workers.retry(key)
            log.warning("exposing %s: %s (again in %.0f s)", key, err, delay)

    async def _apply(self, vm: VirtualMachine, ports: list[ExposedPort]) -> None:
        meta = vm["metadata"]
        ns, name = meta["namespace"], meta["name"]
        owner = [owner_ref(vm, names.VIRTUAL_MACHINE.kind)]
        svc_ports = [{"name": p.get("name") or f"p{p['port']}", "port": p["port"],
                      "targetPort": p.get("targetPort", p["port"]),
                      "protocol": p.get("protocol", "TCP")} for p in ports]
        await self._client.apply(api_path("services", name, namespace=ns), {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": {VM_LABEL: name},
                         "ownerReferences": owner},
            "spec": {"ports": svc_ports},
        })
        status = vm.get("status") or {}
        ready = status.get("state") == names.STATE_RUNNING
        endpoints = [{"addresses": [ip], "conditions": {"ready": ready, "serving": ready,
                                                        "terminating": False},
                      **({"nodeName": status["nodeName"]} if status.get("nodeName") else {})}
                     for ip in status.get("addresses") or [] if ":" not in ip]
        slice_name = _slice_name(vm)
        await self._client.apply(
            api_path("endpointslices", slice_name, namespace=ns, group="discovery.k8s.io"), {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": slice_name, "namespace": ns, "ownerReferences": owner,
                             "labels": {"kubernetes.io/service-name": name,
                                        "endpointslice.kubernetes.io/managed-by": names.MANAGED_BY,
                                        VM_LABEL: name}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": p["name"], "port": p["targetPort"],
                           "protocol": p["protocol"]} for p in svc_ports],
            })

    async def _remove(self, vm: VirtualMachine) -> None:
        ns, name = vm["metadata"]["namespace"], vm["metadata"]["name"]
        for path in (api_path("endpointslices", _slice_name(vm), namespace=ns,
                              group="discovery.k8s.io"),
                     api_path("services", name, namespace=ns)):
            try:
                await self._client.delete(path)
            except ApiError as err:
                if not err.not_found:
                    raise
