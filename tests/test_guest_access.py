"""kubectl exec and port-forward into a VM's guest, through the real path: kubectl, the
apiserver, the facade's kubelet API, the vSphere provider on vcsim, SSH to the guest.

vcsim runs no guests, so the guest is Debian's OpenSSH server (`sshd -D -e -f <config>`, its
own process with a host key and an authorized key made for the test) in a network namespace of
its own, on a veth address from 198.18.0.0/15. vcsim reports that address as the VM's guest IP
the way VMware Tools would (SET.guest.ipAddress). The address is not a loopback one on purpose:
the provider never uses a loopback or link-local address a guest reports, for pod IPs or to
reach the guest (a guest could otherwise point exec and port-forward at the provider's own
host). As in tests/test_kubelet_api.py, the facade's kubelet listener lives in a second
namespace, since the apiserver will not proxy to a loopback node address.

A VirtualMachine names the SSH Secret in spec.access.sshSecretName; the Secret holds the
authorized key (no username: the default, root) and the guest's host key as known_hosts, so the
host key is checked too. Needs root, iproute2, /usr/sbin/sshd (hack/install-test-deps.sh
installs it), vcsim and the control plane.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import pty
import random
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import termios
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, eventually, report_guest_ip, set_guest_ip
from vmlet_localenv.vcsim import VcSim

pytestmark = [pytest.mark.vcsim, pytest.mark.controlplane]

PROVIDER = "gacc"
KUBELET_PORT = 10250
SSHD = Path("/usr/sbin/sshd")
VM_API = "vmlet.io/v1alpha1"
SPDY = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false", "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}
WEBSOCKET = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "true", "KUBECTL_PORT_FORWARD_WEBSOCKETS": "true"}


# -- network namespaces -----------------------------------------------------------------------


@dataclass(frozen=True)
class Netns:
    """A network namespace with one veth address, reachable from this host."""

    name: str
    ip: str


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of 198.18.0.0/15 that no route of this host covers, picked at random."""
    routes = json.loads(_ip("-j", "route").stdout or "[]")
    taken = [ipaddress.ip_network(r["dst"], strict=False) for r in routes
             if r.get("dst") not in (None, "default")]
    pool = ipaddress.IPv4Network("198.18.0.0/15")
    for _ in range(1000):
        offset = random.randrange(pool.num_addresses // 4) * 4
        candidate = ipaddress.IPv4Network(f"{pool.network_address + offset}/30")
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise RuntimeError("no free /30 in 198.18.0.0/15")


@pytest.fixture(scope="module")
def namespaces() -> Iterator[list[Netns]]:
    """Two namespaces: [0] for the facade's kubelet listener, [1] for the guest."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make network namespaces")
    made: list[tuple[str, str]] = []
    out: list[Netns] = []
    try:
        for role in ("kubelet", "guest"):
            tag = uuid.uuid4().hex[:6]
            netns, link = f"vmlet-ga-{role[0]}{tag}", f"vg{role[0]}{tag}"
            gateway, address = (str(h) for h in _free_subnet().hosts())
            made.append((netns, link))
            _ip("netns", "add", netns)
            _ip("link", "add", link, "type", "veth", "peer", "name", f"{link}p")
            _ip("link", "set", f"{link}p", "netns", netns)
            _ip("addr", "add", f"{gateway}/30", "dev", link)
            _ip("link", "set", link, "up")
            _ip("-n", netns, "addr", "add", f"{address}/30", "dev", f"{link}p")
            _ip("-n", netns, "link", "set", f"{link}p", "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            out.append(Netns(netns, address))
    except subprocess.CalledProcessError as err:
        for netns, link in made:
            _ip("netns", "del", netns, check=False)
            _ip("link", "del", link, check=False)
        pytest.skip(f"cannot make network namespaces here: {err.stderr.strip()}")
    try:
        yield out
    finally:
        for netns, link in made:
            _ip("netns", "del", netns, check=False)
            _ip("link", "del", link, check=False)


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
def sshd(namespaces: list[Netns], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestSshd]:
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
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- vcsim, the control plane, the provider and the facade ----------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VcSim]:
    s = VcSim(hosts=1, state_dir=tmp_path_factory.mktemp("guest-vcsim")).start()
    try:
        yield s
    finally:
        s.stop()


def _approve_serving_csrs(cp: ControlPlane) -> bool:
    """Approve the facade's pending kubelet-serving CSRs, as an operator would."""
    approved = False
    for csr in json.loads(cp.kubectl("get", "csr", "-o", "json").stdout)["items"]:
        spec, status = csr["spec"], csr.get("status") or {}
        if spec.get("signerName") == "kubernetes.io/kubelet-serving" and \
                spec.get("username") == "vmlet-facade" and not status.get("conditions"):
            cp.kubectl("certificate", "approve", csr["metadata"]["name"])
            approved = True
    return approved


def _kubelet_reachable(cp: ControlPlane, ip: str) -> bool:
    context = ssl.create_default_context(cafile=str(cp.pki.ca.cert))
    with socket.create_connection((ip, KUBELET_PORT), timeout=3) as raw, \
            context.wrap_socket(raw, server_hostname=ip):
        return True


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, sim: VcSim, namespaces: list[Netns],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    kubelet = namespaces[0]
    s = Stack(control_plane, tmp_path_factory.mktemp("guest-stack"), {PROVIDER: []},
              facade_args=[f"--kubelet-port={KUBELET_PORT}", f"--kubelet-netns={kubelet.name}",
                           f"--kubelet-address={kubelet.ip}", f"--node-ip={kubelet.ip}",
                           f"--client-ca-file={control_plane.pki.ca.cert}"],
              kinds={PROVIDER: "vsphere"}, vcsim=sim)
    try:
        s.start()
        eventually(lambda: len(s.ready_nodes(PROVIDER)) == 1, what="the node Ready")

        def serving() -> bool:
            _approve_serving_csrs(control_plane)
            return _kubelet_reachable(control_plane, kubelet.ip)

        eventually(serving, timeout=90, what="kubelet API serving with an approved certificate")
        yield s
    finally:
        s.stop()
        for name, process in s.providers.items():
            if process.process is not None:
                print(f"--- provider {name}:\n{process.process.tail(40)}")
        if s.facade is not None and s.facade.process is not None:
            print(f"--- facade:\n{s.facade.process.tail(40)}")


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


def kubectl(cp: ControlPlane, *args: str, env: dict[str, str] | None = None,
            input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", f"--kubeconfig={cp.kubeconfig}", *args],
                          input=input, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def open_provider_streams(stack: Stack, method: str) -> float:
    import urllib.request

    with urllib.request.urlopen(
            f"http://127.0.0.1:{stack.metrics_ports[PROVIDER]}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if f'grpc_method="{method}"' not in line:
            continue
        if line.startswith("grpc_server_started_total{"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("grpc_server_handled_total{"):
            total -= float(line.rsplit(" ", 1)[1])
    return total


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


def _pty_kubectl(cp: ControlPlane, args: list[str], env: dict[str, str], rows: int,
                 cols: int) -> tuple[subprocess.Popen[bytes], int]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen(["kubectl", f"--kubeconfig={cp.kubeconfig}", *args], stdin=slave,
                            stdout=slave, stderr=slave, env={**os.environ, **env},
                            start_new_session=True)
    os.close(slave)
    return proc, master


def _read_until(master: int, wanted: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                seen += os.read(master, 4096)
            except OSError:
                break
    return seen


@pytest.mark.parametrize("transport", [WEBSOCKET, SPDY], ids=["websocket", "spdy"])
def test_exec_with_a_terminal_of_the_clients_size(
        stack: Stack, control_plane: ControlPlane, sshd: GuestSshd, ns: str, guest_pod: str,
        transport: dict[str, str]) -> None:
    proc, master = _pty_kubectl(control_plane, ["exec", "-it", "-n", ns, guest_pod, "--", "sh",
                                                "-c", "tty; stty size; exit 4"], transport,
                                rows=37, cols=101)
    try:
        out = _read_until(master, b"37 101")
        assert proc.wait(timeout=60) == 4
    finally:
        os.close(master)
    assert re.search(rb"/dev/pts/\d+", out) and b"37 101" in out, out

    # An interactive shell: resize the client's terminal, the guest's follows (SIGWINCH).
    proc, master = _pty_kubectl(control_plane, ["exec", "-it", "-n", ns, guest_pod, "--", "sh"],
                                transport, rows=24, cols=80)
    try:
        time.sleep(1.0)  # kubectl has put the terminal in raw mode and opened the session
        os.write(master, b"stty size\r")
        assert b"24 80" in _read_until(master, b"24 80")
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))
        os.killpg(proc.pid, signal.SIGWINCH)
        time.sleep(1.0)
        os.write(master, b"stty size\r")
        assert b"50 132" in _read_until(master, b"50 132")
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
