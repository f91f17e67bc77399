"""The pure parts of `vmlet_openstack.disks` (the rest runs against the real Cinder in
tests/test_openstack_disks.py and tests/test_openstack_provider.py)."""

from __future__ import annotations

import pytest

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import InvalidArgument
from vmlet_openstack.disks import GIB, VolumeRecord, _size_gib, boot_mappings, pod_disk_handles


def _pod(*handles: str) -> pod_pb2.Pod:
    volumes = [
        pod_pb2.Volume(name=f"v{i}", disk=pod_pb2.DiskSource(claim_name=f"c{i}", volume_handle=h))
        for i, h in enumerate(handles)
    ]
    volumes.append(pod_pb2.Volume(name="scratch", scratch=pod_pb2.ScratchSource()))
    return pod_pb2.Pod(volumes=volumes)


def test_pod_disk_handles_in_order_without_repeats() -> None:
    assert pod_disk_handles(_pod("b", "a", "b")) == ("b", "a")
    assert pod_disk_handles(_pod()) == ()


def test_a_disk_without_handle_is_refused_unless_lenient() -> None:
    with pytest.raises(InvalidArgument, match="claim c1"):
        pod_disk_handles(_pod("a", ""))
    assert pod_disk_handles(_pod("a", ""), strict=False) == ("a",)


def test_boot_mappings_spell_out_the_image_and_keep_the_volumes() -> None:
    root, data = boot_mappings("img", ["vol"])
    assert root == {"uuid": "img", "source_type": "image", "destination_type": "local",
                    "boot_index": 0, "delete_on_termination": True}
    assert data["uuid"] == "vol" and data["destination_type"] == "volume"
    assert data["boot_index"] == -1 and data["delete_on_termination"] is False


def test_sizes_round_up_to_whole_gib() -> None:
    assert [_size_gib(n) for n in (1, GIB, GIB + 1, 3 * GIB)] == [1, 1, 2, 3]


def test_volume_record_from_cinder_json() -> None:
    v = VolumeRecord.from_json({
        "id": "v1", "name": "pv-1", "size": 2, "status": "In-Use", "metadata": {"k": 1},
        "attachments": [{"server_id": "s1"}, {"server_id": None}],
        "created_at": "2026-01-01T00:00:00",
    })
    assert (v.id, v.name, v.size_gib, v.status, v.servers) == ("v1", "pv-1", 2, "in-use", ("s1",))
    assert v.metadata == {"k": "1"}
