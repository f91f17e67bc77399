"""What keeping watched pods costs the facade: ``list_and_watch``'s slimming of each decoded
version of a pod (managedFields dropped, strings interned), with and without taking over the
parts equal to the pod's last version. A benchmark run on demand, not a test: it prints figures.

    ~/.cache/vmlet/venv-py3.11/bin/python bench/watchcache/run.py [--pods 3000 --rounds 6]

Each pod goes through the versions a facade's per-node watch sees for a VM pod: bound by the
scheduler (ADDED), the facade's Pending status (MODIFIED), Running (MODIFIED). Each version is
decoded afresh by ``json.loads`` (untimed, as the watch stream decodes it); the timed part is the
slimming, in CPU-seconds (``time.process_time``). The retained size is what the last versions
of all pods hold, as the caches keep them (tracemalloc, in an untimed pass of its own). The two
ways alternate in order round by round; the figures are medians, with the ratio new/old.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from vmlet_facade.kube import watching
from vmlet_facade.vmapi import vm_pod

Obj = dict[str, Any]
NOW = "2026-12-07T18:00:00Z"


def _vm(i: int) -> Obj:
    return {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": f"vm-{i}", "namespace": "bench", "uid": f"vm-uid-{i:08d}",
                         "labels": {"app": "bench", "tier": "web"}},
            "spec": {"provider": "memory", "image": "debian-12", "cpu": 2, "memory": "4Gi",
                     "replicas": 1, "networks": [{"name": "vm-net"}],
                     "disks": [{"name": "root", "claimName": f"vm-{i}-root"}]}}


def _versions(i: int) -> list[bytes]:
    """The pod's versions as the apiserver sends them (with what it fills in)."""
    pod = vm_pod(_vm(i))
    meta = pod["metadata"]
    meta.update({"uid": f"pod-uid-{i:08d}", "resourceVersion": str(1000 + i),
                 "creationTimestamp": NOW, "generation": 1})
    meta["managedFields"] = [
        {"manager": m, "operation": op, "apiVersion": "v1", "time": NOW, "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}, "f:tier": {}}},
                      "f:spec": {"f:containers": {'k:{"name":"vm"}': {"f:image": {}}}}},
         **({"subresource": "status"} if op == "Update" else {})}
        for m, op in (("vmlet-facade", "Apply"), ("kube-scheduler", "Update"),
                      ("vmlet-facade", "Update"))]
    spec = pod["spec"]
    spec.update({"nodeName": f"node-{i % 100}", "schedulerName": "default-scheduler",
                 "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
                 "terminationGracePeriodSeconds": 30, "serviceAccountName": "default",
                 "serviceAccount": "default", "securityContext": {}, "priority": 0,
                 "enableServiceLinks": False, "preemptionPolicy": "PreemptLowerPriority"})
    for c in spec["containers"]:
        c.update({"terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "Always",
                  "terminationMessagePolicy": "File"})
    scheduled = {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                 "lastTransitionTime": NOW}
    bound = {**pod, "status": {"phase": "Pending", "qosClass": "Guaranteed",
                               "conditions": [scheduled]}}
    creating = {**bound, "status": {
        **bound["status"], "hostIP": "10.0.0.1", "startTime": NOW,
        "conditions": [scheduled, *({"type": t, "status": "False", "lastProbeTime": None,
                                     "lastTransitionTime": NOW, "reason": "ContainersNotReady"}
                                    for t in ("Initialized", "ContainersReady", "Ready"))],
        "containerStatuses": [{"name": "vm", "image": "debian-12", "imageID": "", "ready": False,
                               "restartCount": 0, "started": False,
                               "state": {"waiting": {"reason": "ContainerCreating"}}}]}}
    running = {**creating, "status": {
        **creating["status"], "phase": "Running", "podIP": f"10.1.{i // 250}.{i % 250}",
        "podIPs": [{"ip": f"10.1.{i // 250}.{i % 250}"}],
        "conditions": [scheduled, *({"type": t, "status": "True", "lastProbeTime": None,
                                     "lastTransitionTime": NOW}
                                    for t in ("Initialized", "ContainersReady", "Ready"))],
        "containerStatuses": [{"name": "vm", "image": "debian-12", "imageID": "debian-12",
                               "containerID": f"memory://pod-uid-{i:08d}", "ready": True,
                               "restartCount": 0, "started": True,
                               "state": {"running": {"startedAt": NOW}}}]}}
    out = []
    for n, version in enumerate((bound, creating, running)):
        version = json.loads(json.dumps(version))
        version["metadata"]["resourceVersion"] = str(1000 + i + 100_000 * n)
        out.append(json.dumps(version).encode())
    return out


Slim = Callable[[Obj, Obj | None], Obj]


def _old(obj: Obj, prev: Obj | None) -> Obj:
    return watching._slim(obj)


def _new(obj: Obj, prev: Obj | None) -> Obj:
    return watching._slim(obj, prev)


def one(streams: list[list[bytes]], slim: Slim, *, traced: bool) -> tuple[float, int]:
    """CPU-seconds of slimming every version, and (``traced``: then the time is not the
    figure, tracemalloc slows every allocation) the bytes the last versions hold."""
    if traced:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0] if traced else 0
    kept: dict[int, Obj] = {}
    spent = 0.0
    for n in range(3):
        for i, versions in enumerate(streams):
            obj = json.loads(versions[n])
            t = time.process_time()
            kept[i] = slim(obj, kept.get(i))
            spent += time.process_time() - t
    held = tracemalloc.get_traced_memory()[0] - base if traced else 0
    tracemalloc.stop()
    return spent, held


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pods", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=6)
    a = p.parse_args()
    streams = [_versions(i) for i in range(a.pods)]
    ways: dict[str, Slim] = {"old": _old, "new": _new}
    got: dict[str, list[tuple[float, int]]] = {k: [] for k in ways}
    for r in range(a.rounds):
        order = list(ways) if r % 2 == 0 else list(reversed(ways))
        for k in order:
            got[k].append(one(streams, ways[k], traced=False))
        print(f"round {r + 1}: " + ", ".join(
            f"{k} {got[k][-1][0] * 1e6 / (3 * a.pods):.1f} µs/version" for k in ways), flush=True)
    cpu = {k: statistics.median(s for s, _ in v) for k, v in got.items()}
    held = {k: one(streams, ways[k], traced=True)[1] for k in ways}
    print(f"\n{dt.date.today()} on {platform.node()} ({platform.python_version()}), "
          f"{a.pods} pods x 3 versions, {a.rounds} rounds (medians):")
    print("| way | µs per version | CPU-s per 1000 pods | KB held per pod |")
    print("|---|---|---|---|")
    for k in ways:
        print(f"| {k} | {cpu[k] * 1e6 / (3 * a.pods):.1f} | {cpu[k] * 1000 / a.pods:.3f} "
              f"| {held[k] / a.pods / 1024:.2f} |")
    print(f"| new/old | {cpu['new'] / cpu['old']:.2f} | | {held['new'] / held['old']:.2f} |")


if __name__ == "__main__":
    main()
