"""Fault injection: a seeded script of VM operations while SIGKILL and SIGTERM hit the facade (on
the memory provider, each of its two replicas sharing the nodes), the provider, the IaaS,
kube-apiserver and etcd, each restarted exactly as it was started; after
convergence, the invariants of `vmlet_localenv.faults.invariants` hold in Kubernetes and in the
IaaS, read directly.

The seed is printed; ``VMLET_FAULT_SEED=<seed>`` replays the same script and the same faults (the
moments they land on follow the clock, so the interleaving may differ), ``VMLET_FAULT_SEED=random``
draws a new one (unset: `DEFAULT_SEED`, so `make test` is repeatable), ``VMLET_FAULT_OPS`` changes
the number of operations (200 by default).

The IaaS: the memory provider keeps its machines in its state file, so killing the provider kills
its IaaS too. vcsim keeps its inventory in memory only (``-load`` reads a dump written by ``govc
object.save``; nothing is journalled), so a killed vcsim loses every VM, which no real vCenter
does: its inventory lives in a database. Here a restart of vCenter is a restart of its service
endpoint: a TCP front (`vmlet_localenv.faults.tcpfront`) the provider reaches vcsim through is
killed and restarted, connections reset and refused, the inventory kept. The loss of a whole
inventory is tested apart (tests/vsphere_e2e/test_vcenter_restart.py).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.faults.iaas import Iaas, MemoryIaas, Sampler, VsphereIaas
from vmlet_localenv.faults.invariants import check
from vmlet_localenv.faults.kubeapi import KubeApi
from vmlet_localenv.faults.peers import Peer, PeerController
from vmlet_localenv.faults.workload import Workload, plan
from vmlet_localenv.processes import Process, free_port
from vmlet_localenv.services import FacadeProcess, facade_kubeconfig
from vmlet_localenv.stack import Stack, eventually
from vmlet_localenv.vcsim import VcSim

pytestmark = [pytest.mark.controlplane]

OPERATIONS = int(os.environ.get("VMLET_FAULT_OPS", "200"))
CLAIMS = ("disk-a", "disk-b", "disk-c", "disk-d")
CONVERGE_SECONDS = 240.0
SIGNALS = (signal.SIGKILL, signal.SIGTERM)
EXTRA_FAULTS = 4


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of this module's own: its etcd and apiserver get killed."""
    plane = ControlPlane(state_dir=tmp_path_factory.mktemp("fault-cp")).start()
    try:
        yield plane
    finally:
        plane.stop()


@dataclass
class Rig:
    """One provider's stack, its IaaS reader and the peers the faults hit."""

    stack: Stack
    provider: str
    image: str
    iaas: Iaas
    peers: dict[str, Peer]
    storage_parameters: dict[str, str]
    max_live: int
    cpus: tuple[int, ...]


#: The seed `make test` runs when VMLET_FAULT_SEED is unset: a CI run must be repeatable.
DEFAULT_SEED = 2


def _seed() -> int:
    text = os.environ.get("VMLET_FAULT_SEED", "")
    if text == "random":
        return random.SystemRandom().randrange(1, 2**31)
    return int(text) if text else DEFAULT_SEED


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)


def _listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return True


def _control_plane_peers(cp: ControlPlane) -> dict[str, Peer]:
    procs = {p.name: p for p in cp.processes}
    return {
        "kube-apiserver": Peer("kube-apiserver", lambda: procs["kube-apiserver"],
                               lambda: cp.get("/readyz") == "ok"),
        "etcd": Peer("etcd", lambda: procs["etcd"],
                     lambda: _http_ok(f"{cp.etcd_url}/health")),
    }


def _stack_peers(stack: Stack, provider: str) -> dict[str, Peer]:
    prov = stack.providers[provider]

    def facade() -> Process:
        assert stack.facade is not None and stack.facade.process is not None
        return stack.facade.process

    def provider_process() -> Process:
        assert prov.process is not None
        return prov.process

    return {
        "facade": Peer("facade", facade, lambda: stack.facade is not None
                       and "vmlet_facade" in stack.facade.metrics()),
        "provider": Peer("provider", provider_process, prov.port_file.exists,
                         before_start=lambda: prov.port_file.unlink(missing_ok=True)),
    }


