"""The OpenStack provider against a real OpenStack, through its real gRPC server, checked with
openstacksdk as the admin.

The OpenStack is `vmlet_localenv.openstack.OpenStackEnv`: Keystone, Placement, Glance, Neutron
and Nova (api, conductor, scheduler, two nova-compute hosts with nova's fake virt driver) from
PyPI, on loopback, started once for this module's session. The provider runs as its own process
(`python -m vmlet_openstack`) with the env's clouds.yaml; the tests call it over gRPC as the
facade would and look at Nova directly as the admin to see what really happened there.

What the fake driver does and does not do, as found here: servers go ACTIVE without a
hypervisor; the console output is a fixed three lines; live migration works (its live_migration
calls the post-migration step at once); cold migration and resize work, with confirm;
`createImage` leaves the Glance image `queued` (the fake snapshot uploads nothing), so the
snapshot test uploads the image's bytes itself, playing the hypervisor's part, before restoring
from it; server diagnostics are admin-only by Nova's policy, so the provider's stats carry none.

Set VMLET_OPENSTACK_FACTS to the facts.json of an env already running
(`python -m vmlet_localenv.openstack up --state-dir DIR` writes DIR/facts.json) to reuse it
instead of starting one; the outage test freezes and continues its nova-api like any other.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import signal
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import openstack
import openstack.config
import openstack.connection
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vmlet.provider.v1 import (
    kubelet_endpoint_service_pb2,
    kubelet_endpoint_service_pb2_grpc,
    node_provider_service_pb2,
    node_provider_service_pb2_grpc,
    pod_lifecycle_service_pb2,
    pod_lifecycle_service_pb2_grpc,
    pod_notifier_service_pb2,
    pod_notifier_service_pb2_grpc,
    pod_pb2,
    virtual_machine_service_pb2,
    virtual_machine_service_pb2_grpc,
)
from vmlet_contract import READINESS_SERVICE
from vmlet_contract.hostile import hostile_requests
from vmlet_localenv.openstack import OpenStackEnv, installed
from vmlet_localenv.openstack._mariadb import DB_PASSWORD
from vmlet_localenv.processes import Process, wait_for
from vmlet_localenv.providerpki import default_pki

pytestmark = pytest.mark.openstack

T = TypeVar("T")
NAMESPACE = "vmlet-test"
RUNNING = pod_pb2.POD_PHASE_RUNNING
TRUE = pod_pb2.CONDITION_STATUS_TRUE
UNKNOWN = pod_pb2.CONDITION_STATUS_UNKNOWN
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MV = "2.79"
OP_TIMEOUT = 300.0


# -- the OpenStack ----------------------------------------------------------------------------


@dataclass
class Cloudside:
    """The OpenStack under test: its clouds.yaml, compute hosts, and a way to take nova-api away
    and bring it back."""

    clouds_yaml: Path
    compute_hosts: tuple[str, ...]
    image_name: str
    state_dir: Path
    nova_api_pid: int
    nova_url: str
    env: OpenStackEnv | None = None
    _frozen: bool = False

    def admin(self) -> Any:
        return self._connect("vmlet-admin")

    def vmlet(self) -> Any:
        """The provider's own user, for servers made behind its back."""
        return self._connect("vmlet")

    def _connect(self, name: str) -> Any:
        config = openstack.config.OpenStackConfig(config_files=[str(self.clouds_yaml)])
        region = config.get_one(cloud=name, api_timeout=60)
        return openstack.connection.Connection(config=region)

    def node(self, host: str) -> str:
        return f"openstack-{host}"

    def stop_nova_api(self) -> None:
        """Takes nova-api away: its process group (gunicorn master and worker) is stopped with
        SIGSTOP, so every request to it gets no answer until it is continued. OpenStackEnv has no
        call to stop and restart one of its services, and a frozen API is the harder case for a
        client anyway (timeouts, not refusals)."""
        os.killpg(self.nova_api_pid, signal.SIGSTOP)
        self._frozen = True
        assert not _answers(self.nova_url)

    def start_nova_api(self) -> None:
        """Brings nova-api back (SIGCONT) and waits until it answers."""
        os.killpg(self.nova_api_pid, signal.SIGCONT)
        self._frozen = False
        wait_for(lambda: _answers(self.nova_url), timeout=120, what="nova-api")

    def close(self) -> None:
        if self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.nova_api_pid, signal.SIGCONT)
        if self.env is not None:
            self.env.stop()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status) < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


@pytest.fixture(scope="session")
def openstack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloudside]:
    facts_file = os.environ.get("VMLET_OPENSTACK_FACTS")
    env: OpenStackEnv | None = None
    if facts_file:
        facts = json.loads(Path(facts_file).read_text())
    else:
        why = installed()
        if why is not None:
            pytest.skip(f"{why}: run hack/openstack/install.sh")
        env = OpenStackEnv(tmp_path_factory.mktemp("openstack"))
        env.start()
        facts = env.facts()
    side = Cloudside(
        clouds_yaml=Path(facts["clouds_yaml"]),
        compute_hosts=tuple(facts["compute_hosts"]),
        image_name=facts["image"]["name"],
        state_dir=Path(facts["state_dir"]),
        nova_api_pid=int(facts["pids"]["nova-api"]),
        nova_url=facts["endpoints"]["compute"].split("/v2")[0] + "/",
        env=env,
    )
    try:
        yield side
    finally:
        side.close()


