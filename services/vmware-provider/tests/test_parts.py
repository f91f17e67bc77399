"""The small parts: sizing, names, faults, the cache, statuses, fan-out, locks, extraConfig."""

from __future__ import annotations

import base64
import email
import json
from datetime import UTC, datetime
from typing import Any, cast

import grpc
import pytest
from pyVmomi import vim, vmodl

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import InvalidArgument
from vmlet_vmware import faults
from vmlet_vmware.cache import Cache, Change
from vmlet_vmware.disks import pod_disk_handles
from vmlet_vmware.inventory import NetworkRef
from vmlet_vmware.naming import label_value, node_name, vm_name
from vmlet_vmware.nics import nic_changes
from vmlet_vmware.records import IDENTITY_KEY, POD_KEY, VmRecord
from vmlet_vmware.sizing import cpu_millis, memory_bytes, template_of, vm_size
from vmlet_vmware.status import Progress, pod_ips, pod_status
from vmlet_vmware.vmbuilder import extra_config

MI = 1024 * 1024


@pytest.mark.parametrize(
    ("cpu_request", "cpu_limit", "mem_request", "mem_limit", "cpus", "memory"),
    [
        (0, 0, 0, 0, None, None),
        (100, 0, 0, 0, 1, None),
        (1000, 0, 0, 0, 1, None),
        (1001, 0, 0, 0, 2, None),
        (500, 2500, 0, 0, 3, None),  # the limit wins
        (0, 0, 1, 0, None, 128),  # at least 128 MiB
        (0, 0, 1024 * MI, 0, None, 1024),
        (0, 0, 10**9, 0, None, 956),  # 953.67 MiB -> 954 -> multiple of 4
        (0, 0, 100 * MI, 2 * 1024 * MI, None, 2048),
        (0, 0, 1025 * MI + 1, 0, None, 1028),
    ],
)
def test_vm_size(
    cpu_request: int, cpu_limit: int, mem_request: int, mem_limit: int,
    cpus: int | None, memory: int | None,
) -> None:  # fmt: skip
    size = vm_size(
        pod_pb2.Resources(
            cpu_request_millis=cpu_request,
            cpu_limit_millis=cpu_limit,
            memory_request_bytes=mem_request,
            memory_limit_bytes=mem_limit,
        )
    )
    assert (size.cpus, size.memory_mb) == (cpus, memory)


def test_template_of() -> None:
    assert template_of("vsphere:template/debian-12") == "debian-12"
    assert template_of("ubuntu-24.04") == "ubuntu-24.04"
    for bad in ("docker.io/nginx:1", "nginx:latest", "vsphere:template/", "vsphere:image/x", ""):
        with pytest.raises(InvalidArgument):
            template_of(bad)


def test_quantities() -> None:
    assert cpu_millis("2") == 2000 and cpu_millis("500m") == 500 and cpu_millis("1.5") == 1500
    assert memory_bytes("1Gi") == 2**30 and memory_bytes("1G") == 10**9
    assert memory_bytes("512Mi") == 512 * MI and memory_bytes("0") == 0
    with pytest.raises(ValueError):
        memory_bytes("lots")


def test_names() -> None:
    assert node_name("vsphere", "DC0_C0_H0") == "vsphere-dc0-c0-h0"
    assert node_name("vsphere", "ESX01.Lab.Example") == "vsphere-esx01.lab.example"
    assert node_name("vsphere", "esx 01..x") == "vsphere-esx-01.x"
    long = node_name("vsphere", "h" * 300)
    assert len(long) <= 253
    one = vm_name("default", "web-0", "uid-1")
    assert one.startswith("default-web-0-") and len(one) == len("default-web-0-") + 8
    assert vm_name("default", "web-0", "uid-1") == one  # deterministic
    assert vm_name("default", "web-0", "uid-2") != one  # unique per identity
    assert len(vm_name("n" * 63, "p" * 253, "uid")) == 80
    assert vm_name("Ns", "A_B.c", "x").startswith("ns-a-b-c-")
    assert label_value("DC0_C0") == "DC0_C0"
    assert label_value("-bad name-") == "bad-name"


