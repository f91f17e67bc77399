"""--state-file: what was acknowledged survives a restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as pl
from vmlet.provider.v1 import pod_pb2
from vmlet.provider.v1 import virtual_machine_service_pb2 as vms
from vmlet_memory.cloud import CloudOptions
from vmlet_memory.testing import make_pod, running_provider

pytestmark = pytest.mark.timeout(60)


async def test_pods_kept_vms_disks_and_snapshots_survive_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    async with running_provider(state_file=state) as mp:
        running = (await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=make_pod("web")))).status
        kept = make_pod("vm-k", identity="vm-k", keep_on_delete=True, node="vmlet-memory-1")
        kept_ip = (await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=kept))).status.pod_ip
        await mp.vms.CreateSnapshot(vms.CreateSnapshotRequest(identity="vm-k", name="s1"))
        await mp.lifecycle.DeletePod(pl.DeletePodRequest(pod=kept))
        disk = (await mp.disks.CreateDisk(vms.CreateDiskRequest(name="pv", size_bytes=10))).disk
        # Acknowledged means written: the file already holds all of it.
        saved = json.loads(state.read_text())
        assert len(saved["machines"]) == 2 and len(saved["disks"]) == 1

    async with running_provider(state_file=state) as mp:
        pods = (await mp.lifecycle.GetPods(pl.GetPodsRequest())).pods
        assert [p.pod.ref.name for p in pods] == ["web"]
        status = pods[0].status
        assert status.phase == pod_pb2.POD_PHASE_RUNNING
        assert (status.pod_ip, status.provider_id) == (running.pod_ip, running.provider_id)
        assert mp.provider.cloud.hosts["vmlet-memory-0"].used_pods == 1
        snaps = (await mp.vms.ListSnapshots(vms.ListSnapshotsRequest(identity="vm-k"))).snapshots
        assert [s.name for s in snaps] == ["s1"]
        again = make_pod("vm-k2", identity="vm-k", node="vmlet-memory-1")
        revived = (await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=again))).status
        assert revived.pod_ip == kept_ip
        # A new pod does not get an address already in use.
        fresh = (await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=make_pod("new")))).status
        assert fresh.pod_ip not in {running.pod_ip, kept_ip}
        same = (await mp.disks.CreateDisk(vms.CreateDiskRequest(name="pv", size_bytes=10))).disk
        assert same.handle == disk.handle


async def test_a_pending_pod_powers_on_after_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    options = CloudOptions(start_delay_seconds=0.2)
    async with running_provider(options, state_file=state) as mp:
        await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=make_pod("slow")))
    async with running_provider(options, state_file=state) as mp:
        for _ in range(40):
            reply = await mp.lifecycle.GetPodStatus(
                pl.GetPodStatusRequest(namespace="default", name="slow")
            )
            if reply.status.phase == pod_pb2.POD_PHASE_RUNNING:
                break
            await asyncio.sleep(0.05)
        assert reply.status.phase == pod_pb2.POD_PHASE_RUNNING


async def test_bursts_of_changes_are_batched(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    async with running_provider(state_file=state) as mp:
        writes = 0
        store = mp.provider.state_file
        assert store is not None
        original = store._snapshot

        def counting() -> dict[str, Any]:
            nonlocal writes
            writes += 1
            state: dict[str, Any] = original()
            return state

        store._snapshot = counting
        await asyncio.gather(
            *(
                mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=make_pod(f"p{i}")))
                for i in range(100)
            )
        )
        assert len(json.loads(state.read_text())["machines"]) == 100
        assert writes < 100
