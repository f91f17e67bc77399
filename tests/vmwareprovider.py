"""The vSphere provider on vcsim, for the tests that call it over gRPC and look at vCenter with
pyvmomi (tests/test_vmware_provider*.py, tests/test_provider_health.py): its process and client,
its pods, and vcsim as pyvmomi sees it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pyVmomi import vim

from tests import providerprocess
from tests.providerprocess import Provider
from vmlet.provider.v1 import pod_pb2
from vmlet_localenv.stack import vms_with_identity
from vmlet_localenv.vcsim import VcSim, _wait_task

__all__ = ["HOSTS", "NODES", "RUNNING", "TEMPLATE", "Provider", "count_vms", "eventually",
           "make_pod", "provider", "reconfigure_vm", "start_provider", "the_vm"]

T = TypeVar("T")
TEMPLATE = "debian-12"
HOSTS = ("DC0_C0_H0", "DC0_C0_H1", "DC0_C0_H2")
NODES = tuple(f"vsphere-{h.lower().replace('_', '-')}" for h in HOSTS)
RUNNING = pod_pb2.POD_PHASE_RUNNING
NAMESPACE = "tests"


def start_provider(sim: VcSim, workdir: Path, *extra: str) -> Provider:
    """`python -m vmlet_vmware` on ``sim``, with short keep-alive and reconnect periods."""
    return providerprocess.start_provider(
        "vmlet_vmware", workdir, {**os.environ, **sim.env()},
        "--template-folder", "vmlet-templates", "--network", "VM Network",
        "--keepalive-seconds", "2", "--reconnect-max-seconds", "1", "--watch-wait-seconds", "5",
        *extra, image=f"vsphere:template/{TEMPLATE}", namespace=NAMESPACE, timeout=60,
    )  # fmt: skip


def eventually(check: Callable[[], T | None], *, timeout: float = 30,
               what: str = "condition") -> T:
    """Calls ``check`` until it returns something true without raising; returns that."""
    return providerprocess.eventually(check, timeout=timeout, what=what,
                                      also=(vim.fault.VimFault,))


@pytest.fixture(scope="module")
def provider(vcsim: VcSim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    running = start_provider(vcsim, tmp_path_factory.mktemp("vmware-provider"))
    try:
        yield running
    finally:
        running.stop()
        print(running.process.tail(40))


def make_pod(
    node: str,
    *,
    name: str | None = None,
    identity: str | None = None,
    cpu_millis: int = 0,
    memory: int = 0,
    keep: bool = False,
    user_data: str = "",
    image: str = f"vsphere:template/{TEMPLATE}",
) -> pod_pb2.Pod:
    name = name or f"vm-{uuid.uuid4().hex[:8]}"
    return pod_pb2.Pod(
        ref=pod_pb2.PodRef(namespace=NAMESPACE, name=name, uid=str(uuid.uuid4())),
        node_name=node,
        identity=identity or str(uuid.uuid4()),
        keep_on_delete=keep,
        user_data=user_data,
        containers=[
            pod_pb2.Container(
                name="vm",
                image=image,
                resources=pod_pb2.Resources(cpu_limit_millis=cpu_millis, memory_limit_bytes=memory),
            )
        ],
    )


# vcsim as seen through pyvmomi.


def the_vm(sim: VcSim, identity: str) -> Any:
    """The one VM of `identity` (asserting there is exactly one), read in a fresh session."""
    with sim.connect() as si:
        found = vms_with_identity(si, identity)
        assert len(found) == 1, f"{len(found)} VMs carry identity {identity}"
        vm = found[0]
        return {
            "moid": vm._moId,
            "name": vm.name,
            "host": vm.runtime.host.name,
            "power": vm.runtime.powerState,
            "cpus": vm.config.hardware.numCPU,
            "memory_mb": vm.config.hardware.memoryMB,
            "boot": vm.summary.runtime.bootTime,
            "extra": {o.key: str(o.value) for o in vm.config.extraConfig or ()},
        }


def count_vms(sim: VcSim, identity: str) -> int:
    with sim.connect() as si:
        return len(vms_with_identity(si, identity))


def reconfigure_vm(sim: VcSim, identity: str, spec: Any) -> None:
    with sim.connect() as si:
        (vm,) = vms_with_identity(si, identity)
        _wait_task(vm.ReconfigVM_Task(spec=spec))
