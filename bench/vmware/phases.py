"""The two timed phases of bench/vmware: raw (pyvmomi threads clone, reconfigure and power on)
and vmlet (bare VM pods through the apiserver, to the last pod Running), and their cleanup."""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim
from vcenter import (
    IDENTITY_KEY,
    TEMPLATE,
    EndState,
    destroy_collectors,
    end_state,
    inventory,
    session,
    wait_task,
)

from vmlet_facade.kube import ApiError, KubeClient, KubeConfig, list_and_watch
from vmlet_localenv.stack import Stack, eventually
from vmlet_localenv.vcsim import VcSim

PROVIDER = "vsphere"


@dataclass
class Result:
    """One phase's figures."""

    kind: str
    vms: int
    seconds: float  # raw: last power-on done; vmlet: last pod Running
    end: EndState  # what the phase left in vCenter, read afterwards
    bound_seconds: float = 0.0
    load: float = 0.0
    cpu: dict[str, float] | None = None  # CPU-seconds per process during the phase
    status_writes: float = 0.0  # pod status patches by the facade (vmlet)
    create_mean_seconds: float = 0.0  # mean CreatePod latency at the facade (vmlet)
    per_vm_seconds: float = 0.0  # mean clone + reconfigure + power-on time of one VM (raw)
    requests: dict[str, float] | None = None  # apiserver requests during the phase (vmlet)


def raw_phase(sim: VcSim, count: int, concurrency: int, prefix: str) -> Result:
    """Clone + power on ``count`` VMs with pyvmomi alone."""
    with session(sim) as si:
        dc, _, _, _ = inventory(si)
        folder_ref = dc.vmFolder.CreateFolder(prefix)._moId
    local = threading.local()
    sessions: list[Any] = []
    collectors: list[Any] = []
    lock = threading.Lock()

    def setup() -> None:
        si = SmartConnect(host="127.0.0.1", port=sim.port, user=sim.username,
                          pwd=sim.password, sslContext=sim.ssl_context())
        _, template, hosts, pool = inventory(si)
        collector = si.content.propertyCollector.CreatePropertyCollector()
        local.objs = (collector, template, hosts, pool, vim.Folder(folder_ref, si._stub))
        with lock:
            sessions.append(si)
            collectors.append(collector)

    latencies: list[float] = []
    identities = [str(uuid.uuid4()) for _ in range(count)]

    def one(index: int) -> float:
        if not hasattr(local, "objs"):
            setup()
        began = time.monotonic()
        collector, template, hosts, pool, folder = local.objs
        config = vim.vm.ConfigSpec(extraConfig=[
            vim.option.OptionValue(key=IDENTITY_KEY, value=identities[index])])
        spec = vim.vm.CloneSpec(
            location=vim.vm.RelocateSpec(host=hosts[index % len(hosts)], pool=pool),
            config=config, powerOn=False, template=False)
        vm = wait_task(collector, template.CloneVM_Task(
            folder=folder, name=f"{prefix}-{index:04d}", spec=spec))
        # vcsim's CloneVM_Task drops spec.config (it copies it into a copy of the new VM's
        # config), so the clone has no identity: written here, unconditionally (no read), as
        # the provider writes it after reading the clone. A real vCenter would need neither.
        wait_task(collector, vm.ReconfigVM_Task(spec=config))
        wait_task(collector, vm.PowerOnVM_Task())
        latencies.append(time.monotonic() - began)
        return time.monotonic()

    # Sessions are opened before the clock starts, as the provider's is.
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: setup() if not hasattr(local, "objs") else None,
                      range(concurrency)))
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        done = list(pool.map(one, range(count)))
    destroy_collectors(collectors)
    for si in sessions:
        Disconnect(si)
    return Result("raw", count, max(done) - t0, end_state(sim, f"{prefix}-", set(identities)),
                  load=load,
                  per_vm_seconds=statistics.mean(latencies))


def vm_pod(namespace: str, index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"vm-{index:04d}", "namespace": namespace},
        "spec": {
            "containers": [{"name": "vm", "image": TEMPLATE}],
            "nodeSelector": {"vmlet.io/provider": PROVIDER},
            "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Equal",
                             "value": PROVIDER, "effect": "NoSchedule"}],
            "automountServiceAccountToken": False, "enableServiceLinks": False,
        },
    }


async def _create(client: KubeClient, namespace: str, count: int, concurrency: int) -> None:
    indexes = iter(range(count))

    async def worker() -> None:
        for index in indexes:
            for attempt in range(20):
                try:
                    await client.create(f"/api/v1/namespaces/{namespace}/pods",
                                        vm_pod(namespace, index))
                    break
                except ApiError as err:
                    if err.conflict:
                        break
                    if err.status not in (429, 500, 503, 504) or attempt == 19:
                        raise
                    await asyncio.sleep(0.1 * (attempt + 1))

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _vmlet(kubeconfig: Path, namespace: str, count: int, concurrency: int,
                 limit_seconds: float, sim: VcSim) -> Result:
    config = KubeConfig.from_file(kubeconfig)
    client, watcher = KubeClient(config), KubeClient(config)
    bound: dict[str, float] = {}
    running: dict[str, float] = {}
    uids: dict[str, str] = {}  # pod name -> UID, the identity of its VM (a bare pod)
    listening, done = asyncio.Event(), asyncio.Event()

    async def watch() -> None:
        async for event in list_and_watch(watcher, f"/api/v1/namespaces/{namespace}/pods"):
            if event.type == "SYNCED":
                listening.set()
                continue
            pod, now = event.object, time.monotonic()
            uids[pod["metadata"]["name"]] = pod["metadata"]["uid"]
            if pod.get("spec", {}).get("nodeName"):
                bound.setdefault(pod["metadata"]["name"], now)
            if (pod.get("status") or {}).get("phase") == "Running":
                running.setdefault(pod["metadata"]["name"], now)
                if len(running) >= count:
                    done.set()

    try:
        await client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                   "metadata": {"name": namespace}})
        for _ in range(100):  # the ServiceAccount admission wants the namespace's default SA
            try:
                await client.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/default")
                break
            except ApiError:
                await asyncio.sleep(0.1)
        watching = asyncio.create_task(watch())
        await asyncio.wait_for(listening.wait(), 30)
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        await _create(client, namespace, count, concurrency)
        await asyncio.wait_for(done.wait(), limit_seconds)
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        end = await asyncio.to_thread(end_state, sim, f"{namespace}-", set(uids.values()))
        return Result("vmlet", count, max(running.values()) - t0, end,
                      bound_seconds=max(bound.values()) - t0, load=load)
    finally:
        await client.close()
        await watcher.close()


def vmlet_phase(stack: Stack, sim: VcSim, count: int, concurrency: int, namespace: str,
                timeout: float) -> Result:
    return asyncio.run(_vmlet(stack.cp.kubeconfig, namespace, count, concurrency, timeout, sim))


def vmlet_cleanup(stack: Stack, sim: VcSim, namespace: str) -> None:
    """Deletes the namespace (the facade has the provider destroy each VM) and waits."""
    stack.cp.kubectl("delete", "namespace", namespace, "--wait=false")

    def gone() -> bool:
        with session(sim) as si:
            content = si.RetrieveContent()
            view = content.viewManager.CreateContainerView(
                content.rootFolder, [vim.VirtualMachine], True)
            left = [vm for vm in view.view if vm.name.startswith(f"{namespace}-")]
            view.Destroy()
            return not left

    eventually(gone, timeout=300, interval=1, what=f"the VMs of {namespace} destroyed")

