"""Provisioner against the fakes: a claim becomes a disk and a bound volume, a released volume
goes with its disk (Delete) or stays (Retain), a claim that grows grows its disk."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import Background, FakeKube, FakeProvider, fire_retries, settle, until

from vmlet_contract.errors import Unavailable
from vmlet_facade.events import EventRecorder
from vmlet_facade.kube import ApiError
from vmlet_facade.provisioning import Provisioner

Obj = dict[str, Any]
GIB = 2**30
CLASS_PATH = "/apis/storage.k8s.io/v1/storageclasses/fast"
CLAIM_PATH = "/api/v1/namespaces/ns/persistentvolumeclaims/data"
PV_PATH = "/api/v1/persistentvolumes/pvc-claim-uid"


def storage_class(**extra: Any) -> Obj:
    return {"metadata": {"name": "fast"}, "provisioner": "fake.vmlet.io",
            "parameters": {"tier": "ssd"}, "reclaimPolicy": "Delete", **extra}


def claim(size: str = "10Gi", modes: tuple[str, ...] = ("ReadWriteOnce",),
          volume: str = "") -> Obj:
    spec: Obj = {"storageClassName": "fast", "accessModes": list(modes),
                 "resources": {"requests": {"storage": size}}}
    if volume:
        spec["volumeName"] = volume
    return {"metadata": {"name": "data", "namespace": "ns", "uid": "claim-uid"}, "spec": spec,
            "status": {"phase": "Bound" if volume else "Pending"}}


def volume(phase: str = "Bound", policy: str = "Delete", size: str = "10Gi") -> Obj:
    return {"metadata": {"name": "pvc-claim-uid",
                         "annotations": {"pv.kubernetes.io/provisioned-by": "fake.vmlet.io"}},
            "spec": {"capacity": {"storage": size}, "persistentVolumeReclaimPolicy": policy,
                     "csi": {"driver": "fake.vmlet.io", "volumeHandle": "disk-pvc-claim-uid"}},
            "status": {"phase": phase}}


@pytest.fixture
async def provisioner(kube: FakeKube, provider: FakeProvider,
                      background: Background) -> Provisioner:
    return start(kube, provider, background)


def start(kube: FakeKube, provider: FakeProvider, background: Background) -> Provisioner:
    """Run the provisioner with "fake" as its one provider."""
    client = kube.client
    disks = Provisioner(client, {"fake": provider}.get, EventRecorder(client))
    background.run(disks.run(), disks.stop)
    return disks


async def test_a_pending_claim_becomes_a_disk_and_a_volume_bound_to_it(
        kube: FakeKube, provider: FakeProvider, provisioner: Provisioner) -> None:
    kube.seed(CLASS_PATH, storage_class())
    kube.seed(CLAIM_PATH, claim())
    await until(lambda: kube.get_obj(PV_PATH) is not None)
    assert provider.called("create_disk") == [("pvc-claim-uid", 10 * GIB, {"tier": "ssd"})]
    pv = kube.get_obj(PV_PATH)
    assert pv is not None
    assert pv["spec"]["claimRef"]["uid"] == "claim-uid"
    assert pv["spec"]["csi"] == {"driver": "fake.vmlet.io",
                                 "volumeHandle": "disk-pvc-claim-uid"}
    assert pv["spec"]["capacity"] == {"storage": "10Gi"}
    await until(lambda: "ProvisioningSucceeded" in kube.event_reasons())


async def test_a_claim_of_another_provisioner_or_shared_access_gets_no_disk(
        kube: FakeKube, provider: FakeProvider, provisioner: Provisioner) -> None:
    kube.seed(CLASS_PATH, storage_class())
    kube.seed("/apis/storage.k8s.io/v1/storageclasses/other",
              {"metadata": {"name": "other"}, "provisioner": "ebs.csi.aws.com"})
    kube.seed(CLAIM_PATH, claim(modes=("ReadWriteMany",)))
    foreign = claim()
    foreign["metadata"].update(name="foreign", uid="foreign-uid")
    foreign["spec"]["storageClassName"] = "other"
    kube.seed("/api/v1/namespaces/ns/persistentvolumeclaims/foreign", foreign)
    await until(lambda: "ProvisioningFailed" in kube.event_reasons())
    await settle()
    assert not provider.called("create_disk")
    assert kube.items("/api/v1/persistentvolumes") == []
    assert kube.event_reasons() == ["ProvisioningFailed"]  # said once


async def test_nothing_is_provisioned_before_the_volumes_are_listed(
        kube: FakeKube, provider: FakeProvider, background: Background) -> None:
    """The fault: the volume list is slow. The claim's volume may be in it: no disk before."""
    listed = kube.hold_list("/api/v1/persistentvolumes")
    kube.seed(CLASS_PATH, storage_class())
    kube.seed(CLAIM_PATH, claim())
    disks = start(kube, provider, background)
    await settle()
    assert disks.claims.has_synced and not disks.volumes.has_synced
    assert not provider.called("create_disk")
    listed.set()
    await until(lambda: kube.get_obj(PV_PATH) is not None)


