"""The baseline: the least a kubelet must do to make bound pods Running, with no provider behind it.

It registers bare Nodes that look like the facade's (same labels, taint, capacity, Ready through
the status subresource), renews their Leases as the facade does, watches the pods bound to each
node (one list-then-watch per node, the facade's client and watch code) and, the moment it sees a
pod that is not Running, merge-patches its status to Running with the shape the facade writes
(phase, conditions, podIP(s), hostIP(s), containerStatuses, startTime), ``--workers`` patches in
flight. What it reaches is the apiserver-bound limit the facade is compared to.

Run by run.py as its own process, as the facade is:

    python baseline_kubelet.py --kubeconfig K --nodes bench-baseline-0,bench-baseline-1 \
        --pods-per-node 300 --ready-file F
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from vmlet_facade.kube import ApiError, KubeClient, KubeConfig, list_and_watch

Obj = dict[str, Any]
TAINT = {"key": "virtual-kubelet.io/provider", "value": "memory", "effect": "NoSchedule"}
HOST_IP = "127.0.0.1"
log = logging.getLogger("baseline-kubelet")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_manifest(name: str) -> Obj:
    """The Node as the facade registers one of the memory provider's hosts."""
    return {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": name,
        "labels": {"type": "virtual-kubelet", "kubernetes.io/role": "agent",
                   "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                   "kubernetes.io/arch": "amd64", "vmlet.io/provider": "memory",
                   "node.vmlet.io/hypervisor": "memory"},
        "annotations": {"vmlet.io/provider-address": "baseline"}},
        "spec": {"taints": [TAINT], "unschedulable": False, "providerID": f"memory://{name}"}}


def node_status(pods: int) -> Obj:
    now = _now()
    resources = {"cpu": "64", "memory": "256Gi", "pods": str(pods)}
    conditions = [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                   "message": "baseline", "lastHeartbeatTime": now, "lastTransitionTime": now}]
    conditions += [{"type": t, "status": "False", "reason": f"KubeletHasNo{t}", "message": "",
                    "lastHeartbeatTime": now, "lastTransitionTime": now}
                   for t in ("MemoryPressure", "DiskPressure", "PIDPressure")]
    return {"status": {
        "capacity": resources, "allocatable": resources,
        "addresses": [{"type": "InternalIP", "address": HOST_IP}],
        "conditions": conditions,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
                     "osImage": "baseline", "containerRuntimeVersion": "vmlet://baseline",
                     "kubeletVersion": "v1.34.4-vmlet", "kubeProxyVersion": "",
                     "operatingSystem": "linux", "architecture": "amd64"}}}


def running_status(pod: Obj, ip: str) -> Obj:
    """A Running status of the shape the facade's status_to_k8s writes."""
    now = _now()
    conditions = [{"type": t, "status": "True", "lastTransitionTime": now, "lastProbeTime": None}
                  for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
    containers = [{"name": c["name"], "image": c.get("image", ""), "imageID": c.get("image", ""),
                   "containerID": f"memory://{pod['metadata']['uid']}", "ready": True,
                   "restartCount": 0, "started": True, "state": {"running": {"startedAt": now}}}
                  for c in pod["spec"]["containers"]]
    return {"status": {
        "phase": "Running", "conditions": conditions, "containerStatuses": containers,
        "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}], "podIP": ip, "podIPs": [{"ip": ip}],
        "reason": None, "message": None, "startTime": now}}


class BaselineKubelet:
    def __init__(self, client: KubeClient, nodes: list[str], pods_per_node: int,
                 workers: int) -> None:
        self.client = client
        self.nodes = nodes
        self.pods_per_node = pods_per_node
        self.sem = asyncio.Semaphore(workers)
        self.patched: set[str] = set()
        self.uids: dict[str, str] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._ips = (str(ipaddress.IPv4Address("10.89.0.0") + i) for i in range(1, 1 << 16))

    async def register(self) -> None:
        for name in self.nodes:
            try:
                node = await self.client.create("/api/v1/nodes", node_manifest(name))
            except ApiError as err:
                if not err.conflict:
                    raise
                node = await self.client.get(f"/api/v1/nodes/{name}")
            self.uids[name] = node["metadata"]["uid"]
            await self.client.patch(f"/api/v1/nodes/{name}/status", node_status(self.pods_per_node))

    async def heartbeat(self) -> None:
        """Leases every 10 s and node status every 60 s, as the facade's defaults."""
        tick = 0
        while True:
            for name in self.nodes:
                path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
                spec = {"holderIdentity": name, "renewTime": _micro_now()}
                try:
                    await self.client.patch(path, {"spec": spec})
                except ApiError as err:
                    if not err.not_found:
                        raise
                    await self.client.create(path.rsplit("/", 1)[0], {
                        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": name, "namespace": "kube-node-lease",
                                     "ownerReferences": [{"apiVersion": "v1", "kind": "Node",
                                                          "name": name,
                                                          "uid": self.uids[name]}]},
                        "spec": {**spec, "leaseDurationSeconds": 40}})
                if tick % 6 == 5:
                    await self.client.patch(f"/api/v1/nodes/{name}/status",
                                            node_status(self.pods_per_node))
            tick += 1
            await asyncio.sleep(10)

    async def watch(self, node: str, listening: asyncio.Event) -> None:
        async for event in list_and_watch(self.client, "/api/v1/pods",
                                          {"fieldSelector": f"spec.nodeName={node}"}):
            if event.type == "SYNCED":
                listening.set()
                continue
            pod = event.object
            uid = pod["metadata"]["uid"]
            if (event.type == "DELETED" or uid in self.patched
                    or pod["metadata"].get("deletionTimestamp")
                    or (pod.get("status") or {}).get("phase") == "Running"):
                continue
            self.patched.add(uid)
            task = asyncio.create_task(self.patch(pod))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def patch(self, pod: Obj) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        body = running_status(pod, next(self._ips))
        for attempt in range(10):
            async with self.sem:
                try:
                    await self.client.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status", body)
                    return
                except ApiError as err:
                    if err.not_found:
                        return
                    log.warning("status of %s/%s not written: %s", ns, name, err)
            await asyncio.sleep(0.5 * (attempt + 1))


async def amain(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = KubeClient(KubeConfig.from_file(args.kubeconfig))
    kubelet = BaselineKubelet(client, args.nodes.split(","), args.pods_per_node, args.workers)
    await kubelet.register()
    listening = [asyncio.Event() for _ in kubelet.nodes]
    tasks: list[asyncio.Task[Any]] = [
        asyncio.create_task(kubelet.watch(n, e))
        for n, e in zip(kubelet.nodes, listening, strict=True)]
    tasks.append(asyncio.create_task(kubelet.heartbeat()))
    await asyncio.gather(*(e.wait() for e in listening))
    args.ready_file.write_text("ready\n")
    stopper: asyncio.Task[Any] = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    for task in [*tasks, *kubelet.tasks]:
        task.cancel()
    await asyncio.gather(*tasks, *kubelet.tasks, return_exceptions=True)
    await client.close()
    for task in done:
        if task is not stopper and not task.cancelled() and (error := task.exception()):
            raise error


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--nodes", required=True, help="comma-separated node names")
    p.add_argument("--pods-per-node", type=int, default=300)
    p.add_argument("--workers", type=int, default=32, help="status patches in flight")
    p.add_argument("--ready-file", type=Path, required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(amain(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