@pytest.fixture(scope="session")
def admin(openstack_env: Cloudside) -> Any:
    return openstack_env.admin()


def servers_of(admin: Any, identity: str) -> list[dict[str, Any]]:
    """Every server (any state but deleted) whose metadata names `identity`, as the admin sees
    them; not filtered by the provider's tag, so a server made without it would count too."""
    resp = admin.compute.get(
        "/servers/detail", params={"all_tenants": 1, "limit": 1000}, microversion=MV
    )
    openstack.exceptions.raise_from_response(resp)
    return [
        s
        for s in resp.json()["servers"]
        if (s.get("metadata") or {}).get("vmlet-identity") == identity
        and s["status"] not in ("DELETED", "SOFT_DELETED")
    ]


def server(admin: Any, server_id: str) -> dict[str, Any]:
    resp = admin.compute.get(f"/servers/{server_id}", microversion=MV)
    openstack.exceptions.raise_from_response(resp)
    found: dict[str, Any] = resp.json()["server"]
    return found


# -- the provider -----


@dataclass
class Provider:
    """A provider process and stubs of a channel to it."""

    process: Process
    port: int
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = default_pki().channel(f"127.0.0.1:{self.port}")  # as the facade
        self.pods = pod_lifecycle_service_pb2_grpc.PodLifecycleServiceStub(self.channel)
        self.nodes = node_provider_service_pb2_grpc.NodeProviderServiceStub(self.channel)
        self.notifier = pod_notifier_service_pb2_grpc.PodNotifierServiceStub(self.channel)
        self.vms = virtual_machine_service_pb2_grpc.VirtualMachineServiceStub(self.channel)
        self.endpoints = kubelet_endpoint_service_pb2_grpc.KubeletEndpointServiceStub(self.channel)

    def create(self, pod: pod_pb2.Pod, timeout: float = 120) -> pod_pb2.PodStatus:
        request = pod_lifecycle_service_pb2.CreatePodRequest(pod=pod)
        status: pod_pb2.PodStatus = self.pods.CreatePod(request, timeout=timeout).status
        return status

    def update(self, pod: pod_pb2.Pod, timeout: float = 120) -> pod_pb2.PodStatus:
        request = pod_lifecycle_service_pb2.UpdatePodRequest(pod=pod)
        status: pod_pb2.PodStatus = self.pods.UpdatePod(request, timeout=timeout).status
        return status

    def delete(self, pod: pod_pb2.Pod, timeout: float = OP_TIMEOUT) -> None:
        self.pods.DeletePod(pod_lifecycle_service_pb2.DeletePodRequest(pod=pod), timeout=timeout)

    def status(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        request = pod_lifecycle_service_pb2.GetPodStatusRequest(
            namespace=pod.ref.namespace, name=pod.ref.name
        )
        status: pod_pb2.PodStatus = self.pods.GetPodStatus(request, timeout=30).status
        return status

    def ping(self) -> node_provider_service_pb2.PingResponse:
        pong: node_provider_service_pb2.PingResponse = self.nodes.Ping(
            node_provider_service_pb2.PingRequest(), timeout=30
        )
        return pong

    def health(self) -> tuple[int, int]:
        """(liveness, readiness) as the provider's health service answers them."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        live = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        ready = stub.Check(health_pb2.HealthCheckRequest(service=READINESS_SERVICE), timeout=10)
        return live.status, ready.status

    def list_nodes(self) -> list[Any]:
        request = node_provider_service_pb2.ListNodesRequest()
        return list(self.nodes.ListNodes(request, timeout=60).nodes)

    def destroy(self, identity: str) -> None:
        request = virtual_machine_service_pb2.DeleteVirtualMachineRequest(identity=identity)
        self.vms.DeleteVirtualMachine(request, timeout=OP_TIMEOUT)

    def stop(self) -> None:
        self.channel.close()
        self.process.stop(timeout=15)


def start_provider(openstack_env: Cloudside, workdir: Path, *extra: str) -> Provider:
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_CLIENT_CONFIG_FILE=str(openstack_env.clouds_yaml), OS_CLOUD="vmlet")
    argv = [
        sys.executable, "-m", "vmlet_openstack",
        "--listen", "127.0.0.1:0", "--port-file", str(port_file),
        "--poll-seconds", "1", "--fast-poll-seconds", "0.5", "--node-poll-seconds", "2",
        "--api-timeout-seconds", "10", "--log-poll-seconds", "0.5",
        "--operation-timeout-seconds", str(int(OP_TIMEOUT)), "--log-format", "text",
        *default_pki().provider_args(), *extra,
    ]  # fmt: skip
    process = Process("openstack-provider", argv, log_dir=workdir, env=env).start()
    wait_for(port_file.exists, timeout=60, what="openstack provider", alive=process.check_alive)
    provider = Provider(process, int(port_file.read_text()))
    eventually(provider.ping, timeout=60, what="provider ping")
    return provider


def eventually(check: Callable[[], T | None], *, timeout: float = 60, what: str = "it") -> T:
    """Calls `check` until it returns something true without raising; returns that."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (grpc.RpcError, AssertionError, KeyError, openstack.exceptions.SDKException) as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen in {timeout:.0f}s (last: {last!r})")


