"""Flavors, images and networks by name, cached briefly: they change rarely and every create
needs them.

Flavors are listed once a minute (and again when a named one is missing). Images are looked up
by name or ID in Glance, active ones only, and remembered for half a minute; none (or none
active) is FAILED_PRECONDITION, as a missing template is on vSphere; a name that several images
share is INVALID_ARGUMENT (name the image by ID instead). Networks (for --network names) are looked
up once and kept; a pod's own networks resolve through `networks` (`Catalog.networks`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from vmlet_contract import FailedPrecondition, InvalidArgument, NotFound, ProviderError

from .cloud import Api, Cloud
from .networks import Networks
from .records import FlavorRecord
from .sizing import Demand, choose_flavor, looks_like_id

__all__ = ["Catalog"]

_FLAVOR_TTL: Final = 60.0
_IMAGE_TTL: Final = 30.0


class Catalog:
    """Flavors, images and networks of the cloud, as the provider needs them."""

    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud
        self._flavors: list[FlavorRecord] = []
        self._flavors_at = 0.0
        self._images: dict[str, tuple[float, str]] = {}
        self._networks: dict[str, str] = {}
        self.networks = Networks(cloud)
        self._lock = asyncio.Lock()

    async def flavors(self, *, fresh: bool = False) -> list[FlavorRecord]:
        async with self._lock:
            if fresh or not self._flavors or time.monotonic() - self._flavors_at > _FLAVOR_TTL:
                raw = await self._cloud.call("list flavors", lambda api: api.flavors(), read=True)
                self._flavors = [FlavorRecord.from_json(f) for f in raw]
                self._flavors_at = time.monotonic()
            return list(self._flavors)

    async def flavor_for(self, demand: Demand) -> FlavorRecord:
        """The flavor for `demand` (see `sizing.choose_flavor`), listing anew once when the named
        flavor is not known yet."""
        try:
            return choose_flavor(demand, await self.flavors())
        except InvalidArgument:
            if demand.flavor is None:
                raise
            return choose_flavor(demand, await self.flavors(fresh=True))

    async def image_id(self, ref: str) -> str:
        """The ID of the active Glance image named (or identified by) `ref`."""
        cached = self._images.get(ref)
        if cached is not None and time.monotonic() - cached[0] < _IMAGE_TTL:
            return cached[1]

        def find(api: Api) -> list[dict[str, Any]]:
            if looks_like_id(ref):
                try:
                    image = api.image(ref)
                except Exception as exc:
                    if getattr(exc, "status_code", None) != 404:
                        raise
                else:
                    return [image]
            return api.images({"name": ref})

        found = await self._cloud.call(f"find image {ref}", find, read=True)
        active = [i for i in found if i.get("status") == "active"]
        if not active:
            if found:
                states = ", ".join(sorted({str(i.get("status")) for i in found}))
                raise FailedPrecondition(f"Glance image {ref!r} is not active ({states})")
            raise FailedPrecondition(f"there is no Glance image named {ref!r}")
        if len(active) > 1:
            ids = ", ".join(str(i["id"]) for i in active)
            raise InvalidArgument(
                f"several Glance images are named {ref!r} ({ids}); name one by ID: "
                "openstack:image/<ID>"
            )
        image_id = str(active[0]["id"])
        self._images[ref] = (time.monotonic(), image_id)
        return image_id

    async def network_ids(self, names: tuple[str, ...]) -> list[str]:
        """The IDs of networks named by name or ID."""
        out = []
        for name in names:
            if name not in self._networks:
                self._networks[name] = await self._network_id(name)
            out.append(self._networks[name])
        return out

    async def _network_id(self, name: str) -> str:
        def find(api: Api) -> list[dict[str, Any]]:
            return api.networks(name)

        try:
            found = await self._cloud.call(f"find network {name}", find, read=True)
        except ProviderError as error:
            if isinstance(error, NotFound):
                found = []
            else:
                raise
        if len(found) != 1:
            raise InvalidArgument(
                f"network {name!r} (--network) matches {len(found)} networks; name one by ID"
            )
        return str(found[0]["id"])
