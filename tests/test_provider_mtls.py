"""The facade-provider boundary as the local environment runs it: mutual TLS, the facade's
identity only, and certificates rotated under running processes.

A memory provider and a facade run as processes on the real control plane with a PKI of the
test's own (`ProviderPki`). A VM pod runs; then the calls of issue 14 (GetPods, which carries the
resolved user data, and DeleteVirtualMachine) are tried without a client certificate, with a
certificate of another CA and with one of the same CA naming someone else: each is refused and
the VM is still there. Then the CA and both pairs are replaced on disk: the provider and the
facade pick them up without a restart and a new pod runs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lifecycle
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lifecycle_grpc
from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as vm_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.providerpki import ProviderPki
from vmlet_localenv.stack import Stack, eventually

NAME = "mtls"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ProviderPki:
    return ProviderPki.create(tmp_path_factory.mktemp("provider-pki"))


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, pki: ProviderPki,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(control_plane, tmp_path_factory.mktemp("mtls"), {NAME: ["--nodes", "1"]},
              facade_args=["--ping-seconds", "1"], pki=pki).start()
    try:
        eventually(lambda: len(s.ready_nodes(NAME)) == 1, what="node Ready")
        yield s
    except BaseException:
        s.print_logs()
        raise
    finally:
        s.stop()


def _running(stack: Stack, ns: str, name: str) -> dict[str, Any] | None:
    pod: dict[str, Any] = stack.kubectl_json("get", "pod", name, "-n", ns)
    return pod if pod["status"].get("phase") == "Running" else None


def _run_pod(stack: Stack, name: str) -> tuple[str, str]:
    """A VM pod in a namespace of its own, Running; returns (namespace, VM identity)."""
    ns = f"t-{uuid.uuid4().hex[:8]}"
    stack.cp.kubectl("create", "namespace", ns)
    stack.cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(stack.vm_pod(name, NAME)))
    pod = eventually(lambda: _running(stack, ns, name), timeout=60, what=f"{name} Running")
    return ns, str(pod["metadata"]["uid"])


def _attacks(channel: grpc.Channel, identity: str) -> list[grpc.StatusCode]:
    """What GetPods and DeleteVirtualMachine answer on ``channel`` (both must fail)."""
    codes = []
    for call in (
        lambda: lifecycle_grpc.PodLifecycleServiceStub(channel).GetPods(
            lifecycle.GetPodsRequest(), timeout=5),
        lambda: vm_grpc.VirtualMachineServiceStub(channel).DeleteVirtualMachine(
            vm_pb.DeleteVirtualMachineRequest(identity=identity), timeout=5),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        codes.append(info.value.code())
    return codes


def _vm_exists(stack: Stack, identity: str) -> bool:
    with stack.channel(NAME) as channel:
        vm = vm_grpc.VirtualMachineServiceStub(channel).GetVirtualMachine(
            vm_pb.GetVirtualMachineRequest(identity=identity), timeout=10).virtual_machine
    return bool(vm.identity == identity)


def test_only_the_facade_identity_is_served(stack: Stack, pki: ProviderPki,
                                           tmp_path: Path) -> None:
    ns, identity = _run_pod(stack, "victim")
    address = stack.providers[NAME].address
    rogue = ProviderPki.create(tmp_path / "rogue")  # another CA, its client names vmlet-facade
    tenant = pki.issue_client("tenant", "tenant")   # this CA, another identity
    hostile = {
        "plaintext": grpc.insecure_channel(address),
        "no certificate": grpc.secure_channel(address, grpc.ssl_channel_credentials(
            root_certificates=pki.ca.read_bytes())),
        "another CA": grpc.secure_channel(address, grpc.ssl_channel_credentials(
            root_certificates=pki.ca.read_bytes(), private_key=rogue.facade.key.read_bytes(),
            certificate_chain=rogue.facade.cert.read_bytes())),
        "another identity": grpc.secure_channel(address, pki.credentials(tenant)),
    }
    for what, channel in hostile.items():
        with channel:
            codes = _attacks(channel, identity)
        want = (grpc.StatusCode.PERMISSION_DENIED if what == "another identity"
                else grpc.StatusCode.UNAVAILABLE)
        assert codes == [want, want], what
    assert _vm_exists(stack, identity), "a refused DeleteVirtualMachine destroyed nothing"
    assert _running(stack, ns, "victim")
    log = stack.providers[NAME].process.tail(200)  # type: ignore[union-attr]
    assert "refused a client of another identity" in log


def test_rotated_certificates_are_picked_up_without_a_restart(stack: Stack,
                                                               pki: ProviderPki) -> None:
    _, before = _run_pod(stack, "before")
    provider_pid = stack.providers[NAME].process.pid  # type: ignore[union-attr]
    facade_pid = stack.facade.process.pid  # type: ignore[union-attr]
    pki.rotate(new_ca=True)  # nothing of the old CA is trusted any more

    # The facade notices within its 10 s check and reconnects with the new pair; the provider
    # re-reads its files at that handshake.
    eventually(lambda: "certificates reloaded" in stack.facade.process.tail(200),  # type: ignore[union-attr]
               timeout=30, what="the facade reloading its certificates")
    _, after = _run_pod(stack, "after")
    assert _vm_exists(stack, before) and _vm_exists(stack, after)
    assert "provider certificates reloaded" in stack.providers[NAME].process.tail(200)  # type: ignore[union-attr]
    assert stack.providers[NAME].process.pid == provider_pid  # type: ignore[union-attr]
    assert stack.facade.process.pid == facade_pid  # type: ignore[union-attr]
    assert len(stack.ready_nodes(NAME)) == 1
