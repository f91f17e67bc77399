"""The local environment's guests (`vmlet_localenv.guests`): a VM created on vcsim gets one, and
kubectl enters it with the Secret the guests accept, through the real path: kubectl, the
apiserver, the facade's kubelet API, the vSphere provider on vcsim, SSH to the guest's sshd.

As in tests/test_guest_access.py, the facade's kubelet listener lives in a network namespace
(the apiserver will not proxy to a loopback node address); the guests do not care how it is
served. Needs root, iproute2, unshare, /usr/sbin/sshd (hack/install-test-deps.sh), vcsim and
the control plane.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.environment import Environment
from vmlet_localenv.guests import SECRET_NAME, Guest, GuestStandIn, guest_hostname
from vmlet_localenv.netns import Netns
from vmlet_localenv.stack import KUBELET_PORT, Stack, eventually, kubelet_api_args
from vmlet_localenv.terminal import kubectl
from vmlet_localenv.vcsim import VcSim

pytestmark = [pytest.mark.vcsim, pytest.mark.controlplane]

PROVIDER = "lguest"
VM_API = "vmlet.io/v1alpha1"


@pytest.fixture(scope="module")
def kubelet_host() -> Iterator[Netns]:
    netns = Netns.make("vmlet-lg-k")
    try:
        yield netns
    finally:
        netns.remove()


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, sim: VcSim, kubelet_host: Netns,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(control_plane, tmp_path_factory.mktemp("lguest-stack"), {PROVIDER: []},
              facade_args=kubelet_api_args(control_plane, kubelet_host, KUBELET_PORT),
              kinds={PROVIDER: "vsphere"}, vcsim=sim)
    try:
        s.start()
        eventually(lambda: len(s.ready_nodes(PROVIDER)) == 1, what="the node Ready")
        s.wait_kubelet_api(kubelet_host.ip, KUBELET_PORT)
        yield s
    finally:
        s.stop()
        s.print_logs()


@pytest.fixture(scope="module")
def ns(control_plane: ControlPlane, stack: Stack, guests: GuestStandIn) -> Iterator[str]:
    name = f"lguest-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    guests.apply_secret(control_plane, name)
    yield name
    control_plane.kubectl("delete", "vm", "--all", "-n", name, "--timeout=120s", check=False)
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def create_vm(cp: ControlPlane, ns: str, name: str, provider: str = PROVIDER) -> None:
    vm = {"apiVersion": VM_API, "kind": "VirtualMachine", "metadata": {"name": name},
          "spec": {"provider": provider, "image": "debian-12", "cpu": 1, "memory": "1Gi",
                   "access": {"sshSecretName": SECRET_NAME}}}
    cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(vm))


def get(cp: ControlPlane, *args: str) -> Any:
    return json.loads(cp.kubectl("get", *args, "-o", "json").stdout)


def ready_pod(cp: ControlPlane, ns: str, vm: str) -> tuple[str, dict[str, Any]]:
    """The VM's pod once it is Running and Ready with an IP; the VirtualMachine's status."""
    def ready() -> tuple[str, dict[str, Any]] | None:
        status = get(cp, "vm", vm, "-n", ns).get("status", {})
        pod = status.get("podName")
        if not pod or not status.get("addresses"):
            return None
        pod_status = get(cp, "pod", pod, "-n", ns)["status"]
        conditions = {c["type"]: c["status"] for c in pod_status.get("conditions") or ()}
        if pod_status.get("phase") != "Running" or conditions.get("Ready") != "True":
            return None
        return str(pod), status

    pod, status = eventually(ready, timeout=120, what=f"VirtualMachine {vm} Running and Ready")
    return pod, status


def guest_of(guests: GuestStandIn, ip: str) -> Guest:
    [guest] = [g for g in guests.guests().values() if g.netns.ip == ip]
    return guest


def vcenter_name(sim: VcSim, moid: str) -> str:
    from pyVmomi import vim

    with sim.connect() as si:
        return str(vim.VirtualMachine(moid, si._stub).name)


def netns_names() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


def pids_inside(netns: Netns) -> list[int]:
    listed = subprocess.run(["ip", "netns", "pids", netns.name], capture_output=True,
                            text=True, check=True)
    return [int(pid) for pid in listed.stdout.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def assert_gone(guests: GuestStandIn, guest: Guest, pids: list[int]) -> None:
    """The guest stopped: no longer listed, its namespace removed, ``pids`` (what ran in it)
    ended."""
    eventually(lambda: guest.vm not in guests.guests() and guest.netns.name not in netns_names()
               and not [pid for pid in pids if alive(pid)], timeout=60,
               what=f"the guest of {guest.vm} stopped and its namespace removed")
    assert guest.process.poll() is not None


def test_keys_are_private_and_the_secret_trusts_the_guests_host_key(
        guests: GuestStandIn) -> None:
    for name in ("id_ed25519", "host_key", "authorized_keys", "known_hosts", "sshd_config"):
        assert (guests.directory / name).stat().st_mode & 0o777 == 0o600, name
    assert guests.directory.stat().st_mode & 0o777 == 0o700
    secret = guests.secret("somewhere")
    assert secret["metadata"] == {"name": SECRET_NAME, "namespace": "somewhere"}
    host_key = (guests.directory / "known_hosts").read_text().split()
    assert host_key[0] == "198.18.*,198.19.*" and host_key[1] == "ssh-ed25519"
    assert secret["stringData"]["known_hosts"].split()[1:3] == host_key[1:3]
    assert "OPENSSH PRIVATE KEY" in secret["stringData"]["ssh-privatekey"]


def test_a_vm_gets_a_guest_kubectl_enters(stack: Stack, control_plane: ControlPlane,
                                          sim: VcSim, guests: GuestStandIn, ns: str) -> None:
    create_vm(control_plane, ns, "box")
    pod, status = ready_pod(control_plane, ns, "box")
    [ip] = status["addresses"]
    guest = guest_of(guests, ip)
    name = vcenter_name(sim, guest.vm)
    assert guest.hostname == guest_hostname(name)

    # exec runs in the VM's own guest: its hostname is the VM's name; exit codes pass through.
    hostname = kubectl(control_plane, "exec", "-n", ns, pod, "--", "hostname")
    assert (hostname.returncode, hostname.stdout) == (0, f"{guest.hostname}\n"), hostname.stderr
    where = kubectl(control_plane, "exec", "-n", ns, pod, "--", "sh", "-c",
                    'echo "$SSH_CONNECTION"; id -un')
    assert where.stdout.splitlines()[0].endswith(f" {ip} 22") and "root" in where.stdout
    failed = kubectl(control_plane, "exec", "-n", ns, pod, "--", "sh", "-c",
                     "echo oops >&2; exit 5")
    assert failed.returncode == 5 and "oops" in failed.stderr
    stdin = kubectl(control_plane, "exec", "-i", "-n", ns, pod, "--", "cat", input="typed\n")
    assert (stdin.returncode, stdin.stdout) == (0, "typed\n"), stdin.stderr

    # port-forward reaches a port in the guest: its sshd's banner.
    proc = subprocess.Popen(["kubectl", f"--kubeconfig={control_plane.kubeconfig}",
                             "port-forward", "-n", ns, f"pod/{pod}", ":22",
                             "--address=127.0.0.1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"127\.0\.0\.1:(\d+) -> 22", line)
        assert found, line
        with socket.create_connection(("127.0.0.1", int(found.group(1))), timeout=10) as conn:
            assert conn.makefile("rb").readline().startswith(b"SSH-2.0-OpenSSH_")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)

    # Powered off (spec.replicas 0): the guest goes; powered on again: a new one, entered alike.
    pids = pids_inside(guest.netns)
    control_plane.kubectl("patch", "vm", "box", "-n", ns, "--type=merge", "-p",
                          '{"spec":{"replicas":0}}')
    assert_gone(guests, guest, pids)
    control_plane.kubectl("patch", "vm", "box", "-n", ns, "--type=merge", "-p",
                          '{"spec":{"replicas":1}}')

    def new_guest() -> tuple[str, Guest] | None:
        pod, status = ready_pod(control_plane, ns, "box")
        found = [g for g in guests.guests().values() if g.netns.ip in status["addresses"]]
        return (pod, found[0]) if found and found[0].vm == guest.vm else None

    pod, guest = eventually(new_guest, timeout=120, what="a new guest for the VM powered on")
    hostname = kubectl(control_plane, "exec", "-n", ns, pod, "--", "hostname")
    assert (hostname.returncode, hostname.stdout) == (0, f"{guest.hostname}\n"), hostname.stderr

    # The VM deleted: its guest, its sshd, what was left running in it and its namespace go.
    kubectl(control_plane, "exec", "-n", ns, pod, "--", "sh", "-c",
            "sleep 600 </dev/null >/dev/null 2>&1 &")
    pids = pids_inside(guest.netns)
    assert guest.process.pid in pids and len(pids) >= 2, pids
    control_plane.kubectl("delete", "vm", "box", "-n", ns, "--timeout=120s")
    assert_gone(guests, guest, pids)


def test_stop_removes_every_guest(stack: Stack, control_plane: ControlPlane,
                                  guests: GuestStandIn, ns: str) -> None:
    create_vm(control_plane, ns, "other")
    _, status = ready_pod(control_plane, ns, "other")
    guest = guest_of(guests, status["addresses"][0])
    pids = pids_inside(guest.netns)
    guests.stop()
    assert guests.guests() == {}
    assert_gone(guests, guest, pids)
    assert list((guests.directory / "netns").glob("*.json")) == []


def test_start_removes_what_a_killed_run_left(sim: VcSim, tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir()
    left = Netns.make("vmlet-lg-left")
    left.record(records / f"{left.name}.json")
    sleeper = subprocess.Popen(["ip", "netns", "exec", left.name, "sleep", "600"])
    stand_in = GuestStandIn(sim, tmp_path / "guests", records=records).start()
    try:
        assert sleeper.wait(30) != 0
        assert left.name not in netns_names()
        assert list(records.glob("*.json")) == []
    finally:
        stand_in.stop()
        left.remove()


def test_the_environment_gives_its_vms_guests_and_the_secret(tmp_path: Path) -> None:
    """`make up` (IAAS=vsphere): the Secret in ``default``, named in the env file; a VM that
    names it is entered through its node's own address; `stop` removes every guest."""
    env = Environment(directory=tmp_path / "env", iaas="vsphere")
    made: list[tuple[Guest, list[int]]] = []
    try:
        env.start()
        cp, stand_in = env.control_plane, env.guests
        assert cp is not None and stand_in is not None
        env_file = (tmp_path / "env" / "env").read_text()
        assert f"export VMLET_GUEST_SSH_SECRET={SECRET_NAME}\n" in env_file
        assert get(cp, "secret", SECRET_NAME, "-n", "default")["type"] == "kubernetes.io/ssh-auth"
        create_vm(cp, "default", "demo", provider="vsphere")
        pod, status = ready_pod(cp, "default", "demo")
        guest = guest_of(stand_in, status["addresses"][0])
        made.append((guest, pids_inside(guest.netns)))

        def hostname() -> str:
            out = kubectl(cp, "exec", pod, "--", "hostname")
            return out.stdout if out.returncode == 0 else ""

        # The kubelet API serves once the environment approved its certificate.
        assert eventually(hostname, timeout=60, what="exec in the guest") == f"{guest.hostname}\n"
    finally:
        env.stop()
    for guest, pids in made:
        assert_gone(stand_in, guest, pids)
    assert list((tmp_path / "env" / "guest-netns").glob("*.json")) == []
