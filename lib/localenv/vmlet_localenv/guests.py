"""Guests for the VMs on vcsim: what `make up` (IAAS=vsphere) gives a VM so it can be entered.

vcsim runs no guests, so no VM would ever report a guest IP and `kubectl exec` / `port-forward`
would answer "the guest has no IP yet". `GuestStandIn` watches vcsim (every ``interval``
seconds) and, for every powered-on VM that carries a vmlet identity and reports no guest IP,
starts a guest: Debian's OpenSSH server (/usr/sbin/sshd, from hack/install-test-deps.sh) in a
network namespace of its own (`vmlet_localenv.netns.Netns`) and a UTS namespace whose hostname
is the VM's name (shortened to 64 characters), so `kubectl exec <pod> -- hostname` answers
which VM it reached. It then reports the namespace's address as the VM's guest IP the way
VMware Tools would (SET.guest.ipAddress), with the quick stats of an idle guest (vcsim reports
zero usage, which metrics-server drops, so `kubectl top pod` would show nothing). The guest's
filesystem is this machine's, as in tests/test_guest_access.py. When the VM is powered off or
destroyed, its sshd and every process left in its namespace are killed and the namespace
removed; `stop` does that for all of them.

Every guest accepts one key pair and shows one host key, both made when the stand-in starts,
as 0600 files in its directory: ``id_ed25519`` (root's login key), ``host_key``, and
``known_hosts`` (the host key for every address of `POOL`, a wildcard line). `secret` is the
Secret (`SECRET_NAME`) a VirtualMachine names in spec.access.sshSecretName (a bare pod: the
annotation vmlet.io/ssh-secret) to be entered. Logs are left alone: on vSphere `kubectl logs`
shows the VM's vCenter events, not the guest's.

Namespaces are recorded under ``records`` as they are made, so a later start removes (with
their processes) those a killed run left. Needs root, iproute2, unshare and sshd;
`GuestsUnavailable` says which is missing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.netns import POOL, Netns, NetnsUnavailable
from vmlet_localenv.private import open_private_log, private_dir, write_private
from vmlet_localenv.vcsim import VcSim

__all__ = ["SECRET_NAME", "SSHD", "Guest", "GuestStandIn", "GuestsUnavailable", "guest_hostname"]

log = logging.getLogger(__name__)

SECRET_NAME = "vmlet-guest-ssh"
SSHD = Path("/usr/sbin/sshd")
HOSTNAME_MAX = 64
_IDENTITY = 'config.extraConfig["vmlet.identity"]'
#: What a guest reports using, as vSphere's quick stats: CPU in MHz, memory in MB.
IDLE_USAGE = {"overallCpuUsage": 42, "guestMemoryUsage": 180, "hostMemoryUsage": 230}
_PATHS = ("name", "runtime.powerState", "guest.ipAddress", _IDENTITY)


class GuestsUnavailable(RuntimeError):
    """Guests cannot run here: not root, or iproute2, unshare or sshd missing."""


@dataclass(frozen=True)
class Guest:
    """The guest of VM ``vm`` (its managed object id), called ``hostname``, at ``netns.ip``."""

    vm: str
    hostname: str
    netns: Netns
    process: subprocess.Popen[bytes]
    log: Path


def guest_hostname(vm_name: str) -> str:
    """The hostname of a VM's guest: its name, cut to 64 characters keeping the tail (the
    provider ends VM names with a hash of the identity)."""
    if len(vm_name) <= HOSTNAME_MAX:
        return vm_name
    return f"{vm_name[: HOSTNAME_MAX - 9].rstrip('-')}-{vm_name[-8:]}"


def _host_patterns() -> str:
    """known_hosts patterns covering every address of `POOL` (a /15: ``198.18.*,198.19.*``)."""
    return ",".join(str(n.network_address).rsplit(".", 2)[0] + ".*"
                    for n in POOL.subnets(new_prefix=16))


def _keypair(private: Path, comment: str) -> str:
    """Write a new ed25519 private key (OpenSSH format, 0600) to ``private``; its public line."""
    key = Ed25519PrivateKey.generate()
    write_private(private, key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.OpenSSH,
                                             serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return f"{public} {comment}"


def _kill_inside(netns: str) -> None:
    """SIGKILL every process in network namespace ``netns`` (sessions sshd forked included)."""
    found = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                           check=False, timeout=30)
    for pid in found.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


class GuestStandIn:
    """Starts and stops a guest for each running VM of ``sim``; keys and logs in ``directory``,
    records of the namespaces in ``records`` (``directory/netns`` unless given)."""

    def __init__(self, sim: VcSim, directory: Path, *, records: Path | None = None,
                 interval: float = 2.0) -> None:
        self._sim = sim
        self.directory = directory
        self._records = records or directory / "netns"
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._guests: dict[str, Guest] = {}
        self._served: set[str] = set()  # VMs that had a guest: their stale IP is ours
        self._si: Any = None
        self._view: Any = None

    # -- keys and the Secret ----------------------------------------------------------------

    @property
    def private_key(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    def _make_keys(self) -> None:
        private_dir(self.directory)
        host = _keypair(self.directory / "host_key", "vmlet-guest-host")
        write_private(self.directory / "authorized_keys",
                      _keypair(self.private_key, "vmlet-guest-login") + "\n")
        write_private(self.known_hosts, f"{_host_patterns()} {host}\n")
        write_private(self.directory / "sshd_config", "\n".join([
            "Port 22", "ListenAddress 0.0.0.0", f"HostKey {self.directory / 'host_key'}",
            "PidFile none", f"AuthorizedKeysFile {self.directory / 'authorized_keys'}",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PrintMotd no",
            "PrintLastLog no", "LogLevel VERBOSE", "",
        ]))

    def secret(self, namespace: str = "default", name: str = SECRET_NAME) -> dict[str, Any]:
        """The Secret every guest accepts: root's key and the guests' host key."""
        return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/ssh-auth",
                "metadata": {"name": name, "namespace": namespace},
                "stringData": {"ssh-privatekey": self.private_key.read_text(),
                               "known_hosts": self.known_hosts.read_text()}}

    def apply_secret(self, cp: ControlPlane, namespace: str = "default",
                     name: str = SECRET_NAME) -> None:
        """Create or update `secret` in ``namespace`` of ``cp``."""
        cp.kubectl("apply", "-f", "-", input=json.dumps(self.secret(namespace, name)))

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> GuestStandIn:
        """Make the keys, remove what a killed run left, and watch vcsim in a thread."""
        if os.geteuid() != 0:
            raise GuestsUnavailable("guests need root (network namespaces)")
        missing = [what for what, there in (("iproute2", shutil.which("ip")),
                                            ("unshare", shutil.which("unshare")),
                                            (str(SSHD), SSHD.exists())) if not there]
        if missing:
            raise GuestsUnavailable(f"guests need {', '.join(missing)} "
                                    "(hack/install-test-deps.sh installs sshd)")
        self._remove_recorded()
        self._make_keys()
        # sshd wants its privilege separation directory, which the package's service makes.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="vm-guests", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching; stop every guest and remove its namespace."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._lock:
            guests = list(self._guests.values())
            self._guests.clear()
        for guest in guests:
            self._stop_guest(guest)
        self._disconnect()

    def guests(self) -> dict[str, Guest]:
        """The running guests, by VM managed object id."""
        with self._lock:
            return dict(self._guests)

    def _remove_recorded(self) -> None:
        if not self._records.is_dir():
            return
        for record in self._records.glob("*.json"):
            try:
                _kill_inside(json.loads(record.read_text())["name"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
            Netns.remove_recorded(record)

    # -- the watch ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as err:  # vcsim away for a moment: connect again next round
                log.warning("guests: %s", err)
                self._disconnect()
            self._stop.wait(self._interval)

    def _connect(self) -> Any:
        if self._si is None:
            from pyVim.connect import SmartConnect
            from pyVmomi import vim

            self._si = SmartConnect(host="127.0.0.1", port=self._sim.port,
                                    user=self._sim.username, pwd=self._sim.password,
                                    sslContext=self._sim.ssl_context())
            content = self._si.RetrieveContent()
            self._view = content.viewManager.CreateContainerView(
                content.rootFolder, [vim.VirtualMachine], True)
        return self._si

    def _disconnect(self) -> None:
        si, self._si, self._view = self._si, None, None
        if si is not None:
            try:
                from pyVim.connect import Disconnect

                Disconnect(si)
            except Exception:  # already gone
                pass

    def _vms(self) -> dict[str, tuple[Any, dict[str, Any]]]:
        """Every VM of vcsim: managed object id -> (the VM, its `_PATHS` values)."""
        from pyVmomi import vim, vmodl

        si = self._connect()
        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(
            objectSet=[pc.ObjectSpec(obj=self._view, skip=True, selectSet=[
                pc.TraversalSpec(path="view", skip=False, type=vim.view.ContainerView)])],
            propSet=[pc.PropertySpec(type=vim.VirtualMachine, pathSet=list(_PATHS))])
        collector = si.RetrieveContent().propertyCollector
        result = collector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
        out: dict[str, tuple[Any, dict[str, Any]]] = {}
        while result is not None:
            for obj in result.objects or ():
                props = {p.name: p.val for p in obj.propSet or ()}
                identity = props.get(_IDENTITY)
                props[_IDENTITY] = getattr(identity, "value", None)
                out[obj.obj._moId] = (obj.obj, props)
            if not result.token:
                break
            result = collector.ContinueRetrievePropertiesEx(token=result.token)
        return out

    def sync(self) -> None:
        """Start a guest for each running VM that wants one; stop those whose VM is gone or
        powered off."""
        vms = self._vms()
        running = {moid: (vm, props) for moid, (vm, props) in vms.items()
                   if props.get(_IDENTITY) and props.get("runtime.powerState") == "poweredOn"}
        for moid, guest in self.guests().items():
            if moid not in running:
                with self._lock:
                    self._guests.pop(moid, None)
                log.info("guest of VM %s (%s) stopped: the VM is off or gone", moid,
                         guest.hostname)
                self._stop_guest(guest)
        for moid, (vm, props) in running.items():
            if self._stop.is_set():
                return
            if moid in self.guests() or (props.get("guest.ipAddress")
                                         and moid not in self._served):
                continue  # has a guest already (another's, when it is not ours)
            try:
                self._serve(moid, vm, str(props.get("name") or moid))
            except Exception as err:  # tried again next round; the other VMs go on
                log.warning("guest of VM %s: %s", moid, err)

    # -- one guest ---------------------------------------------------------------------------

    def _serve(self, moid: str, vm: Any, name: str) -> None:
        guest = self._start_guest(moid, guest_hostname(name))
        with self._lock:
            self._guests[moid] = guest
        self._served.add(moid)
        try:
            self._report_ip(vm, guest.netns.ip)
        except Exception:
            with self._lock:
                self._guests.pop(moid, None)
            self._stop_guest(guest)
            raise
        log.info("guest of VM %s (%s) at %s", moid, guest.hostname, guest.netns.ip)

    def _start_guest(self, moid: str, hostname: str) -> Guest:
        try:
            netns = Netns.make("vmlet-guest")
        except NetnsUnavailable as err:
            raise GuestsUnavailable(str(err)) from err
        private_dir(self._records)
        netns.record(self._records / f"{netns.name}.json")
        path = self.directory / "logs" / f"{hostname}.log"
        with open_private_log(path) as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", netns.name, "unshare", "--uts", "sh", "-c",
                 'hostname "$1" && exec "$2" -D -e -f "$3"', "sh", hostname, str(SSHD),
                 str(self.directory / "sshd_config")],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        guest = Guest(moid, hostname, netns, process, path)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((netns.ip, 22), timeout=1).close()
                return guest
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                self._stop_guest(guest)
                raise RuntimeError(f"the guest's sshd for VM {moid} did not listen: "
                                   f"{path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)

    def _report_ip(self, vm: Any, ip: str) -> None:
        """Report ``ip`` as ``vm``'s guest address, as VMware Tools would, and the usage of an
        idle guest (`IDLE_USAGE`) as the host's quick stats would, in one reconfiguration (each
        one is a line of the VM's log)."""
        from pyVmomi import vim

        task = vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=[
            vim.option.OptionValue(key="SET.guest.ipAddress", value=ip),
            *(vim.option.OptionValue(key=f"SET.summary.quickStats.{k}", value=v)
              for k, v in IDLE_USAGE.items())]))
        deadline = time.monotonic() + 30
        while task.info.state not in ("success", "error"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reporting guest IP {ip}: the task did not end")
            time.sleep(0.05)
        if task.info.state == "error":
            raise RuntimeError(f"reporting guest IP {ip}: {task.info.error.msg}")

    def _stop_guest(self, guest: Guest) -> None:
        guest.process.terminate()
        try:
            guest.process.wait(10)
        except subprocess.TimeoutExpired:
            guest.process.kill()
            guest.process.wait()
        _kill_inside(guest.netns.name)
        guest.netns.remove()
        (self._records / f"{guest.netns.name}.json").unlink(missing_ok=True)