def test_fault_mapping() -> None:
    cases: list[tuple[BaseException, grpc.StatusCode]] = [
        (vim.fault.InvalidLogin(msg="Login failure"), grpc.StatusCode.UNAVAILABLE),
        (vim.fault.NotAuthenticated(), grpc.StatusCode.UNAVAILABLE),
        (vim.fault.NoPermission(), grpc.StatusCode.PERMISSION_DENIED),
        (vmodl.fault.ManagedObjectNotFound(), grpc.StatusCode.NOT_FOUND),
        (vim.fault.InsufficientHostCapacityFault(), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (vim.fault.InvalidPowerState(), grpc.StatusCode.FAILED_PRECONDITION),
        (vim.fault.DuplicateName(), grpc.StatusCode.ALREADY_EXISTS),
        (vim.fault.TaskInProgress(), grpc.StatusCode.ABORTED),
        (vmodl.fault.InvalidArgument(), grpc.StatusCode.INVALID_ARGUMENT),
        # Sizes vSphere cannot hold: the caller's mistake, never INTERNAL.
        (vmodl.fault.InvalidRequest(msg='strconv.ParseInt: parsing "4611686018427387904": '
                                        "value out of range"), grpc.StatusCode.INVALID_ARGUMENT),
        (vim.fault.NumVirtualCpusNotSupported(), grpc.StatusCode.INVALID_ARGUMENT),
        (vim.fault.MemorySizeNotSupported(), grpc.StatusCode.INVALID_ARGUMENT),
        (vim.fault.FileTooLarge(), grpc.StatusCode.INVALID_ARGUMENT),
        (OverflowError(), grpc.StatusCode.INVALID_ARGUMENT),
        (vmodl.fault.SystemError(), grpc.StatusCode.INTERNAL),
        (ConnectionRefusedError(), grpc.StatusCode.UNAVAILABLE),
        (TimeoutError(), grpc.StatusCode.UNAVAILABLE),
        (KeyError("x"), grpc.StatusCode.INTERNAL),
    ]
    for exc, code in cases:
        error = faults.to_provider_error(exc, "power on VM web")
        assert error.code == code, exc
        assert error.message.startswith("power on VM web: ")
    assert "check the credentials" in faults.to_provider_error(vim.fault.InvalidLogin()).message
    assert faults.is_not_authenticated(vim.fault.NotAuthenticated())
    assert faults.is_connection_error(ConnectionResetError())
    assert not faults.is_connection_error(vim.fault.InvalidLogin())


def _vm_change(moid: str, op: str = "enter", **props: object) -> Change:
    paths = {
        "identity": f'config.extraConfig["{IDENTITY_KEY}"]',
        "pod": f'config.extraConfig["{POD_KEY}"]',
        "power": "runtime.powerState",
        "name": "name",
        "ip": "guest.ipAddress",
    }
    return Change(
        kind="vm",
        moid=moid,
        op=op,  # type: ignore[arg-type]
        props=tuple(
            (paths[k], "assign" if v is not None else "remove", v) for k, v in props.items()
        ),
    )


async def test_cache_indexes_identity_and_refresh_does_not_roll_back() -> None:
    cache = Cache()
    seen: list[tuple[VmRecord | None, VmRecord | None]] = []
    cache.on_vm(lambda old, new: seen.append((old, new)))
    start = cache.begin_resync()
    cache.apply([_vm_change("vm-1", name="a", identity="id-1", power="poweredOff")], resync=True)
    cache.end_resync({("vm", "vm-1")}, start)
    assert cache.synced.is_set()
    record = cache.vm_of("id-1")
    assert record is not None and record.name == "a" and record.pod is None

    before = cache.seq
    cache.apply([_vm_change("vm-1", "modify", power="poweredOn")])
    # A refresh that began before that update must not take it back.
    cache.refresh("vm", "vm-1", {"runtime.powerState": "poweredOff", "name": "b"}, before)
    record = cache.vm_of("id-1")
    assert record is not None and record.powered_on and record.name == "b"

    # A late enter of a refreshed object only fills in what the refresh did not see.
    cache.refresh("vm", "vm-2", {"name": "c", f'config.extraConfig["{IDENTITY_KEY}"]': "id-2"},
                  cache.seq)  # fmt: skip
    cache.apply([_vm_change("vm-2", name="c", identity=None, ip="10.0.0.1")])
    record = cache.vm_of("id-2")
    assert record is not None and record.ip == "10.0.0.1"

    cache.apply([_vm_change("vm-1", "leave")])
    assert cache.vm_of("id-1") is None
    assert seen[-1][1] is None

    # A resync drops what it did not see.
    start = cache.begin_resync()
    assert not cache.synced.is_set()
    cache.end_resync(set(), start)
    assert cache.vm_of("id-2") is None


async def test_a_late_modify_of_a_dropped_vm_makes_no_record() -> None:
    cache = Cache()
    cache.apply([_vm_change("vm-1", name="a", identity="id-1", power="poweredOn")])
    cache.forget("vm", "vm-1")  # the provider destroyed it
    cache.apply([_vm_change("vm-1", "modify", power="poweredOff")])  # collected before
    assert "vm-1" not in cache.vms and cache.vm_of("id-1") is None
    cache.apply([_vm_change("vm-1", "leave")])
    assert "vm-1" not in cache.vms
    # A read that finds the VM gone drops it just the same.
    cache.apply([_vm_change("vm-2", name="b", identity="id-2")])
    cache.refresh("vm", "vm-2", None, cache.seq)
    cache.apply([_vm_change("vm-2", "modify", name="c")])
    assert "vm-2" not in cache.vms


def _record(**overrides: object) -> VmRecord:
    fields: dict[str, object] = dict(
        moid="vm-9", name="web", identity="id", pod=("ns", "web"), pod_uid="", container="vm",
        image="debian-12", template=False, instance_uuid="uuid-9", power="poweredOn",
        host="host-1", boot_time=datetime(2030, 1, 1, tzinfo=UTC), ip="", nic_ips=(),
        num_cpu=1, memory_mb=512, cpu_hot_add=False, cpu_hot_remove=False,
        memory_hot_add=False, datastores=(),
    )  # fmt: skip
    fields.update(overrides)
    return VmRecord(**fields)  # type: ignore[arg-type]


def test_pod_ips_one_per_family_and_never_invented() -> None:
    assert pod_ips(_record()) == []
    assert pod_ips(_record(ip="10.0.0.5", nic_ips=(("10.0.0.5", "fe80::1", "2001:db8::5"),))) == [
        "10.0.0.5",
        "2001:db8::5",
    ]
    assert pod_ips(_record(ip="", nic_ips=(("169.254.1.1", "192.168.1.9"),))) == ["192.168.1.9"]


def test_pod_status_phases() -> None:
    pod = pod_pb2.Pod(
        ref=pod_pb2.PodRef(namespace="ns", name="web"),
        containers=[pod_pb2.Container(name="vm", image="debian-12")],
    )
    creating = pod_status(pod, None, progress=Progress("ContainerCreating", "cloning"))
    assert creating.phase == pod_pb2.POD_PHASE_PENDING
    assert creating.container_statuses[0].waiting.reason == "ContainerCreating"

    no_ip = pod_status(pod, _record())
    assert no_ip.phase == pod_pb2.POD_PHASE_RUNNING and no_ip.pod_ip == ""
    assert no_ip.HasField("ready") and not no_ip.ready
    assert no_ip.not_ready_reason == "WaitingForGuestIP"
    assert "VMware Tools" in no_ip.not_ready_message

    with_ip = pod_status(pod, _record(ip="10.1.1.1"), note="resized")
    assert with_ip.pod_ip == "10.1.1.1" and with_ip.message == "resized"
    assert with_ip.ready and not with_ip.not_ready_reason and not with_ip.conditions

    started = datetime(2030, 1, 1, tzinfo=UTC)
    cycling = pod_status(
        pod, _record(power="poweredOff"), progress=Progress("PowerCycling", "resizing"),
        first_started=started,
    )  # fmt: skip
    assert cycling.phase == pod_pb2.POD_PHASE_RUNNING
    assert cycling.container_statuses[0].waiting.reason == "PowerCycling"

    stopped = pod_status(pod, _record(power="poweredOff"), first_started=started)
    assert stopped.container_statuses[0].terminated.reason == "PoweredOff"

    vanished = pod_status(pod, None, failure=("VMVanished", "gone"), last_vm="vm-9")
    assert vanished.phase == pod_pb2.POD_PHASE_FAILED and vanished.reason == "VMVanished"
    assert vanished.provider_id == "vm-9"
    assert [s.progress for s in (creating, no_ip, with_ip, cycling, stopped, vanished)] == [
        pod_pb2.PROGRESS_CREATING, pod_pb2.PROGRESS_WAITING_FOR_GUEST_IP, pod_pb2.PROGRESS_NONE,
        pod_pb2.PROGRESS_POWER_CYCLING, pod_pb2.PROGRESS_STOPPED, pod_pb2.PROGRESS_FAILED,
    ]  # fmt: skip


async def test_a_contradicted_refresh_asks_for_another_read() -> None:
    cache = Cache()
    rechecks: list[tuple[str, str]] = []
    cache.on_recheck = lambda kind, moid: rechecks.append((kind, moid))
    before = cache.seq
    # The watch's batch lands while a read is under way: which is newer is unknown.
    cache.apply([_vm_change("vm-1", name="a", identity=None, power="poweredOff")])
    cache.refresh("vm", "vm-1", {"runtime.powerState": "poweredOn"}, before)
    record = cache.vms["vm-1"]
    assert not record.powered_on  # the watch's value stays for now...
    assert rechecks == [("vm", "vm-1")]  # ...and the VM is read once more
    cache.refresh("vm", "vm-1", {"runtime.powerState": "poweredOn"}, cache.seq)
    assert cache.vms["vm-1"].powered_on and rechecks == [("vm", "vm-1")]

    # A late enter does not take back a value the refresh found missing... nor one it found.
    cache.refresh("vm", "vm-2", {f'config.extraConfig["{IDENTITY_KEY}"]': None}, cache.seq)
    cache.apply([_vm_change("vm-2", name="b", identity=None)])
    written = cache.seq
    cache.refresh("vm", "vm-2", {f'config.extraConfig["{IDENTITY_KEY}"]': "id-2"}, written)
    found = cache.vm_of("id-2")
    assert found is not None and found.name == "b"


async def test_a_watch_change_contradicting_a_fresh_read_is_read_again_not_shown() -> None:
    cache = Cache()
    rechecks: list[tuple[str, str]] = []
    cache.on_recheck = lambda kind, moid: rechecks.append((kind, moid))
    cache.apply([_vm_change("vm-1", name="a", identity="id-1", power="poweredOn")])
    # The provider powered the VM off and on again and read it: on.
    cache.refresh("vm", "vm-1", {"runtime.powerState": "poweredOn"}, cache.seq)
    # The watch's batch from the moment it was off arrives late.
    cache.apply([_vm_change("vm-1", op="modify", power="poweredOff")])
    assert cache.vms["vm-1"].powered_on  # the older picture is not shown...
    assert rechecks == [("vm", "vm-1")]  # ...the VM is read once more instead
    # A change that agrees with the read is no reason to read again.
    cache.apply([_vm_change("vm-1", op="modify", power="poweredOn")])
    assert rechecks == [("vm", "vm-1")]


def test_pod_disk_handles() -> None:
    pod = pod_pb2.Pod()
    pod.volumes.add(name="scratch", scratch=pod_pb2.ScratchSource())
    pod.volumes.add(name="a", disk=pod_pb2.DiskSource(claim_name="ca", volume_handle="fcd-1"))
    pod.volumes.add(name="b", disk=pod_pb2.DiskSource(claim_name="cb", volume_handle="fcd-2"))
    pod.volumes.add(name="c", disk=pod_pb2.DiskSource(claim_name="ca", volume_handle="fcd-1"))
    assert pod_disk_handles(pod) == ("fcd-1", "fcd-2")
    pod.volumes.add(name="d", disk=pod_pb2.DiskSource(claim_name="cd"))
    with pytest.raises(InvalidArgument, match="no disk handle"):
        pod_disk_handles(pod)


class _Conn:
    """Just enough of a Connection for NIC changes: managed objects without a stub."""

    @staticmethod
    def mo(cls: type, moid: str) -> object:
        return cls(moid)


def _nic(key: int, network: str) -> object:
    backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
        deviceName=network, network=vim.Network(network)
    )
    return vim.vm.device.VirtualVmxnet3(key=key, backing=backing)


