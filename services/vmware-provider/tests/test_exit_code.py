"""The exit code a guest leaves in guestinfo.vmlet.exitCode, and the stopped pod's status."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from vmlet.provider.v1 import pod_pb2
from vmlet_vmware.cache import Cache, Change
from vmlet_vmware.props import extra_config_path
from vmlet_vmware.records import EXIT_CODE_KEY, IDENTITY_KEY, VM_PATHS, VmRecord
from vmlet_vmware.status import guest_exit_code, pod_status

EXIT_CODE = extra_config_path(EXIT_CODE_KEY)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", 0),
        ("0", 0),
        ("3", 3),
        (" 42\n", 42),
        ("+7", 7),
        ("-1", -1),
        ("007", 7),
        ("2147483647", 2**31 - 1),
        ("-2147483648", -(2**31)),
    ],
)
def test_integers_in_int32_range_are_the_exit_code(text: str, code: int) -> None:
    assert guest_exit_code(text) == (code, "")


@pytest.mark.parametrize(
    "text",
    [
        "2147483648",
        "-2147483649",
        "99999999999999999999",
        "9" * 10_000,  # more digits than int() takes
        "abc",
        "3.0",
        "0x10",
        "1_000",
        "٣",  # an Arabic-Indic digit: int() takes it, the guest's shell would not
        "3 4",
        "-",
    ],
)
def test_anything_else_is_exit_code_1_naming_the_value(text: str) -> None:
    code, note = guest_exit_code(text)
    assert code == 1
    assert EXIT_CODE_KEY in note and "int32" in note
    assert ascii(text.strip()[:64]) in note
    assert len(note) < 200


def test_a_bad_value_is_shown_escaped() -> None:
    _, note = guest_exit_code("x\x1b[31m\nrm -rf /")
    assert "\x1b" not in note and "\n" not in note
    assert "'x\\x1b[31m\\nrm -rf /'" in note


def _vm(**overrides: Any) -> VmRecord:
    fields: dict[str, Any] = dict(
        moid="vm-1", name="web-1", identity="id-1", pod=("ns", "web"), pod_uid="", container="vm",
        image="debian-12", template=False, instance_uuid="u-1", power="poweredOff", host="",
        boot_time=None, ip="", nic_ips=(), num_cpu=1, memory_mb=512, cpu_hot_add=False,
        cpu_hot_remove=False, memory_hot_add=False, datastores=(),
    )  # fmt: skip
    fields.update(overrides)
    return VmRecord(**fields)


POD = pod_pb2.Pod(
    ref=pod_pb2.PodRef(namespace="ns", name="web"),
    containers=[pod_pb2.Container(name="vm", image="debian-12")],
)
STARTED = datetime(2030, 1, 1, tzinfo=UTC)


def _terminated(vm: VmRecord) -> tuple[pod_pb2.PodStatus, pod_pb2.ContainerStateTerminated]:
    status = pod_status(POD, vm, first_started=STARTED)
    (container,) = status.container_statuses
    assert container.HasField("terminated")
    return status, container.terminated


@pytest.mark.parametrize(("text", "code"), [("", 0), ("3", 3), ("0", 0), ("-2", -2)])
def test_a_powered_off_vm_reports_the_code_its_guest_left(text: str, code: int) -> None:
    status, terminated = _terminated(_vm(exit_code=text))
    assert (status.phase, status.progress) == (pod_pb2.POD_PHASE_RUNNING, pod_pb2.PROGRESS_STOPPED)
    assert not status.ready
    assert (terminated.exit_code, terminated.reason) == (code, "PoweredOff")
    assert ("exit code" in terminated.message) == bool(code)


def test_a_bad_value_is_exit_code_1_with_a_message() -> None:
    status, terminated = _terminated(_vm(exit_code="three"))
    assert terminated.exit_code == 1
    assert "'three'" in terminated.message and EXIT_CODE_KEY in terminated.message
    assert status.progress == pod_pb2.PROGRESS_STOPPED


def test_a_suspended_vm_did_not_exit() -> None:
    _, terminated = _terminated(_vm(power="suspended", exit_code="3"))
    assert (terminated.exit_code, terminated.reason) == (0, "Suspended")


def test_the_key_is_watched_and_its_removal_is_seen() -> None:
    assert EXIT_CODE in VM_PATHS
    cache = Cache()
    props = ((extra_config_path(IDENTITY_KEY), "assign", "id-1"), (EXIT_CODE, "add", "3"))
    cache.apply([Change(kind="vm", moid="vm-1", op="enter", props=props)])
    assert cache.vms["vm-1"].exit_code == "3"
    # A read that finds the key gone (vCenter leaves it out; Machines.refresh says None).
    cache.refresh("vm", "vm-1", {EXIT_CODE: None}, cache.seq)
    assert cache.vms["vm-1"].exit_code == ""
