"""The OpenStack provider on a real OpenStack, for the tests that call it over gRPC and look at
Nova as the admin (tests/test_openstack_provider*.py): the OpenStack (`Cloudside`: the run's one,
tests/conftest.py's `openstack_cloud`, or the one VMLET_OPENSTACK_FACTS names), the provider's
process and client, its pods, and Nova as the admin sees it."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import openstack
import openstack.exceptions
import pytest

from tests import providerprocess
from tests.providerprocess import Provider
from vmlet.provider.v1 import pod_pb2
from vmlet_conformance import PodFailed, ready
from vmlet_localenv.openstack.client import sdk_connection
from vmlet_localenv.processes import wait_for

__all__ = ["MV", "NAMESPACE", "OP_TIMEOUT", "Cloudside", "Provider", "Recorder", "admin",
           "eventually", "make_pod", "openstack_env", "provider", "server", "servers_of",
           "start_provider", "unique", "upload_snapshot", "wait_ready"]

T = TypeVar("T")
NAMESPACE = "vmlet-test"
MV = "2.79"
OP_TIMEOUT = 300.0


# The OpenStack.


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
    _frozen: bool = False

    @classmethod
    def of(cls, facts: dict[str, Any]) -> Cloudside:
        """The OpenStack whose facts (`vmlet_localenv.openstack.OpenStackEnv.facts`) are
        ``facts``."""
        return cls(
            clouds_yaml=Path(facts["clouds_yaml"]),
            compute_hosts=tuple(facts["compute_hosts"]),
            image_name=facts["image"]["name"],
            state_dir=Path(facts["state_dir"]),
            nova_api_pid=int(facts["pids"]["nova-api"]),
            nova_url=facts["endpoints"]["compute"].split("/v2")[0] + "/",
        )

    def admin(self) -> Any:
        return self._connect("vmlet-admin")

    def vmlet(self) -> Any:
        """The provider's own user, for servers made behind its back."""
        return self._connect("vmlet")

    def _connect(self, name: str) -> Any:
        return sdk_connection(self.clouds_yaml, name)

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


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status) < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


@pytest.fixture(scope="module")
def openstack_env(openstack_cloud: dict[str, Any]) -> Iterator[Cloudside]:
    """The run's OpenStack (tests/conftest.py), as this module's `Cloudside`."""
    side = Cloudside.of(openstack_cloud)
    try:
        yield side
    finally:
        side.close()


@pytest.fixture(scope="module")
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


# The provider.


def start_provider(openstack_env: Cloudside, workdir: Path, *extra: str) -> Provider:
    """`python -m vmlet_openstack` as the vmlet user of ``openstack_env``, polling often."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_CLIENT_CONFIG_FILE=str(openstack_env.clouds_yaml), OS_CLOUD="vmlet")
    return providerprocess.start_provider(
        "vmlet_openstack", workdir, env,
        "--poll-seconds", "1", "--fast-poll-seconds", "0.5", "--node-poll-seconds", "2",
        "--api-timeout-seconds", "10", "--log-poll-seconds", "0.5",
        "--operation-timeout-seconds", str(int(OP_TIMEOUT)), *extra,
        image=f"openstack:image/{openstack_env.image_name}", namespace=NAMESPACE,
        timeout=OP_TIMEOUT,
    )  # fmt: skip


def eventually(check: Callable[[], T | None], *, timeout: float = 60, what: str = "it") -> T:
    """Calls ``check`` until it returns something true without raising; returns that."""
    return providerprocess.eventually(
        check, timeout=timeout, what=what,
        also=(KeyError, openstack.exceptions.SDKException))  # fmt: skip


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


# Pods.


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


def wait_ready(
    provider: Provider, pod: pod_pb2.Pod, timeout: float = OP_TIMEOUT
) -> pod_pb2.PodStatus:
    """Waits until ``pod`` is Running and Ready; fails at once when it fails."""

    def check() -> pod_pb2.PodStatus | None:
        status = provider.status(pod)
        if status.phase == pod_pb2.POD_PHASE_FAILED:
            raise PodFailed(f"pod {pod.ref.name}: {status.reason}: {status.message}")
        return status if ready(status) else None

    return eventually(check, timeout=timeout, what=f"pod {pod.ref.name} running and ready")


def upload_snapshot(admin: Any, image_id: str) -> None:
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