def test_nic_changes_put_nic_i_on_network_i() -> None:
    net = NetworkRef(moid="network-6", name="VM Network")
    dvpg = NetworkRef(moid="dvportgroup-12", name="DC0_DVPG0", distributed=True,
                      switch_uuid="uuid", portgroup_key="dvportgroup-12")  # fmt: skip
    disk = vim.vm.device.VirtualDisk(key=2000)
    conn: Any = _Conn()

    # The template's NIC is on VM Network already: nothing to do for it; a second is added.
    changes = nic_changes(conn, [disk, _nic(4000, "network-6")], (net, dvpg), exact=True)
    assert [(c.operation, type(c.device).__name__) for c in changes] == [
        ("add", "vim.vm.device.VirtualVmxnet3")
    ]
    assert changes[0].device.backing.port.portgroupKey == "dvportgroup-12"

    # Edited in place, and with exact networks the NICs beyond them go.
    changes = nic_changes(conn, [_nic(4000, "network-9"), _nic(4001, "x")], (net,), exact=True)
    assert [(c.operation, c.device.key) for c in changes] == [("edit", 4000), ("remove", 4001)]
    assert changes[0].device.backing.deviceName == "VM Network"
    # The provider's default network only moves the first NIC; the others stay.
    changes = nic_changes(conn, [_nic(4000, "network-6"), _nic(4001, "x")], (net,), exact=False)
    assert changes == []


