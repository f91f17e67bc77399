"""govmomi's vcsim on loopback: one datacenter, one cluster of hosts, a datastore, a port group,
and VM templates to clone from, behind a TLS certificate of the run's CA.

The password never appears on vcsim's command line or in its log: vcsim reads ``-password``
from a file when the value names one (govmomi's session.Secret), and prints its URL (with the
credentials in it) to the owner-only file given with ``-E`` instead of its log; that file is read
once and removed. The state directory is 0700.
"""

from __future__ import annotations

import re
import secrets
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmlet_localenv.pki import CertificateAuthority
from vmlet_localenv.private import private_dir, write_private
from vmlet_localenv.processes import Process, free_port, wait_for
from vmlet_localenv.tools import binary

__all__ = ["DEFAULT_TEMPLATES", "VcSim"]

DEFAULT_TEMPLATES = ("debian-12", "ubuntu-24.04")
TEMPLATE_FOLDER = "vmlet-templates"


@dataclass
class VcSim:
    """A vcsim process and what a client needs to reach it."""

    hosts: int = 3
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    state_dir: Path | None = None
    username: str = "vmlet"  # vcsim refuses user names with "@"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    process: Process | None = None
    extra_args: tuple[str, ...] = ()  # more vcsim flags, e.g. ("-method-delay", "PowerOn:500")

    def __post_init__(self) -> None:
        self._own_dir = self.state_dir is None
        self.dir = private_dir(Path(self.state_dir or tempfile.mkdtemp(prefix="vmlet-vcsim-")))
        self._password_file = write_private(self.dir / "password", self.password + "\n")
        self._env_file = self.dir / "vcsim.env"
        ca = CertificateAuthority(self.dir / "pki", "vcsim-ca")
        self.ca_file = ca.cert_path
        self._serving = ca.issue("vcsim", common_name="vcsim", dns_names=("localhost",),
                                 ips=("127.0.0.1",), server=True)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}/sdk"

    def start(self, timeout: float = 60.0) -> VcSim:
        write_private(self._env_file, b"")  # vcsim opens it for writing, never creates it
        self.process = Process("vcsim", [
            str(binary("vcsim")), "-l", f"127.0.0.1:{self.port}",
            "-dc", "1", "-cluster", "1", "-host", str(self.hosts), "-standalone-host", "0",
            "-vm", "0", "-ds", "1", "-pg", "1", "-autostart=false",
            "-username", self.username, "-password", str(self._password_file),
            "-E", str(self._env_file),
            "-tlscert", str(self._serving.cert), "-tlskey", str(self._serving.key),
            *self.extra_args,
        ], log_dir=self.dir / "logs").start()
        try:
            wait_for(self._printed_url, timeout=timeout, what="vcsim",
                     alive=self.process.check_alive)
            self._make_templates()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def restart(self, timeout: float = 60.0) -> None:
        """Stop vcsim and start a fresh one on the same port: the inventory is new."""
        if self.process is not None:
            self.process.stop()
            self.process.log_path.unlink(missing_ok=True)
        own, self._own_dir = self._own_dir, False
        try:
            self.start(timeout)
        finally:
            self._own_dir = own

    def _printed_url(self) -> bool:
        if not re.search(r"GOVC_URL=", self._env_file.read_text(errors="replace")):
            return False
        self._env_file.unlink()  # it holds the credentials; the URL is known already
        return True

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A pyvmomi ServiceInstance logged in with the simulator's credentials."""
        from pyVim.connect import Disconnect, SmartConnect

        si = SmartConnect(host="127.0.0.1", port=self.port, user=self.username,
                          pwd=self.password, sslContext=self.ssl_context())
        try:
            yield si
        finally:
            Disconnect(si)

    def env(self) -> dict[str, str]:
        """The variables that tell a client (and govc) where the simulator is."""
        return {
            "VMLET_VSPHERE_URL": self.url,
            "VMLET_VSPHERE_USERNAME": self.username,
            "VMLET_VSPHERE_PASSWORD": self.password,
            "VMLET_VSPHERE_CA_FILE": str(self.ca_file),
        }

    def _make_templates(self) -> None:
        from pyVmomi import vim

        with self.connect() as si:
            content = si.RetrieveContent()
            dc = content.rootFolder.childEntity[0]
            cluster = dc.hostFolder.childEntity[0]
            datastore = dc.datastore[0]
            folder = dc.vmFolder.CreateFolder(TEMPLATE_FOLDER)
            for name in self.templates:
                disk = vim.vm.device.VirtualDeviceSpec(
                    operation="add", fileOperation="create",
                    device=vim.vm.device.VirtualDisk(
                        capacityInKB=8 * 1024 * 1024, key=-1, unitNumber=0, controllerKey=1000,
                        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                            diskMode="persistent", thinProvisioned=True,
                        ),
                    ),
                )
                scsi = vim.vm.device.VirtualDeviceSpec(
                    operation="add",
                    device=vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0,
                                                                   sharedBus="noSharing"),
                )
                spec = vim.vm.ConfigSpec(
                    name=name, guestId="debian12_64Guest", numCPUs=1, memoryMB=512,
                    files=vim.vm.FileInfo(vmPathName=f"[{datastore.name}]"),
                    deviceChange=[scsi, disk],
                )
                task = folder.CreateVM_Task(config=spec, pool=cluster.resourcePool)
                _wait_task(task)
                task.info.result.MarkAsTemplate()


def _wait_task(task: Any, timeout: float = 60.0) -> Any:
    wait_for(lambda: task.info.state in ("success", "error"), timeout=timeout,
             what=f"vSphere task {task}", interval=0.05)
    if task.info.state == "error":
        raise RuntimeError(f"vSphere task failed: {task.info.error.msg}")
    return task.info.result
