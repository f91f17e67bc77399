"""The provider conformance suite (`vmlet_conformance`) against every provider of the project,
each as its own process over mutual TLS, as the facade calls it.

- memory: `python -m vmlet_memory` with two nodes and image debian-12;
- vsphere: `python -m vmlet_vmware` on vcsim (the session's), template debian-12;
- openstack: `python -m vmlet_openstack` on Nova with the fake driver (the OpenStack of
  VMLET_OPENSTACK_FACTS, or one started for this module: one start per module).
Each check of `vmlet_conformance.CHECKS` runs once per provider; the checks talk to the address
only, so what passes here passes for `python -m vmlet_conformance --address ...`. What an address
cannot show, idempotent creates across a SIGKILL of the provider, is tested here on each provider
as its own process (`test_create_is_idempotent_across_sigkill_of_the_provider`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from pyVmomi import vim

from tests.openstackprovider import upload_snapshot
from tests.providers import (
    MEMORY_NETWORK,
    RunningProvider,
    memory_argv,
    openstack_provider,
    openstack_run,
    provider_process,
    provider_run,
    vsphere_provider,
    vsphere_run,
)
from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kpb
from vmlet.provider.v1 import kubelet_endpoint_service_pb2_grpc as kpb_grpc
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lpb
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lpb_grpc
from vmlet.provider.v1 import pod_pb2
from vmlet_conformance import CHECKS, Check, Subject, code_of, eventually
from vmlet_localenv.openstack.client import sdk_connection
from vmlet_localenv.providerpki import default_pki
from vmlet_localenv.stack import vms_with_identity
from vmlet_localenv.vcsim import VcSim, _wait_task

#: Every provider's --log-poll-seconds here (the memory provider pushes its lines).
LOG_POLL = 0.5


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Subject]:
    workdir = tmp_path_factory.mktemp("memory-conformance")
    with provider_process("memory-provider", memory_argv(workdir, nodes=2), workdir,
                          dict(os.environ)) as channel:
        pods = lpb_grpc.PodLifecycleServiceStub(channel)
        serial = itertools.count(1)

        def write_log_line(pod: pod_pb2.Pod) -> None:
            """The memory provider logs "updated" on every UpdatePod that changes the pod."""
            changed = pod_pb2.Pod()
            changed.CopyFrom(pod)
            changed.annotations["logs.vmlet.io/serial"] = str(next(serial))
            pods.UpdatePod(lpb.UpdatePodRequest(pod=changed), timeout=60)

        def stop_vm(pod: pod_pb2.Pod) -> None:
            """The guest's shell powers it off (exit code 0)."""
            start = kpb.ExecStart(namespace=pod.ref.namespace, pod_name=pod.ref.name,
                                  command=["poweroff"], stdout=True)
            replies = list(kpb_grpc.KubeletEndpointServiceStub(channel).Exec(
                iter([kpb.ExecRequest(start=start)]), timeout=60))
            assert replies[-1].exit.exit_code == 0, replies

        yield Subject(channel, "memory:debian-12", namespace="conformance", timeout=120,
                      network=MEMORY_NETWORK, write_log_line=write_log_line, stop_vm=stop_vm,
                      log_poll_seconds=LOG_POLL)


@pytest.fixture(scope="module")
def vsphere(vcsim: VcSim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Subject]:
    serial = itertools.count(1)

    def write_log_line(pod: pod_pb2.Pod) -> None:
        """A reconfiguration, behind the provider's back, is a VmReconfiguredEvent."""
        with vcsim.connect() as si:
            (vm,) = vms_with_identity(si, pod.identity)
            _wait_task(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(
                annotation=f"logs {next(serial)}")))

    def stop_vm(pod: pod_pb2.Pod) -> None:
        """Powered off in vCenter, behind the provider's back."""
        with vcsim.connect() as si:
            (vm,) = vms_with_identity(si, pod.identity)
            _wait_task(vm.PowerOffVM_Task())

    with vsphere_provider(vcsim, tmp_path_factory.mktemp("vsphere-conformance"),
                          "--log-poll-seconds", str(LOG_POLL)) as channel:
        yield Subject(channel, "vsphere:template/debian-12", namespace="conformance", timeout=300,
                      network="VM Network", write_log_line=write_log_line, stop_vm=stop_vm,
                      log_poll_seconds=LOG_POLL)


