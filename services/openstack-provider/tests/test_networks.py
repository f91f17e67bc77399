"""Unit tests of the pod network resolution (`vmlet_openstack.networks`) over a fake Neutron
listing, and of the order of a server's addresses as pod IPs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from vmlet_contract import FailedPrecondition
from vmlet_openstack.cloud import Cloud
from vmlet_openstack.networks import Networks
from vmlet_openstack.records import ServerRecord

A = "0a0a0a0a-0000-4000-8000-00000000000a"
B = "0b0b0b0b-0000-4000-8000-00000000000b"
T1 = "0c0c0c0c-0000-4000-8000-0000000000c1"
T2 = "0c0c0c0c-0000-4000-8000-0000000000c2"
NETWORKS = [{"id": A, "name": "net-a"}, {"id": B, "name": "net-b"},
            {"id": T1, "name": "twin"}, {"id": T2, "name": "twin"}]


class _Response:
    status_code = 200
    headers: dict[str, str] = {}

    def __init__(self, body: Any) -> None:
        self._body = body

    def json(self) -> Any:
        return self._body


class _Neutron:
    def __init__(self) -> None:
        self.gets: list[dict[str, Any]] = []

    def get(self, path: str, params: dict[str, Any]) -> _Response:
        assert path == "/networks"
        self.gets.append(params)
        found = [n for n in NETWORKS
                 if all(n[k] == params[k] for k in ("id", "name") if k in params)]
        return _Response({"networks": found})


class _Api:
    def __init__(self, neutron: _Neutron) -> None:
        self.conn = type("Conn", (), {"network": neutron})()


class _Cloud:
    def __init__(self) -> None:
        self.neutron = _Neutron()

    async def call(self, doing: str, fn: Callable[[Any], Any], *, read: bool = False) -> Any:
        return fn(_Api(self.neutron))


def _networks() -> tuple[Networks, _Neutron]:
    cloud = _Cloud()
    return Networks(cast(Cloud, cloud)), cloud.neutron


async def test_names_and_ids_resolve_in_order() -> None:
    nets, _ = _networks()
    assert await nets.boot_networks(["net-b", A]) == [{"uuid": B}, {"uuid": A}]


async def test_unknown_name_lists_the_networks_there_are() -> None:
    nets, _ = _networks()
    with pytest.raises(FailedPrecondition) as err:
        await nets.boot_networks(["net-a", "nope"])
    assert err.value.message == ("network 'nope' not found in Neutron; the networks there are: "
                                 "net-a, net-b, twin")


async def test_shared_name_is_ambiguous_and_names_the_ids() -> None:
    nets, _ = _networks()
    with pytest.raises(FailedPrecondition) as err:
        await nets.ids(["twin"])
    assert "ambiguous" in err.value.message and T1 in err.value.message
    assert T2 in err.value.message
    assert await nets.ids([T2]) == [T2]  # by ID it is one


async def test_resolutions_are_cached() -> None:
    nets, neutron = _networks()
    await nets.ids(["net-a"])
    asked = len(neutron.gets)
    await nets.ids(["net-a", "net-a"])
    assert len(neutron.gets) == asked


def test_pod_ips_follow_the_nics_order() -> None:
    server = ServerRecord.from_json({
        "id": "s1", "name": "n", "status": "ACTIVE", "metadata": {}, "tags": [],
        "addresses": {
            "net-b": [{"version": 4, "addr": "10.0.2.5", "OS-EXT-IPS:type": "fixed"}],
            "net-a": [{"version": 4, "addr": "10.0.1.7", "OS-EXT-IPS:type": "fixed"},
                      {"version": 4, "addr": "172.24.4.9", "OS-EXT-IPS:type": "floating"}],
        },
    })
    assert server.ips == ("10.0.2.5", "10.0.1.7", "172.24.4.9")
