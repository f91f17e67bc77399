"""The real OpenStack env: Nova with two fake-driver computes, driven with openstacksdk.

Starts Keystone, Placement, Glance, Neutron, Nova and Cinder from the virtualenv
hack/openstack/install.sh makes, on loopback, and walks one server through what vmlet's OpenStack
provider does: boot on a chosen host, metadata, stop/start, resize, live and cold migration,
snapshot, delete; and one volume through create, extend, attach, detach and delete. Then stops
the env and checks that not one of its processes is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmlet_localenv.openstack import OpenStackEnv, installed

openstack = pytest.importorskip("openstack")

pytestmark = [
    pytest.mark.openstack,
    pytest.mark.skipif(
        installed() is not None,
        reason=f"{installed()}: run hack/openstack/install.sh",
    ),
]

HOST_MICROVERSION = "2.74"  # `host` at server create


def _descendants(pids: list[int]) -> set[int]:
    """Every live process below (and including) ``pids``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [p for p in pids if os.path.exists(f"/proc/{p}")]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(children.get(p, []))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenStackEnv]:
    # A named state dir outlives the env, so a failure's service logs stay in pytest's tmp dir.
    e = OpenStackEnv(tmp_path_factory.mktemp("openstack"),
                     progress=lambda msg: print(f"[openstack] {msg}", flush=True))
    e.start()
    try:
        yield e
    finally:
        e.stop()


def _wait(conn: Any, server: Any, status: str, timeout: float = 240) -> Any:
    return conn.compute.wait_for_server(server, status=status, wait=timeout, interval=1)


def _wait_moved(conn: Any, server_id: str, away_from: str, timeout: float = 240) -> Any:
    """Waits for a live migration to settle on another host."""
    deadline = time.monotonic() + timeout
    while True:
        s = conn.compute.get_server(server_id)
        if s.status == "ACTIVE" and not s.task_state and s.compute_host != away_from:
            return s
        assert s.status != "ERROR", f"live migration failed: {s.fault}"
        assert time.monotonic() < deadline, f"still {s.status}/{s.task_state} on {s.compute_host}"
        time.sleep(1)


@pytest.mark.timeout(1200)
def test_server_lifecycle_on_two_fake_hosts(env: OpenStackEnv) -> None:
    conn = openstack.connect(**env.vmlet.as_dict())
    admin = openstack.connect(**env.admin.as_dict())
    first, second = env.compute_hosts

    # What a provider sees first: the hosts behind its virtual nodes.
    services = list(conn.compute.services(binary="nova-compute"))
    assert {(s.host, s.state, s.status) for s in services} == {
        (first, "up", "enabled"), (second, "up", "enabled")}
    hypervisors = list(conn.compute.hypervisors(details=True))
    assert {h.name for h in hypervisors if h.state == "up"} == {first, second}
    flavors = {f.name: f for f in conn.compute.flavors()}
    assert set(env.flavor_names) <= set(flavors)
    assert (flavors["m1.tiny"].vcpus, flavors["m1.tiny"].ram) == (1, 512)
    assert (flavors["m1.xlarge"].vcpus, flavors["m1.xlarge"].ram) == (8, 16384)
    image = conn.image.find_image(env.image_name)
    assert image is not None and image.status == "active" and image.id == env.image_id

    # Boot on the second host, without a network (microversion 2.37+), as vmlet would.
    conn.compute.default_microversion = HOST_MICROVERSION
    uid = str(uuid.uuid4())
    server = conn.compute.create_server(
        name=f"vmlet-{uid[:8]}", flavor_id=flavors["m1.tiny"].id, image_id=image.id,
        networks="none", host=second, metadata={"vmlet:uid": uid},
    )
    server = _wait(conn, server, "ACTIVE")
    assert admin.compute.get_server(server.id).compute_host == second
    assert server.compute_host == second  # the vmlet-operator role may read it too

    conn.compute.set_server_metadata(server, **{"vmlet:phase": "running"})
    assert conn.compute.fetch_server_metadata(server).metadata == {
        "vmlet:uid": uid, "vmlet:phase": "running"}

    conn.compute.stop_server(server)
    _wait(conn, server, "SHUTOFF")
    conn.compute.start_server(server)
    _wait(conn, server, "ACTIVE")

    # Resize goes to the other host (allow_resize_to_same_host is off, as on most clouds).
    conn.compute.resize_server(server, flavors["m1.small"].id)
    _wait(conn, server, "VERIFY_RESIZE")
    conn.compute.confirm_server_resize(server)
    server = _wait(conn, server, "ACTIVE")
    assert server.flavor.original_name == "m1.small"
    assert server.compute_host == first

    conn.compute.live_migrate_server(server, host=second, block_migration="auto")
    server = _wait_moved(conn, server.id, away_from=first)
    assert server.compute_host == second

    conn.compute.migrate_server(server)
    _wait(conn, server, "VERIFY_RESIZE")
    conn.compute.confirm_server_resize(server)
    server = _wait(conn, server, "ACTIVE")
    assert server.compute_host == first

    # The fake driver takes no data, so the snapshot stays queued in Glance; Nova made it.
    snap = conn.compute.create_server_image(server, name=f"snap-{uid[:8]}",
                                            metadata={"vmlet:uid": uid})
    snap = conn.image.get_image(snap)
    assert snap.instance_uuid == server.id
    deadline = time.monotonic() + 120
    while (s := conn.compute.get_server(server.id)).task_state is not None:
        assert time.monotonic() < deadline, f"snapshot stuck in {s.task_state}"
        time.sleep(1)

    conn.compute.delete_server(server)
    # openstacksdk's wait_for_delete settles for status DELETED; Nova destroys the record after.
    deadline = time.monotonic() + 240
    while server.id in {s.id for s in conn.compute.servers()}:
        assert time.monotonic() < deadline, "server not gone 240s after delete"
        time.sleep(1)
    with pytest.raises(openstack.exceptions.NotFoundException):
        conn.compute.get_server(server.id)
    conn.image.delete_image(snap)