@pytest.fixture
def memory_rig(cp: ControlPlane, tmp_path: Path) -> Iterator[Rig]:
    """The memory provider behind two facade replicas sharing its nodes, as the Deployment runs
    them (--shard-nodes): killing either one makes the other take its nodes mid-workload."""
    provider = "faultmem"
    stack = Stack(cp, tmp_path / "stack", {provider: ["--nodes", "3"]},
                  facade_args=["--shard-nodes"]).start()
    second = FacadeProcess({provider: stack.providers[provider].address},
                           facade_kubeconfig(cp), tmp_path / "facade-2",
                           args=["--shard-nodes"], pki=stack.pki).start()

    def second_process() -> Process:
        assert second.process is not None
        return second.process

    try:
        peers = {**_stack_peers(stack, provider),
                 "facade-2": Peer("facade-2", second_process,
                                  lambda: "vmlet_facade" in second.metrics()),
                 **_control_plane_peers(cp)}
        yield Rig(stack, provider, "debian-12", MemoryIaas(tmp_path / "stack" / f"{provider}.json"),
                  peers, {"tier": "gold"}, max_live=8, cpus=(1, 2))
    finally:
        second.stop()
        stack.stop()
        stack.print_logs(60)


@pytest.fixture
def vsphere_rig(cp: ControlPlane, tmp_path: Path) -> Iterator[Rig]:
    provider = "faultvs"
    sim = VcSim(hosts=3, state_dir=tmp_path / "vcsim").start()
    front_port = free_port()
    front = Process("vcenter-front", [
        sys.executable, "-m", "vmlet_localenv.faults.tcpfront",
        "--listen", f"127.0.0.1:{front_port}", "--target", f"127.0.0.1:{sim.port}",
    ], log_dir=tmp_path / "logs").start()
    eventually(lambda: _listening(front_port), timeout=30, what="the vCenter front")
    sim.url = f"https://127.0.0.1:{front_port}/sdk"  # the provider reaches vCenter through it
    stack = Stack(cp, tmp_path / "stack", {provider: []}, kinds={provider: "vsphere"},
                  vcsim=sim)
    try:
        stack.start()
        peers = {**_stack_peers(stack, provider),
                 "vcenter": Peer("vcenter", lambda: front, lambda: _listening(front_port)),
                 **_control_plane_peers(cp)}
        yield Rig(stack, provider, "debian-12", VsphereIaas(sim), peers,
                  {"datastore": "LocalDS_0", "provisioningType": "thin"},
                  max_live=4, cpus=(1,))  # vcsim's hosts have 2 cores each
    finally:
        stack.stop()
        stack.print_logs(60)
        front.stop()
        sim.stop()


