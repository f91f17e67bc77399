"""Unit tests of the user data a pod's server boots with: the body CreatePod sends Nova, over fakes
of Nova, the server cache, the node book and the catalog."""

from __future__ import annotations

import base64
import email
import json
from types import SimpleNamespace
from typing import Any, cast

import pytest

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import InvalidArgument
from vmlet_openstack.catalog import Catalog
from vmlet_openstack.cloud import Cloud
from vmlet_openstack.config import Settings
from vmlet_openstack.nodes import NodeBook
from vmlet_openstack.pods import Pods, server_user_data
from vmlet_openstack.records import FlavorRecord, ServerRecord
from vmlet_openstack.watch import ServerCache, Watch

_LIMIT_MESSAGE = "the user data is larger than Nova's 64 KiB (base64) limit"


class _Nova:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def list_servers(self, **query: Any) -> tuple[list[dict[str, Any]], None]:
        return [], None

    def create_server(self, body: dict[str, Any]) -> str:
        self.bodies.append(body)
        return f"server-{len(self.bodies)}"


class _Cloud:
    def __init__(self) -> None:
        self.nova = _Nova()

    async def call(self, doing: str, fn: Any, *, read: bool = False) -> Any:
        return fn(self.nova)


class _Cache:
    by_id: dict[str, ServerRecord] = {}

    def server_of(self, identity: str) -> ServerRecord | None:
        return None


class _Watch:
    async def refresh_one(self, server_id: str) -> None:
        return None


class _Nodes:
    async def host_for(self, node_name: str) -> str:
        return "compute-1"

    def node_of(self, host: str) -> str:
        return "node-1"

    def host_ip(self, host: str | None) -> str:
        return ""


class _Catalog:
    async def flavor_for(self, demand: Any) -> FlavorRecord:
        return FlavorRecord("1", "m1.tiny", 1, 512, 1)

    async def image_id(self, ref: str) -> str:
        return "image-1"


def _pods() -> tuple[Pods, _Nova]:
    cloud = _Cloud()
    settings = SimpleNamespace(networks_none=True, networks_auto=False, network="")
    pods = Pods(
        cast(Cloud, cloud), cast(ServerCache, _Cache()), cast(Watch, _Watch()),
        cast(NodeBook, _Nodes()), cast(Catalog, _Catalog()), cast(Settings, settings),
    )  # fmt: skip
    return pods, cloud.nova


def _pod(user_data: str = "", command: tuple[str, ...] = ()) -> pod_pb2.Pod:
    return pod_pb2.Pod(
        ref=pod_pb2.PodRef(namespace="ns", name="vm-0", uid="u-1"),
        identity="id-1",
        node_name="node-1",
        user_data=user_data,
        containers=[
            pod_pb2.Container(name="vm", image="openstack:image/cirros", command=command)
        ],
    )


def _decoded(body: dict[str, Any]) -> str:
    return base64.b64decode(body["user_data"]).decode()


async def test_create_sends_nova_the_user_data_with_the_first_boot_commands() -> None:
    pods, nova = _pods()
    pod = _pod("#!/bin/sh\necho mine\n", ("touch", "/tmp/booted"))
    pod.init_containers.add(name="prep", command=["mkdir", "/srv"],
                            env=[pod_pb2.EnvVar(name="A", value="1")])  # fmt: skip
    await pods.create(pod)
    await pods.table.stop()
    (body,) = nova.bodies
    mine, first_boot = cast(list[Any], email.message_from_string(_decoded(body)).get_payload())
    assert mine.get_content_type() == "text/x-shellscript"
    assert mine.get_payload() == "#!/bin/sh\necho mine\n"
    assert json.loads(first_boot.get_payload().partition("\n")[2])["runcmd"] == [
        ["sh", "-c", '. "$0" && exec "$@"', "/run/vmlet/first-boot/prep.env", "mkdir", "/srv"],
        ["touch", "/tmp/booted"],
    ]


async def test_create_without_commands_sends_the_user_data_unchanged_or_none() -> None:
    pods, nova = _pods()
    await pods.create(_pod("#cloud-config\nhostname: a\n"))
    other = _pod()
    other.ref.name, other.identity = "vm-1", "id-2"
    await pods.create(other)
    await pods.table.stop()
    assert _decoded(nova.bodies[0]) == "#cloud-config\nhostname: a\n"
    assert "user_data" not in nova.bodies[1]


async def test_the_limit_applies_to_the_composed_user_data() -> None:
    fits = "#!/bin/sh\n" + "#" * (49_000 - 11) + "\n"  # 49,000 bytes: 65,336 in base64
    assert server_user_data(_pod(fits)) == base64.b64encode(fits.encode()).decode()
    pods, nova = _pods()
    with pytest.raises(InvalidArgument) as err:
        await pods.create(_pod(fits, ("echo", "x" * 200)))
    assert err.value.message == _LIMIT_MESSAGE
    assert nova.bodies == [] and pods.entries() == []