@pytest.fixture(scope="module")
def openstack(openstack_cloud: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Subject]:
    admin = _admin(openstack_cloud)

    def finish_snapshot(image_id: str) -> None:
        """Nova's fake driver leaves a snapshot's image queued: the bytes a hypervisor would
        upload are uploaded here, through Glance, as tests/test_openstack_provider.py does."""
        if admin.image.get(f"/images/{image_id}").json()["status"] != "active":
            upload_snapshot(admin, image_id)

    def stop_vm(pod: pod_pb2.Pod) -> None:
        """Stopped in Nova by its admin, behind the provider's back."""
        import openstack.exceptions

        (server,) = _servers(admin, pod.identity)
        resp = admin.compute.post(f"/servers/{server['id']}/action", json={"os-stop": None},
                                  microversion="2.79")
        openstack.exceptions.raise_from_response(resp)

    networks = openstack_cloud["networks"]
    # Nova's fake driver fixes the console at three lines: nothing can write one more.
    with openstack_provider(openstack_cloud, tmp_path_factory.mktemp("openstack-conformance"),
                            "--log-poll-seconds", str(LOG_POLL)) as channel:
        yield Subject(channel, f"openstack:image/{openstack_cloud['image']['name']}",
                      namespace="conformance", timeout=300, finish_snapshot=finish_snapshot,
                      network=networks[0]["name"] if networks else "", stop_vm=stop_vm,
                      log_poll_seconds=LOG_POLL)


@pytest.fixture(scope="module", params=[
    "memory",
    pytest.param("vsphere", marks=pytest.mark.vcsim),
    pytest.param("openstack", marks=pytest.mark.openstack),
])
def subject(request: pytest.FixtureRequest) -> Subject:
    found: Subject = request.getfixturevalue(request.param)
    return found


@pytest.mark.parametrize("conformance_check", CHECKS, ids=[c.name for c in CHECKS])
def test_conformance(subject: Subject, conformance_check: Check) -> None:
    conformance_check.run(subject)


