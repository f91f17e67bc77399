"""kubectl exec and port-forward into a VM's guest, through the real path: kubectl, the
apiserver, the facade's kubelet API, the vSphere provider on vcsim, SSH to the guest.

vcsim runs no guests, so the guest is Debian's OpenSSH server (`sshd -D -e -f <config>`, its
own process with a host key and an authorized key made for the test) in a network namespace of
its own (`vmlet_localenv.netns`), on a veth address from 198.18.0.0/15. vcsim reports that
address as the VM's guest IP the way VMware Tools would (SET.guest.ipAddress). The address is
not a loopback one on purpose: the provider never uses a loopback or link-local address a guest
reports, for pod IPs or to reach the guest (a guest could otherwise point exec and port-forward
at the provider's own host). As in tests/kubelet_api/, the facade's kubelet listener
lives in a second namespace, since the apiserver will not proxy to a loopback node address.

A VirtualMachine names the SSH Secret in spec.access.sshSecretName; the Secret holds the
authorized key (no username: the default, root) and the guest's host key as known_hosts, so the
host key is checked too. Needs root, iproute2, /usr/sbin/sshd (hack/install-test-deps.sh
installs it), vcsim and the control plane.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.netns import Netns, NetnsUnavailable
from vmlet_localenv.netns import namespaces as network_namespaces
from vmlet_localenv.processes import stop_process
from vmlet_localenv.stack import (
    KUBELET_PORT,
    Stack,
    eventually,
    kubelet_api_args,
    report_guest_ip,
    set_guest_ip,
)
from vmlet_localenv.terminal import (
    SPDY,
    WEBSOCKET,
    kubectl,
    kubectl_pty,
    read_until,
    set_size,
)
from vmlet_localenv.vcsim import VcSim

pytestmark = [pytest.mark.vcsim, pytest.mark.controlplane]

PROVIDER = "gacc"
SSHD = Path("/usr/sbin/sshd")
VM_API = "vmlet.io/v1alpha1"


# -- network namespaces -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def namespaces() -> Iterator[tuple[Netns, ...]]:
    """Two namespaces: [0] for the facade's kubelet listener, [1] for the guest."""
    try:
        with network_namespaces("vmlet-ga-k", "vmlet-ga-g") as made:
            yield made
    except NetnsUnavailable as err:
        pytest.skip(str(err))


# -- the guest: Debian's sshd -----------------------------------------------------------------


@dataclass(frozen=True)
class GuestSshd:
    """An sshd in the guest namespace, port 22, root logs in with ``user_key``."""

    ip: str
    port: int
    process: subprocess.Popen[bytes]
    user_key: Path
    host_key_line: str  # "<ip> <type> <base64>": a known_hosts line for this guest
    log: Path

    def sessions(self) -> list[str]:
        """Command lines of the sshd processes serving connections (children of the listener)."""
        found = subprocess.run(["pgrep", "-a", "-P", str(self.process.pid)], capture_output=True,
                               text=True, check=False)
        return found.stdout.splitlines()


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vmlet-test",
                    "-f", str(path)], check=True, timeout=30)


@pytest.fixture(scope="module")
def sshd(namespaces: tuple[Netns, ...],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestSshd]:
    if not SSHD.exists():
        pytest.skip("needs Debian's openssh-server (/usr/sbin/sshd): run "
                    "hack/install-test-deps.sh")
    guest = namespaces[1]
    d = tmp_path_factory.mktemp("guest-sshd")
    _keygen(d / "host_key")
    _keygen(d / "user_key")
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    host_type, host_b64 = (d / "host_key.pub").read_text().split()[:2]
    (d / "sshd_config").write_text("\n".join([
        "Port 22", f"ListenAddress {guest.ip}", f"HostKey {d / 'host_key'}", "PidFile none",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
        "StrictModes no", "PrintMotd no", "PrintLastLog no", "LogLevel VERBOSE", "",
    ]))
    # sshd wants its privilege separation directory, which the package's service would make.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = d / "sshd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(["ip", "netns", "exec", guest.name, str(SSHD), "-D", "-e",
                                    "-f", str(d / "sshd_config")], stdout=out, stderr=out)
    try:
        eventually(lambda: b"Server listening" in log.read_bytes() or process.poll() is not None,
                   timeout=30, what="sshd listening")
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited: {log.read_text()}")
        yield GuestSshd(guest.ip, 22, process, d / "user_key",
                        f"{guest.ip} {host_type} {host_b64}", log)
    finally:
        stop_process(process)