def _claims(rig: Rig, api: KubeApi, ns: str) -> dict[str, str]:
    """Make the workload's claims (a StorageClass of the provider's, Delete policy); return
    claim name -> disk handle once all are Bound."""
    klass = f"{rig.provider}-faults"
    api.request("POST", "/apis/storage.k8s.io/v1/storageclasses", {
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": klass},
        "provisioner": f"{rig.provider}.vmlet.io", "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate", "parameters": rig.storage_parameters})
    for claim in CLAIMS:
        api.create(f"/api/v1/namespaces/{ns}/persistentvolumeclaims", {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
            "spec": {"storageClassName": klass, "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}}})

    def handles() -> dict[str, str] | None:
        out = {}
        for claim in CLAIMS:
            obj = api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
            if obj.get("status", {}).get("phase") != "Bound":
                return None
            pv = api.get(f"/api/v1/persistentvolumes/{obj['spec']['volumeName']}")
            out[claim] = pv["spec"]["csi"]["volumeHandle"]
        return out

    return eventually(handles, timeout=90, what="the workload's claims Bound")


def _faults(seed: int, peers: list[str], operations: int
            ) -> list[tuple[int, str, signal.Signals, float]]:
    """The fault script: every peer gets SIGKILL and SIGTERM once, plus EXTRA_FAULTS more, in a
    seeded order; each is (the operation after which it lands, peer, signal, seconds kept
    down). Tying a fault to an operation, not to the clock, keeps the faults inside the workload
    however slow the machine is, and a replay puts them back between the same operations."""
    rng = random.Random(seed * 7919 + 1)
    deck = [(p, s) for p in peers for s in SIGNALS]
    deck += [(rng.choice(peers), rng.choice(SIGNALS)) for _ in range(EXTRA_FAULTS)]
    rng.shuffle(deck)
    after = sorted(rng.sample(range(3, operations * 9 // 10), len(deck)))
    return [(op, p, s, round(rng.uniform(0.5, 4.0), 1)) for op, (p, s) in zip(after, deck,
                                                                               strict=True)]


def _run(rig: Rig, cp: ControlPlane, capsys: pytest.CaptureFixture[str], name: str) -> None:
    seed = _seed()
    started = time.monotonic()

    def say(message: str) -> None:
        with capsys.disabled():
            print(f"[faults {name} seed={seed} +{time.monotonic() - started:5.1f}s] {message}",
                  flush=True)

    say(f"replay with VMLET_FAULT_SEED={seed}")
    api = KubeApi(cp.server, cp.ssl_context())
    ns = f"faults-{name}"
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": ns}})
    eventually(lambda: len(rig.stack.ready_nodes(rig.provider)) == 3, timeout=90,
               what="3 nodes Ready")
    claims = _claims(rig, api, ns)
    controller = PeerController(rig.peers)
    sampler = Sampler(rig.iaas).start()
    workload = Workload(api, ns, rig.provider, rig.image, seed, OPERATIONS, list(CLAIMS),
                        max_live=rig.max_live, cpus=rig.cpus)
    faults = _faults(seed, list(rig.peers), len(workload.ops))
    say(f"{len(workload.ops)} operations, {len(faults)} faults on {sorted(rig.peers)}")
    workload.start()
    for after, peer, sig, down in faults:
        while workload.done < after and workload.alive():
            time.sleep(0.05)
        took = controller.hit(peer, sig, down)
        say(f"{sig.name} {peer} after operation {after} (down {down}s, ready after "
            f"{took:.1f}s); operations done {workload.done}/{len(workload.ops)}")
    while workload.alive():
        workload.join(10)
        say(f"operations done {workload.done}/{len(workload.ops)}")
    assert workload.error is None, f"seed {seed}: the workload stopped: {workload.error!r}"
    controller.ensure_running()
    workload_seconds = time.monotonic() - started
    say(f"workload and faults over; converging (kills {controller.counts()})")

    converge_start = time.monotonic()
    violations: list[str] = []
    states: dict[str, int] = {}
    last_said = converge_start
    while True:
        try:
            sampler.sample()
            violations, states = check(api, ns, workload.vms, rig.iaas, sampler, claims)
        except Exception as err:  # a peer still settling; the next round counts
            violations = [f"check failed: {err!r}"]
        if not violations or time.monotonic() - converge_start > CONVERGE_SECONDS:
            break
        if time.monotonic() - last_said > 30:
            last_said = time.monotonic()
            say(f"converging: {len(violations)} invariants not met yet")
        time.sleep(3)
    converged = time.monotonic() - converge_start
    sampler.stop()
    summary = {
        "provider": name, "seed": seed, "operations": len(workload.ops),
        "outcomes": dict(sorted(workload.outcomes().items())), "operation states": states,
        "kills": controller.counts(), "sigterm not obeyed": dict(controller.ignored_sigterm),
        "apiserver retries": api.retries, "iaas samples": sampler.samples,
        "workload seconds": round(workload_seconds), "convergence seconds": round(converged),
        "violations": len(violations),
    }
    say("summary " + json.dumps(summary))
    for v in violations:
        say(f"VIOLATION {v}")
    if violations:
        for op in workload.ops:
            print(f"{op} -> {op.outcome}")
        print("\n".join(controller.log))
    assert not violations, (f"seed {seed} ({name}): {len(violations)} invariants violated "
                            f"after {converged:.0f}s:\n" + "\n".join(violations))


@pytest.mark.timeout(1200)
def test_memory_provider_under_faults(memory_rig: Rig, cp: ControlPlane,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    _run(memory_rig, cp, capsys, "memory")


@pytest.mark.vcsim
@pytest.mark.timeout(1200)
def test_vsphere_provider_under_faults(vsphere_rig: Rig, cp: ControlPlane,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    _run(vsphere_rig, cp, capsys, "vsphere")


def test_fault_script_is_seeded() -> None:
    """The same seed gives the same operations and the same faults; another seed does not."""
    peers = ["facade", "provider", "kube-apiserver", "etcd"]
    first, _ = plan(42, 200, list(CLAIMS))
    again, _ = plan(42, 200, list(CLAIMS))
    other, _ = plan(43, 200, list(CLAIMS))
    assert [str(o) for o in first] == [str(o) for o in again] != [str(o) for o in other]
    assert _faults(42, peers, 200) == _faults(42, peers, 200) != _faults(43, peers, 200)
    assert len(_faults(42, peers, 200)) == 2 * len(peers) + EXTRA_FAULTS
    kinds = {o.kind for o in first}
    assert kinds == {"create", "stop", "start", "resize", "migrate", "backup", "restore",
                     "delete", "attach", "detach", "force-delete-pod"}, kinds
