"""What a new user starts: `make up` (``vmlet-localenv up``, as a subprocess) for IAAS=memory and
IAAS=vsphere, then ``source <dir>/env`` and nothing but the kubectl it puts on PATH, with no
manual step. On a VM pod: kubectl logs (plain, -f, --tail, --since, --since-time,
--timestamps), exec over WebSocket and over SPDY (exit code, stdin, tty), attach (memory: its
echoing console; vsphere: no console, said plainly), port-forward (memory: its echo server;
vsphere: the guest's sshd), top pod/node, and `get --raw` of stats/summary, pods and
metrics/resource through the node proxy for every node. `vmlet-localenv down` then leaves no
namespace and no process of the environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pytest

from vmlet_localenv.guests import SECRET_NAME
from vmlet_localenv.stack import eventually
from vmlet_localenv.terminal import SPDY, WEBSOCKET, read_until, set_size

pytestmark = [pytest.mark.controlplane, pytest.mark.vcsim]

TRANSPORTS = pytest.mark.parametrize("transport", [WEBSOCKET, SPDY], ids=["websocket", "spdy"])
VM = "box"
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)) (.*)$")


def localenv(*args: str) -> subprocess.CompletedProcess[str]:
    """The entry point `make up`/`make down` call: the virtualenv's ``vmlet-localenv``."""
    return subprocess.run([str(Path(sys.executable).parent / "vmlet-localenv"), *args],
                          capture_output=True, text=True, timeout=960)


def sourced(env_file: Path) -> dict[str, str]:
    """The environment a shell has after ``source env_file`` (with no KUBECONFIG of its own)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "VMLET_"))}
    out = subprocess.run(["bash", "-c", f'source "{env_file}" && env -0'], env=base,
                         capture_output=True, check=True).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


@dataclass
class Up:
    """A running `make up`: its directory and the shell environment its env file gives."""

    iaas: str
    directory: Path
    env: dict[str, str]

    def kubectl(self, *args: str, transport: dict[str, str] | None = None,
                input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True,
                              timeout=timeout, env={**self.env, **(transport or {})})

    def popen(self, *args: str, transport: dict[str, str] | None = None,
              **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(["kubectl", *args], text=True,
                                env={**self.env, **(transport or {})}, **kwargs)

    def json(self, *args: str) -> Any:
        out = self.kubectl(*args, "-o", "json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def ok(self, *args: str, timeout: float = 60) -> str:
        """``kubectl ARGS``'s output once it succeeds (the kubelet API may still be starting)."""
        def run() -> str:
            out = self.kubectl(*args)
            if out.returncode != 0:
                raise AssertionError(out.stderr.strip())  # eventually reports the last
            return out.stdout
        out: str = eventually(run, timeout=timeout, interval=1,
                              what=f"kubectl {' '.join(args)}")
        return out

    def vm_pod(self) -> tuple[str, dict[str, Any]]:
        """The VM's pod once it is Running and Ready with an IP; the VM's status."""
        def ready() -> tuple[str, dict[str, Any]] | None:
            status = self.json("get", "vm", VM).get("status", {})
            if not status.get("podName") or not status.get("addresses"):
                return None
            pod = self.json("get", "pod", status["podName"])["status"]
            conditions = {c["type"]: c["status"] for c in pod.get("conditions") or ()}
            if pod.get("phase") != "Running" or conditions.get("Ready") != "True":
                return None
            return str(status["podName"]), status
        found: tuple[str, dict[str, Any]] = eventually(ready, timeout=120, interval=1,
                                                       what=f"VirtualMachine {VM} Ready")
        return found


def netns_names() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


