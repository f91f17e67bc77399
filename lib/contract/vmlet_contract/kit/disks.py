"""DiskService: disks by handle, and the deprecated disk RPCs of VirtualMachineService.

A provider's IaaS disk class is the backend as it is: the kit calls `create`, `delete`,
`expand` and `get`. The request bounds (name, size, parameters) are checked before, in the
interceptor; a disk that is not there is `NotFound` (deleting it succeeds), an attached one
`FailedPrecondition` to delete, a smaller size `InvalidArgument` to expand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from vmlet.provider.v1 import disk_service_pb2_grpc as pb_grpc
from vmlet.provider.v1 import virtual_machine_service_pb2 as pb

__all__ = ["DiskBackend", "DiskServicer"]


class DiskBackend(Protocol):
    """Disks, named by the handle the backend gives each at creation."""

    async def create(self, name: str, size_bytes: int, parameters: Mapping[str, str]) -> pb.Disk:
        """Makes (or finds, by name) a disk; its name and size are within the request bounds."""
        ...

    async def delete(self, handle: str) -> None:
        """Deletes a detached disk; an unknown one succeeds."""
        ...

    async def expand(self, handle: str, size_bytes: int) -> pb.Disk:
        """Grows a disk to `size_bytes`."""
        ...

    async def get(self, handle: str) -> pb.Disk:
        """The disk `handle`."""
        ...


class DiskServicer(pb_grpc.DiskServiceServicer):
    """DiskService over a `DiskBackend`; `VirtualMachineServicer` serves its deprecated disk
    RPCs with the same methods."""

    def __init__(self, backend: DiskBackend) -> None:
        self._backend = backend

    async def CreateDisk(
        self, request: pb.CreateDiskRequest, context: Any
    ) -> pb.CreateDiskResponse:
        disk = await self._backend.create(
            request.name, request.size_bytes, dict(request.parameters)
        )
        return pb.CreateDiskResponse(disk=disk)

    async def DeleteDisk(
        self, request: pb.DeleteDiskRequest, context: Any
    ) -> pb.DeleteDiskResponse:
        await self._backend.delete(request.handle)
        return pb.DeleteDiskResponse()

    async def ExpandDisk(
        self, request: pb.ExpandDiskRequest, context: Any
    ) -> pb.ExpandDiskResponse:
        disk = await self._backend.expand(request.handle, request.size_bytes)
        return pb.ExpandDiskResponse(disk=disk)

    async def GetDisk(self, request: pb.GetDiskRequest, context: Any) -> pb.GetDiskResponse:
        return pb.GetDiskResponse(disk=await self._backend.get(request.handle))