@pytest.fixture(scope="module")
def provider(
    openstack_env: Cloudside, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Provider]:
    running = start_provider(openstack_env, tmp_path_factory.mktemp("openstack-provider"))
    try:
        yield running
    finally:
        running.stop()


class Recorder:
    """Reads a server stream on a thread into a queue."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.items: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for item in self.call:
                self.items.put(item)

    def wait(self, predicate: Callable[[Any], bool], *, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.items.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if predicate(item):
                return item
        raise AssertionError(f"{what} did not arrive in {timeout:.0f}s")

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5)


# -- pods -----


def make_pod(
    name: str,
    node: str,
    *,
    identity: str | None = None,
    image: str = "openstack:image/vmlet-test-image",
    cpu_millis: int = 500,
    memory_bytes: int = 256 * 2**20,
    keep: bool = False,
    flavor: str | None = None,
    user_data: str = "",
) -> pod_pb2.Pod:
    uid = str(uuid.uuid4())
    return pod_pb2.Pod(
        ref=pod_pb2.PodRef(namespace=NAMESPACE, name=name, uid=uid),
        node_name=node,
        identity=identity or uid,
        keep_on_delete=keep,
        annotations={"openstack.vmlet.io/flavor": flavor} if flavor else {},
        user_data=user_data,
        containers=[
            pod_pb2.Container(
                name="vm",
                image=image,
                resources=pod_pb2.Resources(
                    cpu_request_millis=cpu_millis, memory_request_bytes=memory_bytes
                ),
            )
        ],
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def ready(status: pod_pb2.PodStatus) -> bool:
    return status.phase == RUNNING and any(
        c.type == "Ready" and c.status == TRUE for c in status.conditions
    )


class PodFailed(Exception):
    """The pod failed: no use waiting any longer."""


def wait_running(
    provider: Provider, pod: pod_pb2.Pod, timeout: float = OP_TIMEOUT
) -> pod_pb2.PodStatus:
    def check() -> pod_pb2.PodStatus | None:
        status = provider.status(pod)
        if status.phase == pod_pb2.POD_PHASE_FAILED:
            raise PodFailed(f"pod {pod.ref.name}: {status.reason}: {status.message}")
        return status if ready(status) else None

    return eventually(check, timeout=timeout, what=f"pod {pod.ref.name} running and ready")


@contextlib.contextmanager
def destroyed_after(provider: Provider, *identities: str) -> Iterator[None]:
    try:
        yield
    finally:
        for identity in identities:
            with contextlib.suppress(grpc.RpcError):
                provider.destroy(identity)


# -- the tests -----


def test_nodes_are_the_compute_hosts(provider: Provider, openstack_env: Cloudside) -> None:
    nodes = {n.name: n for n in provider.list_nodes()}
    assert set(nodes) == {openstack_env.node(h) for h in openstack_env.compute_hosts}
    for host in openstack_env.compute_hosts:
        node = nodes[openstack_env.node(host)]
        ready_condition = next(c for c in node.conditions if c.type == "Ready")
        assert ready_condition.status == TRUE, ready_condition.message
        assert ready_condition.reason == "ComputeServiceUp"
        assert not node.unschedulable
        # nova's fake driver reports 1000 vCPUs and 800000 MiB per host.
        assert node.capacity["cpu"] == "1000"
        assert node.capacity["memory"] == "800000Mi"
        assert node.capacity["pods"] and node.allocatable["cpu"]
        assert node.labels["vmlet.io/openstack-host"] == host
        assert node.provider_id.startswith("openstack://")
        assert node.info.kernel_version.startswith("fake")
    stream = Recorder(
        provider.nodes.NotifyNodeStatus(node_provider_service_pb2.NotifyNodeStatusRequest())
    )
    try:
        seen: set[str] = set()
        for _ in openstack_env.compute_hosts:
            update = stream.wait(lambda u: u.node.name not in seen, timeout=30, what="a node")
            seen.add(update.node.name)
        assert seen == set(nodes)
    finally:
        stream.close()
    assert provider.ping().provider == "openstack"


def test_create_lands_on_the_pods_host_with_flavor_and_identity(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    host = openstack_env.compute_hosts[1]
    # 1.5 CPUs and 1 GiB: the smallest flavor with 2 vCPUs and at least 1024 MiB is m1.medium.
    pod = make_pod(
        unique("place"), openstack_env.node(host), cpu_millis=1500, memory_bytes=2**30,
        user_data="#cloud-config\nhostname: placed\n",
    )  # fmt: skip
    named = make_pod(
        unique("named"), openstack_env.node(openstack_env.compute_hosts[0]), flavor="m1.small"
    )
    stream = Recorder(provider.notifier.NotifyPods(pod_notifier_service_pb2.NotifyPodsRequest()))
    with destroyed_after(provider, pod.identity, named.identity):
        first = provider.create(pod)
        assert first.phase == pod_pb2.POD_PHASE_PENDING
        assert first.provider_id
        provider.create(named)
        status = wait_running(provider, pod)
        assert status.actual_node_name == openstack_env.node(host)
        assert status.pod_ip == "" and not status.pod_ips  # no ports: no address, none invented
        found = servers_of(admin, pod.identity)
        assert len(found) == 1
        nova = found[0]
        assert nova["id"] == status.provider_id == first.provider_id
        assert nova["OS-EXT-SRV-ATTR:host"] == host
        assert nova["flavor"]["original_name"] == "m1.medium"
        assert nova["metadata"]["vmlet-identity"] == pod.identity
        assert nova["metadata"]["vmlet-pod"] == pod.ref.name
        assert f"vmlet-id-{pod.identity}" in nova["tags"]
        user_data = base64.b64decode(nova["OS-EXT-SRV-ATTR:user_data"]).decode()
        assert user_data == pod.user_data
        assert nova["addresses"] == {}
        wait_running(provider, named)
        other = servers_of(admin, named.identity)[0]
        assert other["flavor"]["original_name"] == "m1.small"
        assert other["OS-EXT-SRV-ATTR:host"] == openstack_env.compute_hosts[0]
        pushed = stream.wait(
            lambda u: u.ref.name == pod.ref.name and ready(u.status),
            timeout=60,
            what="NotifyPods running status",
        )
        assert pushed.status.provider_id == nova["id"]
    stream.close()


def test_bad_pods_are_refused(provider: Provider, openstack_env: Cloudside) -> None:
    node = openstack_env.node(openstack_env.compute_hosts[0])
    cases = [
        (make_pod(unique("img"), node, image="no-such-image"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            make_pod(unique("oci"), node, image="docker.io/nginx:1"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (make_pod(unique("fl"), node, flavor="m9.huge"), grpc.StatusCode.INVALID_ARGUMENT),
        (make_pod(unique("big"), node, cpu_millis=64000), grpc.StatusCode.INVALID_ARGUMENT),
        (make_pod(unique("node"), "openstack-nowhere"), grpc.StatusCode.FAILED_PRECONDITION),
    ]
    for pod, code in cases:
        with pytest.raises(grpc.RpcError) as caught:
            provider.create(pod)
        assert caught.value.code() == code, caught.value.details()
    # Deleting a pod the provider never saw succeeds; asking for it is NOT_FOUND.
    provider.delete(cases[0][0])
    with pytest.raises(grpc.RpcError) as caught:
        provider.status(cases[0][0])
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def all_server_names(admin: Any) -> list[str]:
    resp = admin.compute.get("/servers/detail", params={"all_tenants": 1, "limit": 1000},
                             microversion=MV)
    openstack.exceptions.raise_from_response(resp)
    return sorted(str(s["name"]) for s in resp.json()["servers"])


def test_out_of_bounds_requests_are_invalid_argument(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    """cpu 2^62, memory 2^62, a 10 MB identity, 20 MB of user data, a 4 EiB disk, namespace
    a/b...: INVALID_ARGUMENT from the real server, and Nova and Cinder see nothing."""
    node = openstack_env.node(openstack_env.compute_hosts[0])
    before = all_server_names(admin)
    stubs = {"pods": provider.pods, "vms": provider.vms}
    for case in hostile_requests(node, "openstack:image/vmlet-test-image"):
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stubs[case.stub], case.method)(case.request, timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case.what, caught.value)
        assert "incident" not in (caught.value.details() or ""), case.what
    after = all_server_names(admin)
    assert set(after) <= set(before) and not [n for n in after if "hostile" in n]


def _env_secrets(state_dir: Path) -> list[str]:
    """Every password of the env: Keystone users (facts.json), the database's and RabbitMQ's
    (the URLs in nova.conf)."""
    facts = json.loads((state_dir / "facts.json").read_text())
    found = [facts["admin"]["password"], facts["vmlet"]["password"]]
    conf = (state_dir / "etc" / "nova.conf").read_text()
    found += re.findall(r"mysql\+pymysql://[^:]+:([^@]+)@", conf)
    found += re.findall(r"rabbit://([^:]+):([^@]+)@", conf)[0][1:]
    found += re.findall(r"(?m)^password\s*=\s*(\S+)", conf)
    return sorted(set(found))


def test_no_secret_of_the_env_on_a_command_line_or_readable_by_others(
    openstack_env: Cloudside,
) -> None:
    state = openstack_env.state_dir
    secrets = _env_secrets(state)
    assert len(secrets) >= 4
    assert DB_PASSWORD not in secrets and "guest" not in secrets  # the env's own, not defaults
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().decode(errors="replace")
                assert not [s for s in secrets if s in argv], f"pid {entry.name}: {argv[:200]}"
    assert state.stat().st_mode & 0o777 == 0o700
    for path in state.rglob("*"):
        if not path.is_file() or path.is_symlink() or path.stat().st_size > 4 * 2**20:
            continue
        data = path.read_bytes()
        if any(s.encode() in data for s in secrets) or b"PRIVATE KEY" in data:
            assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
            assert path.suffix != ".log" or b"PRIVATE KEY" in data, f"{path} logs a password"


def test_stop_and_start_keep_the_server(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    node = openstack_env.node(openstack_env.compute_hosts[0])
    pod = make_pod(unique("keep"), node, keep=True)
    with destroyed_after(provider, pod.identity):
        provider.create(pod)
        server_id = wait_running(provider, pod).provider_id
        provider.delete(pod)
        kept = server(admin, server_id)
        assert kept["status"] == "SHUTOFF"
        assert "vmlet-pod" not in kept["metadata"]
        assert kept["metadata"]["vmlet-identity"] == pod.identity
        with pytest.raises(grpc.RpcError) as caught:
            provider.status(pod)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        # The VirtualMachine's next pod: same identity, new pod.
        again = make_pod(unique("keep"), node, identity=pod.identity, keep=True)
        assert provider.create(again).provider_id == server_id
        status = wait_running(provider, again)
        assert status.provider_id == server_id
        assert server(admin, server_id)["status"] == "ACTIVE"
        assert [s["id"] for s in servers_of(admin, pod.identity)] == [server_id]


def test_delete_without_keep_destroys_the_server(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    pod = make_pod(unique("gone"), openstack_env.node(openstack_env.compute_hosts[0]))
    with destroyed_after(provider, pod.identity):
        provider.create(pod)
        wait_running(provider, pod)
        provider.delete(pod)
        assert servers_of(admin, pod.identity) == []
        provider.delete(pod)  # again: still fine


def test_resize_to_a_fitting_flavor(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    host = openstack_env.compute_hosts[0]
    pod = make_pod(unique("resize"), openstack_env.node(host), cpu_millis=500, memory_bytes=2**28)
    with destroyed_after(provider, pod.identity):
        provider.create(pod)
        server_id = wait_running(provider, pod).provider_id
        assert server(admin, server_id)["flavor"]["original_name"] == "m1.tiny"
        bigger = pod_pb2.Pod()
        bigger.CopyFrom(pod)
        bigger.containers[0].resources.cpu_request_millis = 3000  # 3 CPUs: m1.large (4 vCPUs)
        provider.update(bigger)

        def resized() -> dict[str, Any] | None:
            nova = server(admin, server_id)
            done = (
                nova["flavor"]["original_name"] == "m1.large"
                and nova["status"] == "ACTIVE"
                and nova["OS-EXT-STS:task_state"] is None
                and nova["OS-EXT-SRV-ATTR:host"] == host
            )
            return nova if done else None

        eventually(resized, timeout=OP_TIMEOUT, what="resize to m1.large, back on its host")
        status = wait_running(provider, bigger)
        assert status.provider_id == server_id
        assert status.actual_node_name == openstack_env.node(host)


def test_migration_moves_the_server_to_the_pods_host(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    first, second = openstack_env.compute_hosts[:2]
    pod = make_pod(unique("move"), openstack_env.node(first), keep=True)
    with destroyed_after(provider, pod.identity):
        provider.create(pod)
        server_id = wait_running(provider, pod).provider_id
        assert server(admin, server_id)["OS-EXT-SRV-ATTR:host"] == first
        # Running: a pod for the same VM on the other node moves it there (live migration).
        moved = make_pod(
            unique("move"), openstack_env.node(second), identity=pod.identity, keep=True
        )
        assert provider.create(moved).provider_id == server_id
        status = wait_running(provider, moved)
        assert status.actual_node_name == openstack_env.node(second)
        nova = server(admin, server_id)
        assert nova["OS-EXT-SRV-ATTR:host"] == second
        assert nova["metadata"]["vmlet-pod"] == moved.ref.name
        # The first pod lost its VM; deleting it leaves the VM alone.
        provider.delete(pod)
        assert server(admin, server_id)["status"] == "ACTIVE"
        # Stopped: the next pod on the first node moves it back (cold migration + confirm).
        provider.delete(moved)
        assert server(admin, server_id)["status"] == "SHUTOFF"
        back = make_pod(unique("move"), openstack_env.node(first), identity=pod.identity, keep=True)
        provider.create(back)
        status = wait_running(provider, back)
        nova = server(admin, server_id)
        assert nova["OS-EXT-SRV-ATTR:host"] == first
        assert status.actual_node_name == openstack_env.node(first)
        actions = admin.compute.get(
            f"/servers/{server_id}/os-instance-actions", microversion=MV
        ).json()["instanceActions"]
        kinds = {a["action"] for a in actions}
        assert "live-migration" in kinds and "migrate" in kinds, kinds
        assert [s["id"] for s in servers_of(admin, pod.identity)] == [server_id]


def _upload_snapshot(admin: Any, image_id: str) -> None:
    """Uploads bytes into a snapshot image, as a real hypervisor's snapshot would; nova's fake
    driver uploads nothing and leaves the image queued."""
    image = admin.image.get(f"/images/{image_id}").json()
    patch = [
        {"op": "add" if image.get(key) is None else "replace", "path": f"/{key}", "value": value}
        for key, value in (("disk_format", "raw"), ("container_format", "bare"))
    ]
    resp = admin.image.patch(
        f"/images/{image_id}",
        json=patch,
        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
    )
    openstack.exceptions.raise_from_response(resp)
    resp = admin.image.put(
        f"/images/{image_id}/file",
        data=b"vmlet snapshot\n" + bytes(4096),
        headers={"Content-Type": "application/octet-stream"},
    )
    openstack.exceptions.raise_from_response(resp)


def test_snapshot_and_restore(provider: Provider, openstack_env: Cloudside, admin: Any) -> None:
    pod = make_pod(unique("snap"), openstack_env.node(openstack_env.compute_hosts[0]), keep=True)
    vms = provider.vms
    with destroyed_after(provider, pod.identity):
        provider.create(pod)
        server_id = wait_running(provider, pod).provider_id
        original_image = server(admin, server_id)["image"]["id"]
        request = virtual_machine_service_pb2.CreateSnapshotRequest(
            identity=pod.identity, name="backup-1", description="before the upgrade"
        )
        snapshot = vms.CreateSnapshot(request, timeout=OP_TIMEOUT).snapshot
        assert snapshot.name == "backup-1" and snapshot.kind == "glance-image"
        assert snapshot.identity == pod.identity
        assert snapshot.description == "before the upgrade"
        # Idempotent by name.
        assert vms.CreateSnapshot(request, timeout=OP_TIMEOUT).snapshot.id == snapshot.id
        listed = vms.ListSnapshots(
            virtual_machine_service_pb2.ListSnapshotsRequest(identity=pod.identity), timeout=60
        ).snapshots
        assert [s.id for s in listed] == [snapshot.id]
        image = admin.image.get(f"/images/{snapshot.id}").json()
        assert image["vmlet-identity"] == pod.identity
        assert image.get("instance_uuid") == server_id
        revert = virtual_machine_service_pb2.RevertToSnapshotRequest(
            identity=pod.identity, snapshot_id=snapshot.id
        )
        if image["status"] != "active":
            with pytest.raises(grpc.RpcError) as caught:
                vms.RevertToSnapshot(revert, timeout=60)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            _upload_snapshot(admin, snapshot.id)
            eventually(
                lambda: admin.image.get(f"/images/{snapshot.id}").json()["status"] == "active",
                what="snapshot image active",
            )
        vms.RevertToSnapshot(revert, timeout=OP_TIMEOUT)
        nova = server(admin, server_id)
        assert nova["id"] == server_id
        assert nova["image"]["id"] == snapshot.id != original_image
        assert nova["status"] == "ACTIVE"
        assert nova["metadata"]["vmlet-identity"] == pod.identity
        wait_running(provider, pod)
        delete = virtual_machine_service_pb2.DeleteSnapshotRequest(
            identity=pod.identity, snapshot_id=snapshot.id
        )
        vms.DeleteSnapshot(delete, timeout=60)
        vms.DeleteSnapshot(delete, timeout=60)  # unknown now: still fine
        assert admin.image.get(f"/images/{snapshot.id}").status_code == 404


def test_concurrent_duplicate_creates_make_one_server(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    pod = make_pod(unique("dup"), openstack_env.node(openstack_env.compute_hosts[1]))
    with destroyed_after(provider, pod.identity):
        with ThreadPoolExecutor(10) as pool:
            statuses = list(pool.map(lambda _: provider.create(pod, timeout=300), range(10)))
        ids = {s.provider_id for s in statuses}
        assert len(ids) == 1 and "" not in ids
        wait_running(provider, pod)
        found = servers_of(admin, pod.identity)
        assert [s["id"] for s in found] == list(ids)


def test_two_servers_of_one_identity_are_reduced_to_the_oldest(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    """What a create racing the retry of a killed provider would leave: two servers carrying one
    identity. The next look-up keeps the oldest and deletes the other."""
    host = openstack_env.compute_hosts[0]
    pod = make_pod(unique("twin"), openstack_env.node(host))
    image = admin.image.get("/images", params={"name": openstack_env.image_name}).json()["images"][
        0
    ]
    flavor = next(
        f
        for f in admin.compute.get("/flavors/detail", microversion=MV).json()["flavors"]
        if f["name"] == "m1.tiny"
    )
    vmlet = openstack_env.vmlet()
    made: list[str] = []
    with destroyed_after(provider, pod.identity):
        for _ in range(2):
            body = {
                "name": f"twin-{len(made)}",
                "imageRef": image["id"],
                "flavorRef": flavor["id"],
                "networks": "none",
                "metadata": {"vmlet-identity": pod.identity},
                "tags": ["vmlet", f"vmlet-id-{pod.identity}"],
            }
            resp = vmlet.compute.post("/servers", json={"server": body}, microversion=MV)
            openstack.exceptions.raise_from_response(resp)
            made.append(resp.json()["server"]["id"])
            time.sleep(1.1)  # created a second apart: the first is the oldest
        status = provider.create(pod)
        assert status.provider_id == made[0]
        eventually(
            lambda: [s["id"] for s in servers_of(admin, pod.identity)] == made[:1],
            timeout=OP_TIMEOUT,
            what="the younger twin deleted",
        )
        wait_running(provider, pod)


def test_logs_stats_and_what_is_not_served(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    host = openstack_env.compute_hosts[0]
    pod = make_pod(unique("logs"), openstack_env.node(host))
    with destroyed_after(provider, pod.identity):
        provider.create(pod)
        wait_running(provider, pod)

        def logs(**kwargs: Any) -> list[str]:
            request = kubelet_endpoint_service_pb2.GetContainerLogsRequest(
                namespace=NAMESPACE, pod_name=pod.ref.name, container_name="vm", **kwargs
            )
            return [
                r.line.decode() for r in provider.endpoints.GetContainerLogs(request, timeout=60)
            ]

        # nova's fake driver has a fixed console.
        assert logs() == ["FAKE CONSOLE OUTPUT", "ANOTHER", "LAST LINE"]
        assert logs(tail_lines=1) == ["LAST LINE"]
        followed = provider.endpoints.GetContainerLogs(
            kubelet_endpoint_service_pb2.GetContainerLogsRequest(
                namespace=NAMESPACE, pod_name=pod.ref.name, follow=True
            ),
            timeout=30,
        )
        stream = Recorder(followed)
        try:
            for text in ("FAKE CONSOLE OUTPUT", "ANOTHER", "LAST LINE"):
                line = stream.wait(lambda r: True, timeout=20, what=text)
                assert line.line.decode() == text
            time.sleep(2)  # polled again meanwhile: nothing new on the console, nothing sent
            assert stream.items.empty()
            assert stream.thread.is_alive()  # still following
        finally:
            stream.close()
        tail = Recorder(
            provider.endpoints.GetContainerLogs(
                kubelet_endpoint_service_pb2.GetContainerLogsRequest(
                    namespace=NAMESPACE, pod_name=pod.ref.name, follow=True, tail_lines=1
                ),
                timeout=30,
            )
        )
        try:
            assert tail.wait(lambda r: True, timeout=20, what="tail").line == b"LAST LINE"
            time.sleep(2)
            assert tail.items.empty()  # the lines before the tail are not sent on a later poll
        finally:
            tail.close()
        stats = provider.endpoints.GetStatsSummary(
            kubelet_endpoint_service_pb2.GetStatsSummaryRequest(node_name=openstack_env.node(host)),
            timeout=60,
        )
        assert stats.node_memory.usage_bytes > 0
        names = [p.ref.name for p in stats.pods]
        assert pod.ref.name in names
        assert next(p for p in stats.pods if p.ref.name == pod.ref.name).start_time.seconds > 0

        start = kubelet_endpoint_service_pb2.ExecRequest(
            start=kubelet_endpoint_service_pb2.ExecStart(
                namespace=NAMESPACE, pod_name=pod.ref.name, command=["true"], stdout=True
            )
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(provider.endpoints.Exec(iter([start]), timeout=30))
        # A server with no network has no address for SSH: the exec says so.
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no IP yet" in (caught.value.details() or "")
        # Disks are Cinder volumes (tests/test_openstack_disks.py); their refusals are statuses.
        with pytest.raises(grpc.RpcError) as caught:
            provider.vms.CreateDisk(
                virtual_machine_service_pb2.CreateDiskRequest(
                    name="d", size_bytes=2**30, parameters={"datastore": "x"}
                ),
                timeout=30,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown StorageClass parameters ['datastore']" in (caught.value.details() or "")
        missing = "00000000-0000-0000-0000-000000000000"
        with pytest.raises(grpc.RpcError) as caught:
            provider.vms.GetDisk(virtual_machine_service_pb2.GetDiskRequest(handle=missing))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "not found in Cinder" in (caught.value.details() or "")
        provider.vms.DeleteDisk(virtual_machine_service_pb2.DeleteDiskRequest(handle=missing))


def _compute_service(admin: Any, host: str) -> str:
    resp = admin.compute.get(
        "/os-services", params={"binary": "nova-compute", "host": host}, microversion=MV
    )
    openstack.exceptions.raise_from_response(resp)
    service_id: str = resp.json()["services"][0]["id"]
    return service_id


def test_a_compute_service_down_makes_its_node_not_ready(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    host = openstack_env.compute_hosts[1]
    node = openstack_env.node(host)
    service_id = _compute_service(admin, host)

    def force_down(down: bool) -> None:
        resp = admin.compute.put(
            f"/os-services/{service_id}", json={"forced_down": down}, microversion=MV
        )
        openstack.exceptions.raise_from_response(resp)

    stream = Recorder(
        provider.nodes.NotifyNodeStatus(node_provider_service_pb2.NotifyNodeStatusRequest())
    )
    try:
        stream.wait(lambda u: u.node.name == node, timeout=30, what="initial node")
        force_down(True)
        update = stream.wait(
            lambda u: u.node.name == node and u.node.conditions[0].status != TRUE,
            timeout=60,
            what="node pushed NotReady",
        )
        ready_condition = update.node.conditions[0]
        assert ready_condition.status == pod_pb2.CONDITION_STATUS_FALSE
        assert ready_condition.reason == "ComputeServiceForcedDown"
        other = openstack_env.node(openstack_env.compute_hosts[0])
        listed = {n.name: n for n in provider.list_nodes()}
        assert listed[other].conditions[0].status == TRUE  # only that host's node
    finally:
        force_down(False)
    stream.wait(
        lambda u: u.node.name == node and u.node.conditions[0].status == TRUE,
        timeout=60,
        what="node pushed Ready again",
    )
    stream.close()


def test_error_server_fault_becomes_the_pods_reason(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    host = openstack_env.compute_hosts[1]
    node = openstack_env.node(host)
    service_id = _compute_service(admin, host)

    def set_status(status: str) -> None:
        body: dict[str, Any] = {"status": status}
        if status == "disabled":
            body["disabled_reason"] = "vmlet test maintenance"
        resp = admin.compute.put(f"/os-services/{service_id}", json=body, microversion=MV)
        openstack.exceptions.raise_from_response(resp)

    stream = Recorder(
        provider.nodes.NotifyNodeStatus(node_provider_service_pb2.NotifyNodeStatusRequest())
    )
    pod = make_pod(unique("fault"), node)
    try:
        set_status("disabled")
        update = stream.wait(
            lambda u: u.node.name == node and u.node.unschedulable,
            timeout=60,
            what="node pushed unschedulable",
        )
        assert "vmlet test maintenance" in update.node.conditions[0].message
        with destroyed_after(provider, pod.identity):
            provider.create(pod)

            def failed() -> pod_pb2.PodStatus | None:
                status = provider.status(pod)
                return status if status.phase == pod_pb2.POD_PHASE_FAILED else None

            status = eventually(failed, timeout=OP_TIMEOUT, what="pod failed")
            assert status.reason == "NoValidHost", (status.reason, status.message)
            assert "No valid host" in status.message
            assert servers_of(admin, pod.identity)[0]["status"] == "ERROR"
    finally:
        set_status("enabled")
    stream.wait(
        lambda u: u.node.name == node and not u.node.unschedulable,
        timeout=60,
        what="node pushed schedulable again",
    )
    stream.close()


def test_sigkill_mid_create_then_restart_makes_one_server(
    openstack_env: Cloudside, admin: Any, tmp_path: Path
) -> None:
    first = start_provider(openstack_env, tmp_path / "first")
    pod = make_pod(unique("kill"), openstack_env.node(openstack_env.compute_hosts[0]))
    outcome: list[Any] = []

    def create() -> None:
        try:
            outcome.append(first.create(pod, timeout=120))
        except grpc.RpcError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=create, daemon=True)
    caller.start()
    # Kill it the moment it has decided to create and is asking Nova (its log says so just
    # before the POST): the request is on its way, the answer is not back.
    log = first.process.log_path
    wait_for(
        lambda: f'"creating server" pod={NAMESPACE}/{pod.ref.name}' in log.read_text(),
        timeout=120,
        interval=0.01,
        what="the provider asking Nova for the server",
    )
    time.sleep(0.05)
    first.process.kill()
    caller.join(30)
    assert not outcome or isinstance(outcome[0], grpc.RpcError), "CreatePod answered"
    # Nova finishes the orphaned request on its own (most of the time: the kill may also have
    # come before the request left).
    with contextlib.suppress(AssertionError):
        eventually(lambda: servers_of(admin, pod.identity), timeout=30, what="orphan server")
    orphans = [s["id"] for s in servers_of(admin, pod.identity)]
    print(f"servers after the kill: {orphans}")
    second = start_provider(openstack_env, tmp_path / "second")
    try:
        with destroyed_after(second, pod.identity):
            status = second.create(pod)
            made = servers_of(admin, pod.identity)
            assert [s["id"] for s in made] == [status.provider_id]
            if orphans:
                assert status.provider_id == orphans[0]  # found, not made again
            wait_running(second, pod)
            time.sleep(3)  # a few more polls: still one
            assert [s["id"] for s in servers_of(admin, pod.identity)] == [status.provider_id]
            # The pod is known to the new process (adopted from the server's metadata, then
            # claimed again by CreatePod).
            listed = second.pods.GetPods(pod_lifecycle_service_pb2.GetPodsRequest(), timeout=60)
            assert pod.ref.name in {p.pod.ref.name for p in listed.pods}
    finally:
        second.stop()
        first.stop()


def test_nova_api_outage_is_unavailable_then_recovers(
    openstack_env: Cloudside, admin: Any, tmp_path: Path
) -> None:
    provider = start_provider(openstack_env, tmp_path / "outage")
    stream = Recorder(
        provider.nodes.NotifyNodeStatus(node_provider_service_pb2.NotifyNodeStatusRequest())
    )
    node = openstack_env.node(openstack_env.compute_hosts[0])
    pod = make_pod(unique("outage"), node)
    try:
        stream.wait(lambda u: u.node.name == node, timeout=30, what="initial node")
        eventually(lambda: provider.health() == (SERVING, SERVING), what="ready")
        openstack_env.stop_nova_api()
        try:

            def unavailable() -> bool:
                try:
                    provider.ping()
                except grpc.RpcError as exc:
                    return bool(exc.code() == grpc.StatusCode.UNAVAILABLE)
                return False

            eventually(unavailable, timeout=60, what="Ping UNAVAILABLE")
            # Alive (the process works), not ready (Nova does not answer).
            eventually(lambda: provider.health() == (SERVING, NOT_SERVING), what="not ready")
            with pytest.raises(grpc.RpcError) as caught:
                provider.create(pod, timeout=60)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert caught.value.details()
            update = stream.wait(
                lambda u: u.node.name == node and u.node.conditions[0].status == UNKNOWN,
                timeout=60,
                what="node Ready=Unknown",
            )
            assert update.node.conditions[0].reason == "OpenStackUnreachable"
            listed = {n.name: n for n in provider.list_nodes()}
            assert listed[node].conditions[0].status == UNKNOWN
            provider.process.check_alive()
        finally:
            openstack_env.start_nova_api()
        eventually(provider.ping, timeout=120, what="Ping answers again")
        eventually(lambda: provider.health() == (SERVING, SERVING), what="ready again")
        stream.wait(
            lambda u: u.node.name == node and u.node.conditions[0].status == TRUE,
            timeout=60,
            what="node Ready=True again",
        )
        with destroyed_after(provider, pod.identity):
            provider.create(pod)
            wait_running(provider, pod)
            assert len(servers_of(admin, pod.identity)) == 1
    finally:
        stream.close()
        provider.stop()