# -- vcsim, the control plane, the provider and the facade ----------------------------------


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, sim: VcSim, namespaces: tuple[Netns, ...],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    kubelet = namespaces[0]
    s = Stack(control_plane, tmp_path_factory.mktemp("guest-stack"), {PROVIDER: []},
              facade_args=kubelet_api_args(control_plane, kubelet, KUBELET_PORT),
              kinds={PROVIDER: "vsphere"}, vcsim=sim)
    try:
        s.start()
        eventually(lambda: len(s.ready_nodes(PROVIDER)) == 1, what="the node Ready")
        s.wait_kubelet_api(kubelet.ip, KUBELET_PORT)
        yield s
    finally:
        s.stop()
        s.print_logs()


@pytest.fixture(scope="module")
def ns(control_plane: ControlPlane, stack: Stack) -> Iterator[str]:
    # On the stack: its VMs are deleted while the provider still runs.
    name = f"guest-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "vm", "--all", "-n", name, "--timeout=120s", check=False)
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def ssh_secret(name: str, key: bytes, known_hosts: str = "") -> dict[str, Any]:
    data = {"ssh-privatekey": key.decode()}
    if known_hosts:
        data["known_hosts"] = known_hosts + "\n"
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "type": "kubernetes.io/ssh-auth", "stringData": data}


def vm_manifest(name: str, secret: str) -> dict[str, Any]:
    return {"apiVersion": VM_API, "kind": "VirtualMachine", "metadata": {"name": name},
            "spec": {"provider": PROVIDER, "image": "debian-12", "cpu": 1, "memory": "1Gi",
                     "access": {"sshSecretName": secret}}}