def _wait_volume(conn: Any, volume_id: str, status: str, size: int | None = None,
                 timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = conn.block_storage.get_volume(volume_id)
        if v.status == status and (size is None or v.size == size):
            return v
        assert not v.status.startswith("error"), f"volume {volume_id} went {v.status}"
        assert time.monotonic() < deadline, f"volume {volume_id} still {v.status}/{v.size}"
        time.sleep(0.5)


@pytest.mark.timeout(600)
def test_cinder_volume_lifecycle_and_attach_to_a_fake_server(env: OpenStackEnv) -> None:
    conn = openstack.connect(**env.vmlet.as_dict())
    admin = openstack.connect(**env.admin.as_dict())
    # Cinder is in the catalog under both names, its volume service is up and scheduled to.
    catalog = {s["type"] for s in admin.service_catalog}
    assert {"block-storage", "volumev3"} <= catalog
    services = {(s.binary, s.state) for s in admin.block_storage.services()}
    assert {("cinder-scheduler", "up"), ("cinder-volume", "up")} <= services
    files = env.state_dir / "data" / "cinder" / "volumes"

    volume = conn.block_storage.create_volume(size=1, name="vmlet-env-test")
    volume = _wait_volume(conn, volume.id, "available")
    assert (files / f"volume-{volume.id}").stat().st_size == 1024**3  # the backend's sparse file
    conn.block_storage.extend_volume(volume, 2)
    _wait_volume(conn, volume.id, "available", size=2)
    assert (files / f"volume-{volume.id}").stat().st_size == 2 * 1024**3

    # Nova attaches it to a fake-driver server through Cinder's attachments, and detaches it.
    conn.compute.default_microversion = HOST_MICROVERSION
    flavor = conn.compute.find_flavor("m1.tiny")
    server = conn.compute.create_server(name="vmlet-env-vol", flavor_id=flavor.id,
                                        image_id=env.image_id, networks="none")
    server = _wait(conn, server, "ACTIVE")
    conn.compute.create_volume_attachment(server, volume_id=volume.id)
    attached = _wait_volume(conn, volume.id, "in-use")
    assert [a["server_id"] for a in attached.attachments] == [server.id]
    assert [a.volume_id for a in conn.compute.volume_attachments(server)] == [volume.id]
    conn.compute.delete_volume_attachment(server, volume.id)
    assert _wait_volume(conn, volume.id, "available").attachments == []
    conn.compute.delete_server(server)

    conn.block_storage.delete_volume(volume)
    conn.block_storage.wait_for_delete(volume, wait=120)
    assert not (files / f"volume-{volume.id}").exists()


def _in_groups(pgids: list[int]) -> set[int]:
    """Every live process whose process group is one of ``pgids`` (the services lead theirs)."""
    out: set[int] = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) in pgids and fields[0] != "Z":
                out.add(int(entry.name))
    return out


def test_stop_leaves_no_process(env: OpenStackEnv) -> None:
    pids = [p for p in env.facts()["pids"].values() if p]
    # The privsep daemons of the macvtap agents daemonize (their parent is init), staying in
    # their agent's process group.
    tree = _descendants(pids) | _in_groups(pids)
    assert len(tree) > len(pids)  # gunicorn workers, the Erlang VM's helpers
    if os.geteuid() == 0:
        assert any("privsep-helper" in Path(f"/proc/{p}/cmdline").read_text() for p in tree
                   if _alive(p))
    env.stop()
    left = sorted(p for p in tree if _alive(p))
    assert left == [], f"processes left after stop: {left}"


@pytest.mark.timeout(900)
def test_cli_up_prints_facts_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The launcher's contract: one JSON line once ready, everything gone after SIGTERM."""
    state = tmp_path / "openstack"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmlet_localenv.openstack", "up", "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=None, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"exited {proc.wait()} before printing the facts"
        facts = json.loads(line)
        assert facts["compute_hosts"] == ["vmlet-compute-1", "vmlet-compute-2"]
        assert json.loads((state / "facts.json").read_text())["auth_url"] == facts["auth_url"]
        conn = openstack.connect(**facts["vmlet"])
        assert {h.name for h in conn.compute.hypervisors()} == set(facts["compute_hosts"])
        tree = _descendants([p for p in facts["pids"].values() if p])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sorted(p for p in tree if _alive(p)) == []
    assert (state / "logs").is_dir()  # a named state dir is kept