def test_the_command_line_checks_a_provider_at_an_address(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """`python -m vmlet_conformance`, as a provider author runs it: mutual TLS with the facade's
    certificate, against a memory provider; it passes, and a check that fails fails the run."""
    workdir = tmp_path_factory.mktemp("memory-cli")
    with provider_process("memory-provider", memory_argv(workdir, nodes=2), workdir,
                          dict(os.environ)):
        address = f"127.0.0.1:{int((workdir / 'port').read_text())}"
        pki = default_pki()
        argv = [sys.executable, "-m", "vmlet_conformance", "--address", address,
                "--tls-ca", str(pki.ca), "--tls-cert", str(pki.facade.cert),
                "--tls-key", str(pki.facade.key), "--image", "memory:debian-12"]
        passed = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        assert passed.returncode == 0, passed.stdout[-3000:]
        assert f"{len(CHECKS)} passed" in passed.stdout
        # A node the provider does not serve: the pods are refused, so the run fails.
        failed = subprocess.run([*argv, "--node", "no-such-node", "--", "-k", "create_twice"],
                                capture_output=True, text=True, timeout=600)
        assert failed.returncode == 1 and "1 failed" in failed.stdout, failed.stdout[-3000:]


# Idempotent creates across a SIGKILL of the provider: the suite only has an address, so this
# test starts the provider itself.


@dataclass
class Killable:
    """A provider process to kill, what its pods boot from, and how many VMs of an identity its
    IaaS holds, read from the IaaS itself (state file, vCenter, Nova), not from the provider."""

    running: RunningProvider
    image: str
    vms_of: Callable[[str], int]
    #: What keeps a pod's create under way long enough to be killed in it.
    annotations: dict[str, str] = field(default_factory=dict)


def _admin(facts: dict[str, Any]) -> Any:
    """A connection to the OpenStack of ``facts`` as its admin."""
    return sdk_connection(facts["clouds_yaml"], "vmlet-admin")


def _servers(admin: Any, identity: str) -> list[dict[str, Any]]:
    """Nova's servers of ``identity`` (any state but deleted), as the admin sees them."""
    import openstack.exceptions

    resp = admin.compute.get("/servers/detail", params={"all_tenants": 1, "limit": 1000},
                             microversion="2.79")
    openstack.exceptions.raise_from_response(resp)
    return [server for server in resp.json()["servers"]
            if (server.get("metadata") or {}).get("vmlet-identity") == identity
            and server["status"] not in ("DELETED", "SOFT_DELETED")]


def _servers_of(facts: dict[str, Any], identity: str) -> int:
    """How many servers Nova has of ``identity``."""
    return len(_servers(_admin(facts), identity))


@contextlib.contextmanager
def _killable(iaas: str, request: pytest.FixtureRequest, workdir: Path) -> Iterator[Killable]:
    if iaas == "memory":
        state = workdir / "state.json"

        def machines_of(identity: str) -> int:
            machines = json.loads(state.read_text())["machines"] if state.exists() else []
            return sum(1 for m in machines if m["identity"] == identity)

        with provider_run("memory-provider", memory_argv(workdir, nodes=2), workdir,
                          dict(os.environ)) as running:
            # Created Pending (powering on), so the kill comes before it runs.
            yield Killable(running, "memory:debian-12", machines_of,
                           {"memory.vmlet.io/start-delay-seconds": "10"})
    elif iaas == "vsphere":
        vcsim: VcSim = request.getfixturevalue("vcsim")

        def vms_of(identity: str) -> int:
            with vcsim.connect() as si:
                return len(vms_with_identity(si, identity))

        with vsphere_run(vcsim, workdir) as running:
            yield Killable(running, "vsphere:template/debian-12", vms_of)
    else:
        facts: dict[str, Any] = request.getfixturevalue("openstack_cloud")
        with openstack_run(facts, workdir) as running:
            yield Killable(running, f"openstack:image/{facts['image']['name']}",
                           lambda identity: _servers_of(facts, identity))


def _knows(subject: Subject, pod: pod_pb2.Pod) -> bool:
    """Whether the provider has taken ``pod`` on (GetPodStatus finds it)."""
    return code_of(lambda: subject.status(pod)) == grpc.StatusCode.OK


def _kill_mid_create(killable: Killable, delay: float) -> None:
    subject = Subject(killable.running.channel, killable.image, namespace="conformance",
                      annotations=killable.annotations, timeout=300)
    pod = subject.pod()
    pending = subject.pods.CreatePod.future(lpb.CreatePodRequest(pod=pod), timeout=300)
    deadline = time.monotonic() + 120
    while not pending.done() and not _knows(subject, pod):  # polled closely: a clone is short
        assert time.monotonic() < deadline, f"the provider never took on {pod.ref.name}"
        time.sleep(0.02)
    time.sleep(delay)
    killable.running.kill()
    subject = Subject(killable.running.restart(), killable.image, namespace="conformance",
                      timeout=300)
    with subject.cleanup(pod.identity):
        subject.create(pod)
        status = subject.wait_running(pod)
        assert killable.vms_of(pod.identity) == 1, f"killed after {delay}s: not one VM"
        assert subject.vm(pod.identity).provider_id == status.provider_id
        assert len(subject.listed_named(pod.ref.name)) == 1
        assert subject.status(pod).provider_id == status.provider_id
    eventually(lambda: killable.vms_of(pod.identity) == 0, timeout=120, what="the VM destroyed")


@pytest.mark.parametrize("iaas", [
    "memory",
    pytest.param("vsphere", marks=pytest.mark.vcsim),
    pytest.param("openstack", marks=pytest.mark.openstack),
])
def test_create_is_idempotent_across_sigkill_of_the_provider(
        iaas: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """CreatePod, SIGKILL of the provider as soon as it has taken the pod on (and, in two more
    rounds, 0.1 s and 0.3 s later), the provider started again on the same state, CreatePod
    again: exactly one VM for the identity in the IaaS, running, and one pod."""
    with _killable(iaas, request, tmp_path_factory.mktemp(f"{iaas}-sigkill")) as killable:
        for delay in (0.0, 0.1, 0.3):
            _kill_mid_create(killable, delay)
