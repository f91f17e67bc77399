"""cinder-volume's backend in the env: Cinder's fake driver, keeping each volume as a sparse file.

Loaded by the real cinder-volume (``volume_driver = vmlet_cinder_backend.SparseFileDriver``) from
a copy in the env's state dir, under the OpenStack virtualenv's Python; vmlet never imports it.
Cinder's ``FakeLoggingVolumeDriver`` answers exports and connections the way Nova's fake
hypervisor expects; its fake volume group cannot extend, and keeps nothing. This driver keeps
``VMLET_CINDER_VOLUMES_DIR/volume-<id>``, a sparse file of the volume's size: created, grown and
removed with the volume.
"""

from __future__ import annotations

import os
from typing import Any

from cinder.tests.fake_driver import FakeLoggingVolumeDriver

_GIB = 1024**3


def _path(volume: Any) -> str:
    return os.path.join(os.environ["VMLET_CINDER_VOLUMES_DIR"], str(volume["name"]))


def _size_file(volume: Any, size_gib: int) -> None:
    with open(_path(volume), "ab") as f:
        f.truncate(int(size_gib) * _GIB)


class SparseFileDriver(FakeLoggingVolumeDriver):  # type: ignore[misc]
    """The fake driver, with a sparse file of the volume's size per volume."""

    def create_volume(self, volume: Any) -> Any:
        update = super().create_volume(volume)
        _size_file(volume, volume["size"])
        return update

    def create_cloned_volume(self, volume: Any, src_vref: Any) -> None:
        _size_file(volume, volume["size"])

    def create_volume_from_snapshot(self, volume: Any, snapshot: Any) -> None:
        _size_file(volume, volume["size"])

    def extend_volume(self, volume: Any, new_size: int) -> None:
        _size_file(volume, new_size)

    def delete_volume(self, volume: Any) -> None:
        try:
            os.unlink(_path(volume))
        except FileNotFoundError:
            pass
