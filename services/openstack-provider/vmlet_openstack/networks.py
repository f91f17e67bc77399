"""The Neutron networks a server boots on: the pod's own, in order, else the --network default.

A pod that names networks (a VirtualMachine's spec.networks, the `vmlet.io/networks`
annotation) gets one port on each, in the order given: Nova's `networks: [{"uuid": ...}, ...]`
at create, so the first is the server's first NIC and its primary address. A name is a Neutron
network's name or ID as the provider's project sees it (its own networks, shared and external
ones). A name no network has, or one several networks share, refuses the create with
FAILED_PRECONDITION (the IaaS lacks what the pod names: the facade retries, so a network made
later is found), naming the networks there are (or the IDs to choose from); nothing is made. A
pod without networks boots as --network says (`none` by default: no port).

Names resolve to IDs once per half minute, so a network made or deleted meanwhile is seen soon.
The pod's networks count at create only: a server already there keeps its ports.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final

from openstack import exceptions as sdk

from vmlet_contract import FailedPrecondition

from .cloud import Api, Cloud
from .sizing import looks_like_id

__all__ = ["Networks"]

_TTL: Final = 30.0
_LISTED: Final = 20  # names shown in an "unknown network" message


def _visible(api: Api, params: dict[str, Any]) -> list[dict[str, Any]]:
    resp = api.conn.network.get("/networks", params={**params, "fields": ["id", "name"]})
    sdk.raise_from_response(resp)
    networks: list[dict[str, Any]] = resp.json().get("networks", [])
    return networks


def _matches(api: Api, ref: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The networks `ref` names (by ID, else by name) and, when none, every visible name."""
    if looks_like_id(ref):
        found = _visible(api, {"id": ref})
        if found:
            return found, []
    found = _visible(api, {"name": ref})
    if found:
        return found, []
    return [], sorted({str(n.get("name") or n["id"]) for n in _visible(api, {})})


class Networks:
    """Resolves pods' network names to Neutron network IDs, with a short cache."""

    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud
        self._ids: dict[str, tuple[float, str]] = {}

    async def boot_networks(self, names: Sequence[str]) -> list[dict[str, str]]:
        """Nova's `networks` for a server with a port on each of `names`, in order."""
        return [{"uuid": network_id} for network_id in await self.ids(names)]

    async def ids(self, names: Sequence[str]) -> list[str]:
        """The IDs of the networks `names` name, in order."""
        return [await self._id(name) for name in names]

    async def _id(self, ref: str) -> str:
        cached = self._ids.get(ref)
        if cached is not None and time.monotonic() - cached[0] < _TTL:
            return cached[1]
        found, names = await self._cloud.call(
            f"find network {ref}", lambda a: _matches(a, ref), read=True
        )
        if not found:
            shown = ", ".join(names[:_LISTED]) + (", ..." if len(names) > _LISTED else "")
            raise FailedPrecondition(
                f"network {ref!r} not found in Neutron; the networks there are: "
                f"{shown or '(none)'}"
            )
        if len(found) > 1:
            ids = ", ".join(sorted(str(n["id"]) for n in found))
            raise FailedPrecondition(
                f"network name {ref!r} is ambiguous: {len(found)} networks have it ({ids}); "
                "name one by ID"
            )
        network_id = str(found[0]["id"])
        self._ids[ref] = (time.monotonic(), network_id)
        return network_id