def apply(cp: ControlPlane, ns: str, *objs: dict[str, Any]) -> None:
    cp.kubectl("apply", "-n", ns, "-f", "-",
               input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def vm_pod_name(stack: Stack, ns: str, vm: str, *, with_ip: bool) -> str:
    def ready() -> str | None:
        status = stack.kubectl_json("get", "vm", vm, "-n", ns).get("status", {})
        pod = status.get("podName")
        if not pod:
            return None
        phase = stack.kubectl_json("get", "pod", pod, "-n", ns)["status"].get("phase")
        if phase != "Running" or (with_ip and not status.get("addresses")):
            return None
        return str(pod)

    return str(eventually(ready, timeout=120, what=f"VirtualMachine {vm} running"
                          + (" with an IP" if with_ip else "")))


@pytest.fixture(scope="module")
def guest_pod(stack: Stack, control_plane: ControlPlane, sim: VcSim, sshd: GuestSshd,
              ns: str) -> str:
    """The pod of a VirtualMachine whose guest IP is the sshd's, with a working SSH Secret."""
    apply(control_plane, ns, ssh_secret("vm-ssh", sshd.user_key.read_bytes(),
                                        known_hosts=sshd.host_key_line),
          vm_manifest("box", "vm-ssh"))
    uid = stack.kubectl_json("get", "vm", "box", "-n", ns)["metadata"]["uid"]
    report_guest_ip(sim, uid, sshd.ip)
    pod = vm_pod_name(stack, ns, "box", with_ip=True)
    assert stack.kubectl_json("get", "vm", "box", "-n", ns)["status"]["addresses"] == [sshd.ip]
    return pod


def open_provider_streams(stack: Stack, method: str) -> float:
    return stack.provider_open_streams(PROVIDER, method)


# -- exec ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", [WEBSOCKET, SPDY], ids=["websocket", "spdy"])
def test_exec_runs_the_command_in_the_guest_over_ssh(
        control_plane: ControlPlane, sshd: GuestSshd, ns: str, guest_pod: str,
        transport: dict[str, str]) -> None:
    def run(*command: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        flags = ["-i"] if input is not None else []
        return kubectl(control_plane, "exec", *flags, "-n", ns, guest_pod, "--", *command,
                       input=input, env=transport)

    uname = run("uname", "-a")
    here = subprocess.run(["uname", "-a"], capture_output=True, text=True, check=True).stdout
    assert (uname.returncode, uname.stdout) == (0, here), uname.stderr  # same kernel, in fact
    # It ran in the sshd's session in the guest's namespace: SSH_CONNECTION ends "<ip> 22".
    where = run("sh", "-c", 'echo "$SSH_CONNECTION"; ip -o -4 addr show scope global')
    assert where.stdout.splitlines()[0].endswith(f" {sshd.ip} 22"), where.stdout
    assert f"inet {sshd.ip}/30" in where.stdout
    echo = run("echo", "hello guest", "it's me")
    assert (echo.returncode, echo.stdout) == (0, "hello guest it's me\n"), echo.stderr
    failed = run("sh", "-c", "echo to stderr >&2; exit 3")
    assert failed.returncode == 3 and "to stderr" in failed.stderr
    missing = run("nosuchcommand")
    assert missing.returncode == 127 and "not found" in missing.stderr
    cat = run("cat", input="line one\nline two\n")
    assert (cat.returncode, cat.stdout) == (0, "line one\nline two\n"), cat.stderr
    read = run("sh", "-c", "read x; echo got $x; cat >/dev/null; echo stdin closed",
               input="typed\nmore\n")
    assert read.stdout == "got typed\nstdin closed\n", read.stderr
    assert "Accepted publickey for root" in sshd.log.read_text()


@pytest.mark.parametrize("transport", [WEBSOCKET, SPDY], ids=["websocket", "spdy"])
def test_exec_with_a_terminal_of_the_clients_size(
        stack: Stack, control_plane: ControlPlane, sshd: GuestSshd, ns: str, guest_pod: str,
        transport: dict[str, str]) -> None:
    proc, master = kubectl_pty(control_plane, ["exec", "-it", "-n", ns, guest_pod, "--", "sh",
                                                "-c", "tty; stty size; exit 4"], transport,
                                rows=37, cols=101)
    try:
        out = read_until(master, b"37 101")
        assert proc.wait(timeout=60) == 4
    finally:
        os.close(master)
    assert re.search(rb"/dev/pts/\d+", out) and b"37 101" in out, out

    # An interactive shell: resize the client's terminal, the guest's follows (SIGWINCH).
    proc, master = kubectl_pty(control_plane, ["exec", "-it", "-n", ns, guest_pod, "--", "sh"],
                                transport, rows=24, cols=80)
    try:
        time.sleep(1.0)  # kubectl has put the terminal in raw mode and opened the session
        os.write(master, b"stty size\r")
        assert b"24 80" in read_until(master, b"24 80")
        set_size(master, 50, 132)
        os.killpg(proc.pid, signal.SIGWINCH)
        time.sleep(1.0)
        os.write(master, b"stty size\r")
        assert b"50 132" in read_until(master, b"50 132")
        assert len(sshd.sessions()) >= 1
        os.write(master, b"exit 7\r")
        assert proc.wait(timeout=60) == 7
    finally:
        os.close(master)
    eventually(lambda: open_provider_streams(stack, "Exec") == 0 and not sshd.sessions(),
               timeout=30, what="no exec stream or SSH session left")


def test_exec_cut_off_midway_ends_the_guest_session(
        stack: Stack, control_plane: ControlPlane, sshd: GuestSshd, ns: str,
        guest_pod: str) -> None:
    proc = subprocess.Popen(["kubectl", f"--kubeconfig={control_plane.kubeconfig}", "exec", "-i",
                             "-n", ns, guest_pod, "--", "cat"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"still here\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"still here\n"
        assert open_provider_streams(stack, "Exec") == 1
        assert sshd.sessions(), "an SSH session serves the exec"
    finally:
        proc.kill()
        proc.wait()
    eventually(lambda: open_provider_streams(stack, "Exec") == 0 and not sshd.sessions(),
               timeout=30, what="the provider stream and the guest's SSH session ended")


# -- port-forward --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", [WEBSOCKET, SPDY], ids=["websocket", "spdy"])
def test_port_forward_reaches_the_guests_port(
        stack: Stack, control_plane: ControlPlane, ns: str, guest_pod: str,
        transport: dict[str, str]) -> None:
    proc = subprocess.Popen(["kubectl", f"--kubeconfig={control_plane.kubeconfig}",
                             "port-forward", "-n", ns, f"pod/{guest_pod}", ":22", ":2222",
                             "--address=127.0.0.1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **transport})
    try:
        assert proc.stdout is not None
        ports = {}
        for _ in range(2):
            line = proc.stdout.readline()
            found = re.search(r"127\.0\.0\.1:(\d+) -> (\d+)", line)
            assert found, line
            ports[int(found.group(2))] = int(found.group(1))
        for _ in range(2):  # two connections, one after the other
            with socket.create_connection(("127.0.0.1", ports[22]), timeout=10) as conn:
                banner = conn.makefile("rb").readline()
            assert banner.startswith(b"SSH-2.0-OpenSSH_"), banner
        # Nothing listens on 2222 in the guest: the connection is closed and kubectl says why.
        with socket.create_connection(("127.0.0.1", ports[2222]), timeout=10) as conn:
            conn.settimeout(10)
            assert conn.recv(100) == b""
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "connection refused" in err, err
    eventually(lambda: open_provider_streams(stack, "PortForward") == 0, timeout=30,
               what="no port-forward stream left open")


# -- what stands in the way, said plainly ------------------------------------------------------


def test_exec_refusals_say_what_is_missing(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, sshd: GuestSshd, ns: str,
        guest_pod: str) -> None:
    apply(control_plane, ns, vm_manifest("other", "later"))
    uid = stack.kubectl_json("get", "vm", "other", "-n", ns)["metadata"]["uid"]
    pod = vm_pod_name(stack, ns, "other", with_ip=False)

    def exec_error() -> str:
        out = kubectl(control_plane, "exec", "-n", ns, pod, "--", "true")
        assert out.returncode != 0
        return out.stderr

    # The Secret the VM names does not exist (the facade says so; the provider is not asked).
    missing = exec_error()
    assert 'SSH Secret "later"' in missing and "does not exist" in missing, missing

    # A key the guest does not accept, before the guest has an IP: no IP yet.
    stranger = sshd.user_key.parent / "stranger"
    _keygen(stranger)
    apply(control_plane, ns, ssh_secret("later", stranger.read_bytes()))
    assert "the guest has no IP yet" in exec_error()

    # With an IP, the guest's sshd refuses the key.
    assert set_guest_ip(sim, uid, sshd.ip)
    vm_pod_name(stack, ns, "other", with_ip=True)
    assert "refused the login as 'root'" in exec_error()

    # Attach would be the serial console, which vSphere does not offer vmlet.
    attach = kubectl(control_plane, "attach", "-n", ns, guest_pod, timeout=30)
    assert attach.returncode != 0 and "serial console" in attach.stderr, attach.stderr
    control_plane.kubectl("delete", "vm", "other", "-n", ns, "--timeout=90s")