def processes_of(directory: Path) -> dict[int, str]:
    """Every live process whose command line names ``directory`` (the env's state is there)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(directory) in cmdline and state != "Z":
            found[int(proc.name)] = cmdline
    return found


@pytest.fixture(scope="module", params=["memory", "vsphere"])
def up(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    iaas = request.param
    directory = tmp_path_factory.mktemp(f"make-up-{iaas}") / ".vmlet"
    started = localenv("up", "--dir", str(directory), "--iaas", iaas)
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        env = sourced(directory / "env")
        assert shutil.which("kubectl", path=env["PATH"]) == str(
            Path(sys.executable).parent / "kubectl")
        assert env["KUBECONFIG"] == str(directory / "kubeconfig")
        yield Up(iaas, directory, env)
    finally:
        localenv("down", "--dir", str(directory))
        log = directory / "localenv.log"
        if log.exists():
            print(log.read_text(errors="replace")[-6000:])


@pytest.fixture(scope="module")
def vm(up: Up) -> str:
    """A VirtualMachine as a user makes one (vsphere: naming the guests' Secret); its pod's
    name once it runs."""
    spec: dict[str, Any] = {"provider": up.iaas, "image": "debian-12", "cpu": 1,
                            "memory": "1Gi"}
    if up.iaas == "vsphere":
        assert up.env["VMLET_GUEST_SSH_SECRET"] == SECRET_NAME
        spec["access"] = {"sshSecretName": SECRET_NAME}
    made = up.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine", "metadata": {"name": VM},
        "spec": spec}))
    assert made.returncode == 0, made.stderr
    pod, _ = up.vm_pod()
    return pod


# -- logs ---------------------------------------------------------------------------------------


def test_logs(up: Up, vm: str) -> None:
    plain = up.ok("logs", vm).splitlines()
    assert len(plain) >= 2, plain  # at least created and powered on: the history, not nothing
    tail = up.kubectl("logs", vm, "--tail=1")
    assert tail.returncode == 0 and tail.stdout.splitlines() == plain[-1:], tail

    lines = stamped(up, vm)
    assert [text for _, text in lines] == plain
    assert [t for t, _ in lines] == sorted(t for t, _ in lines)


def stamped(up: Up, pod: str) -> list[tuple[datetime, str]]:
    """``kubectl logs --timestamps``: each line's time and text."""
    out = up.kubectl("logs", pod, "--timestamps")
    assert out.returncode == 0, out.stderr
    lines = [STAMP.match(line) for line in out.stdout.splitlines()]
    assert all(lines), out.stdout
    return [(datetime.fromisoformat(m.group(1).replace("Z", "+00:00")), m.group(2))
            for m in lines if m]


def test_logs_follow_shows_a_new_line(up: Up, vm: str) -> None:
    before = up.ok("logs", vm).splitlines()
    follow = up.popen("logs", "-f", vm, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert follow.stdout is not None
        seen = [follow.stdout.readline().rstrip("\n") for _ in before]
        assert seen == before
        # A resize: memory logs "updated", vSphere a reconfigure (a vCenter event); in a later
        # second than the lines before it (test_logs_since cuts between them).
        time.sleep(max(0.0, 1.2 - (time.time() - stamped(up, vm)[-1][0].timestamp())))
        resized = up.kubectl("patch", "vm", VM, "--type=merge", "-p",
                             '{"spec":{"cpu":2,"memory":"2Gi"}}')
        assert resized.returncode == 0, resized.stderr
        arrived: queue.Queue[str] = queue.Queue()
        def read(stream: IO[str]) -> None:
            for line in stream:
                arrived.put(line)

        threading.Thread(target=read, args=(follow.stdout,), daemon=True).start()
        expected = "updated" if up.iaas == "memory" else "VmReconfiguredEvent"
        fresh: list[str] = []
        deadline = time.monotonic() + 30
        while not any(expected in line for line in fresh) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                fresh.append(arrived.get(timeout=1))
        assert any(expected in line for line in fresh), fresh
        assert follow.poll() is None  # still following
    finally:
        follow.send_signal(signal.SIGINT)
        follow.communicate(timeout=30)


def test_logs_since(up: Up, vm: str) -> None:
    """After the resize (seconds after the VM started), the log spans seconds: --since-time at
    the last line's second keeps that second's lines and drops the earlier ones."""
    lines = stamped(up, vm)
    plain = up.ok("logs", vm).splitlines()
    recent = up.kubectl("logs", vm, "--since=1h")
    assert recent.returncode == 0 and recent.stdout.splitlines() == plain, recent
    cut = lines[-1][0].replace(microsecond=0)  # the API takes sinceTime to the second
    since = up.kubectl("logs", vm, f"--since-time={cut.isoformat().replace('+00:00', 'Z')}")
    assert since.returncode == 0, since.stderr
    kept = [text for t, text in lines if t >= cut]
    assert since.stdout.splitlines() == kept and 0 < len(kept) < len(plain), since.stdout
    short = up.kubectl("logs", vm, f"--since={max(int(time.time() - cut.timestamp()), 0) + 2}s")
    assert short.returncode == 0 and set(short.stdout.splitlines()) >= set(kept), short


# -- exec ---------------------------------------------------------------------------------------


@TRANSPORTS
def test_exec(up: Up, vm: str, transport: dict[str, str]) -> None:
    pod, status = up.vm_pod()
    hostname = up.kubectl("exec", pod, "--", "hostname", transport=transport)
    assert hostname.returncode == 0, hostname.stderr
    if up.iaas == "memory":
        assert hostname.stdout == f"{pod}\n"  # the memory provider's built-in shell
    else:  # the VM's own guest: named after the VM, reached over SSH at the VM's address
        assert re.fullmatch(rf"default-{VM}-[0-9a-f]{{8}}\n", hostname.stdout), hostname.stdout
        where = up.kubectl("exec", pod, "--", "sh", "-c", 'echo "$SSH_CONNECTION"',
                           transport=transport)
        assert where.stdout.rstrip().endswith(f" {status['addresses'][0]} 22"), where
    failed = up.kubectl("exec", pod, "--", "sh", "-c", "exit 5", transport=transport)
    assert failed.returncode == 5, failed
    missing = up.kubectl("exec", pod, "--", "nosuchcommand", transport=transport)
    assert missing.returncode == 127 and "not found" in missing.stderr, missing
    cat = up.kubectl("exec", "-i", pod, "--", "cat", input="typed\nmore\n", transport=transport)
    assert (cat.returncode, cat.stdout) == (0, "typed\nmore\n"), cat.stderr


@TRANSPORTS
def test_exec_with_a_terminal(up: Up, vm: str, transport: dict[str, str]) -> None:
    pod, _ = up.vm_pod()
    command = ("sh", "-c", "exit 4") if up.iaas == "memory" else (
        "sh", "-c", "tty; stty size; exit 4")
    proc, master = pty_kubectl(up, ["exec", "-it", pod, "--", *command], transport)
    try:
        out = read_until(master, b"37 101") if up.iaas == "vsphere" else b""
        assert proc.wait(timeout=60) == 4
    finally:
        os.close(master)
    if up.iaas == "vsphere":  # a real terminal in the guest, of the client's size
        assert re.search(rb"/dev/pts/\d+", out) and b"37 101" in out, out
    proc, master = pty_kubectl(up, ["exec", "-it", pod, "--", "hostname"], transport)
    try:
        out = read_until(master, b"\n", timeout=20)
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
    name = out.strip().decode()
    assert name == pod if up.iaas == "memory" else re.fullmatch(rf"default-{VM}-[0-9a-f]{{8}}",
                                                                 name), out


def pty_kubectl(up: Up, args: list[str],
                transport: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """kubectl on a 37x101 pseudo-terminal, as an interactive shell runs it."""
    master, slave = pty.openpty()
    set_size(slave, 37, 101)
    proc = subprocess.Popen(["kubectl", *args], stdin=slave, stdout=slave, stderr=slave,
                            env={**up.env, **transport}, start_new_session=True)
    os.close(slave)
    return proc, master


# -- attach -------------------------------------------------------------------------------------


@TRANSPORTS
def test_attach(up: Up, vm: str, transport: dict[str, str]) -> None:
    pod, _ = up.vm_pod()
    if up.iaas == "memory":  # its console echoes what it is sent until stdin closes
        out = up.kubectl("attach", "-i", pod, input="hello console\n", transport=transport)
        assert out.returncode == 0 and "hello console" in out.stdout, out
    else:  # vcsim's VMs have no serial console vmlet can reach: said plainly
        out = up.kubectl("attach", pod, transport=transport, timeout=30)
        assert out.returncode != 0 and "serial console" in out.stderr, out


# -- port-forward -------------------------------------------------------------------------------


@TRANSPORTS
def test_port_forward(up: Up, vm: str, transport: dict[str, str]) -> None:
    pod, _ = up.vm_pod()
    port = 22 if up.iaas == "vsphere" else 8080
    proc = up.popen("port-forward", f"pod/{pod}", f":{port}", "--address=127.0.0.1",
                    transport=transport, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(rf"127\.0\.0\.1:(\d+) -> {port}", line)
        assert found, line
        with socket.create_connection(("127.0.0.1", int(found.group(1))), timeout=10) as conn:
            conn.settimeout(10)
            if up.iaas == "vsphere":  # the guest's sshd
                assert conn.makefile("rb").readline().startswith(b"SSH-2.0-OpenSSH_")
            else:  # the memory provider's echo server
                conn.sendall(b"ping\n")
                assert conn.makefile("rb").readline() == b"ping\n"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


# -- metrics ------------------------------------------------------------------------------------


def nodes(up: Up) -> list[str]:
    items = up.json("get", "nodes", "-l", f"vmlet.io/provider={up.iaas}")["items"]
    assert items
    return sorted(n["metadata"]["name"] for n in items)


def test_top_node(up: Up, vm: str) -> None:
    top_node = up.ok("top", "node", timeout=90)
    for name in nodes(up):
        assert re.search(rf"^{re.escape(name)}\s+\d+m\s+\d+%", top_node, re.M), top_node


def test_top_pod(up: Up, vm: str) -> None:
    pod, _ = up.vm_pod()
    top_pod = up.ok("top", "pod", pod, timeout=60)
    assert re.search(rf"^{re.escape(pod)}\s+\d+m\s+\d+Mi\s*$", top_pod, re.M), top_pod


def test_node_proxy_for_every_node(up: Up, vm: str) -> None:
    pod, status = up.vm_pod()
    for name in nodes(up):
        summary = json.loads(up.ok("get", "--raw", f"/api/v1/nodes/{name}/proxy/stats/summary"))
        assert summary["node"]["nodeName"] == name
        pods = json.loads(up.ok("get", "--raw", f"/api/v1/nodes/{name}/proxy/pods"))
        assert pods["kind"] == "PodList"
        here = [p["metadata"]["name"] for p in pods["items"]]
        assert (pod in here) == (name == status["nodeName"]), (name, here)
        metrics = up.ok("get", "--raw", f"/api/v1/nodes/{name}/proxy/metrics/resource")
        assert "node_cpu_usage_seconds_total" in metrics and "resource_scrape_error 0" in metrics
        if name == status["nodeName"]:
            assert f'pod="{pod}"' in metrics
            assert [p for p in summary["pods"] if p["podRef"]["name"] == pod]


# -- down ---------------------------------------------------------------------------------------


def test_down_leaves_nothing(up: Up, vm: str) -> None:
    directory = up.directory
    kubelet = json.loads((directory / "kubelet-netns.json").read_text())["name"]
    guests = [json.loads(r.read_text())["name"]
              for r in (directory / "guest-netns").glob("*.json")]
    made = {kubelet, *guests}
    assert made <= netns_names()
    assert (up.iaas == "vsphere") == bool(guests), guests  # the VM's guest, on vsphere
    running = processes_of(directory)
    server = int((directory / "localenv.pid").read_text())
    assert server in running and len(running) >= 6, running  # etcd, apiserver, ... , facade

    down = localenv("down", "--dir", str(directory))
    assert down.returncode == 0 and "stopped" in down.stdout, down
    assert not made & netns_names(), made & netns_names()
    eventually(lambda: not processes_of(directory), timeout=30,
               what="no process of the environment left")
    assert not (directory / "localenv.pid").exists()
    assert localenv("status", "--dir", str(directory)).returncode == 3