def _guest_pod(user_data: str = "", command: tuple[str, ...] = ()) -> pod_pb2.Pod:
    return pod_pb2.Pod(
        ref=pod_pb2.PodRef(namespace="ns", name="vm-0", uid="u-1"), identity="id-1",
        user_data=user_data,
        containers=[pod_pb2.Container(name="vm", image="vsphere:template/t", command=command)],
    )  # fmt: skip


def test_extra_config_delivers_the_user_data_with_the_first_boot_commands() -> None:
    def decoded(values: dict[str, str], key: str) -> str:
        assert values[f"{key}.encoding"] == "base64"
        return base64.b64decode(values[key]).decode()

    # Nothing to run: the pod's user data as it is; none, no guestinfo at all.
    plain = extra_config(_guest_pod("#cloud-config\nhostname: a\n"))
    assert decoded(plain, "guestinfo.userdata") == "#cloud-config\nhostname: a\n"
    assert not any(k.startswith("guestinfo.") for k in extra_config(_guest_pod()))

    # A command without user data of its own: a first-boot document, and the metadata with it.
    pod = _guest_pod(command=("touch", "/tmp/booted"))
    pod.init_containers.add(name="prep", command=["mkdir", "-p", "/srv"],
                            env=[pod_pb2.EnvVar(name="A", value="1")])  # fmt: skip
    values = extra_config(pod)
    document = email.message_from_string(decoded(values, "guestinfo.userdata"))
    (part,) = cast(list[Any], document.get_payload())
    assert part.get_content_type() == "text/cloud-config"
    config = json.loads(part.get_payload().partition("\n")[2])
    assert config["runcmd"] == [
        ["sh", "-c", '. "$0" && exec "$@"', "/run/vmlet/first-boot/prep.env",
         "mkdir", "-p", "/srv"],
        ["touch", "/tmp/booted"],
    ]
    assert config["write_files"][0]["content"] == "export A=1\n"
    assert decoded(values, "guestinfo.metadata") == "instance-id: id-1\nlocal-hostname: vm-0\n"