async def test_a_volume_already_there_is_not_made_twice(
        kube: FakeKube, provider: FakeProvider, provisioner: Provisioner) -> None:
    """The fault: the volume's create meets 409 (made by an earlier run whose claim update has
    not arrived). The disk create is idempotent by name; no second volume, no event."""
    kube.seed(CLASS_PATH, storage_class())
    kube.fail("POST", "/api/v1/persistentvolumes",
              ApiError(409, "AlreadyExists", "persistentvolumes pvc-claim-uid already exists"))
    kube.seed(CLAIM_PATH, claim())
    await until(lambda: provider.called("create_disk"))
    await settle()
    assert list(provider.disks) == ["pvc-claim-uid"]
    assert "ProvisioningSucceeded" not in kube.event_reasons()
    assert not provisioner._workers.retry_pending("pvc:ns/data")


async def test_a_released_volume_goes_with_its_disk_when_its_policy_says_delete(
        kube: FakeKube, provider: FakeProvider, provisioner: Provisioner) -> None:
    kube.seed(CLASS_PATH, storage_class())
    await provider.create_disk("pvc-claim-uid", GIB, {})
    kube.seed(PV_PATH, volume(phase="Released"))
    kube.seed("/api/v1/persistentvolumes/kept", {**volume(phase="Released", policy="Retain"),
                                                 "metadata": {"name": "kept", "annotations": {
                                                     "pv.kubernetes.io/provisioned-by":
                                                         "fake.vmlet.io"}}})
    await until(lambda: kube.get_obj(PV_PATH) is None)
    assert provider.called("delete_disk") == ["disk-pvc-claim-uid"]
    assert provider.disks == {}
    assert kube.get_obj("/api/v1/persistentvolumes/kept") is not None


async def test_a_disk_that_cannot_be_deleted_keeps_its_volume(
        kube: FakeKube, provider: FakeProvider, provisioner: Provisioner) -> None:
    kube.seed(CLASS_PATH, storage_class())
    provider.fail("delete_disk", Unavailable("the IaaS is down"))
    kube.seed(PV_PATH, volume(phase="Released"))
    await until(lambda: "VolumeFailedDelete" in kube.event_reasons())
    await settle()
    assert kube.get_obj(PV_PATH) is not None
    assert fire_retries(provisioner._workers)["pv:pvc-claim-uid"] > 0.5
    await until(lambda: kube.get_obj(PV_PATH) is None)


async def test_a_claim_that_grows_grows_its_disk(
        kube: FakeKube, provider: FakeProvider, provisioner: Provisioner) -> None:
    kube.seed(CLASS_PATH, storage_class(allowVolumeExpansion=True))
    await provider.create_disk("pvc-claim-uid", 10 * GIB, {})
    kube.seed(PV_PATH, volume())
    kube.seed(CLAIM_PATH, claim(size="20Gi", volume="pvc-claim-uid"))
    await until(lambda: ((kube.get_obj(CLAIM_PATH) or {}).get("status") or {}).get(
        "capacity") == {"storage": "20Gi"})
    assert provider.called("expand_disk") == [("disk-pvc-claim-uid", 20 * GIB)]
    assert kube.get_obj(PV_PATH)["spec"]["capacity"] == {"storage": "20Gi"}  # type: ignore[index]
    assert "VolumeResizeSuccessful" in kube.event_reasons()
