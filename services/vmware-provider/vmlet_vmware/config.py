"""What the vSphere provider is pointed at, from flags, environment or a TOML file.

The settings follow the convention of `vmlet_contract.settings`: every one has a flag, an
environment variable (VMLET_VSPHERE_<NAME>) and a key in the TOML file given by --config (or
VMLET_VSPHERE_CONFIG), at the top or in a [vsphere] table, with that precedence: flag, then
environment, then file, then the default (`vm-folder = "vmlet"`; underscores work too).

Credentials never come from a flag, so they never show in `ps`: the user name may, the password
comes from VMLET_VSPHERE_PASSWORD or from a file (--password-file, VMLET_VSPHERE_PASSWORD_FILE, or
`password-file` in the config file), as a Kubernetes Secret is mounted; a password file is read
again at every login, so a rotated Secret is picked up without a restart. The password is held
in a `Secret`, whose repr and str are "[redacted]", so it cannot end up in a log line or an
error.

TLS to vCenter is verified, against --ca-file when given and the system's roots otherwise.
Verification is only ever turned off by the --insecure flag itself (no environment variable, no
file key), so nobody turns it off by accident.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from vmlet_contract.settings import (
    ConfigError,
    Option,
    Options,
    Secret,
    positive_float,
    positive_int,
)

__all__ = [
    "ENV_PREFIX",
    "OPTIONS",
    "ConfigError",
    "Secret",
    "Settings",
    "VCenterAddress",
    "add_vsphere_arguments",
    "describe",
    "read_password",
    "settings_from_args",
]

ENV_PREFIX: Final = "VMLET_VSPHERE_"


@dataclass(frozen=True)
class VCenterAddress:
    """Where the vSphere API answers."""

    host: str
    port: int = 443
    path: str = "/sdk"

    @classmethod
    def parse(cls, url: str) -> VCenterAddress:
        """Accepts `https://host[:port][/sdk]`, `host:port` or `host`."""
        text = url.strip()
        if not text:
            raise ConfigError("the vCenter URL is empty")
        if "://" not in text:
            text = f"https://{text}"
        parts = urlsplit(text)
        if parts.scheme != "https":
            raise ConfigError(f"the vCenter URL must use https, not {parts.scheme}")
        if not parts.hostname:
            raise ConfigError(f"the vCenter URL {url!r} has no host")
        try:
            port = parts.port or 443
        except ValueError as exc:
            raise ConfigError(f"the vCenter URL {url!r} has a bad port") from exc
        return cls(host=parts.hostname, port=port, path=parts.path or "/sdk")

    @property
    def url(self) -> str:
        """The address as a URL, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}{self.path}"


@dataclass(frozen=True)
class Settings:
    """The provider's settings; see the module docstring for where each comes from."""

    address: VCenterAddress
    username: str
    password: Secret = field(repr=False)
    password_file: str | None = None
    ca_file: str | None = None
    insecure: bool = False
    datacenter: str | None = None
    clusters: tuple[str, ...] = ()
    vm_folder: str = "vmlet"
    template_folder: str | None = None
    datastore: str | None = None
    network: str | None = None
    node_prefix: str = "vsphere"
    reserve_cpu: str = "0"
    reserve_memory: str = "0"
    max_pods: int = 110
    workers: int = 8
    max_creates: int = 16
    keepalive_seconds: float = 60.0
    watch_wait_seconds: int = 20
    http_timeout_seconds: float = 60.0
    task_timeout_seconds: float = 1800.0
    reconnect_max_seconds: float = 10.0
    log_poll_seconds: float = 1.0


OPTIONS: Final = Options(
    "vsphere",
    [
        Option("url", "vCenter (or ESXi) SDK URL, e.g. https://vcenter.example.com/sdk"),
        Option("username", "user to log in as"),
        Option("password-file", "file holding the password (else env VMLET_VSPHERE_PASSWORD)"),
        Option("ca-file", "CA bundle (PEM) vCenter's certificate is checked against"),
        Option("datacenter", "datacenter to serve (default: the only one)"),
        Option(
            "cluster",
            "cluster whose hosts become nodes; repeat for more (default: every host in the "
            "datacenter); comma-separated in env and file",
            multiple=True,
        ),
        Option(
            "vm-folder", "VM folder, under the datacenter's, where VMs are made", default="vmlet"
        ),
        Option(
            "template-folder",
            "VM folder where templates are looked up (default: the whole datacenter)",
        ),
        Option("datastore", "datastore for clones (default: the template's)"),
        Option("network", "network (port group) for the VM's first NIC (default: the template's)"),
        Option("node-prefix", "node names are PREFIX-<host name>", default="vsphere"),
        Option("reserve-cpu", "CPU kept back from each host's allocatable (quantity)", default="0"),
        Option(
            "reserve-memory",
            "memory kept back from each host's allocatable (quantity)",
            default="0",
        ),
        Option("max-pods", "pods each node admits", convert=positive_int, default=110),
        Option("workers", "threads that talk to vCenter", convert=positive_int, default=8),
        Option(
            "max-creates",
            "CreatePods worked on at once (clone to power-on); more wait their turn",
            convert=positive_int,
            default=16,
        ),
        Option(
            "keepalive-seconds", "how often the session is checked", positive_float, default=60.0
        ),
        Option(
            "watch-wait-seconds",
            "longest a WaitForUpdatesEx call waits",
            convert=positive_int,
            default=20,
        ),
        Option(
            "http-timeout-seconds", "socket timeout of vCenter calls", positive_float, default=60.0
        ),
        Option(
            "task-timeout-seconds", "longest a vSphere task is waited for", positive_float, 1800.0
        ),
        Option(
            "reconnect-max-seconds",
            "longest pause between attempts to reach vCenter",
            positive_float,
            10.0,
        ),
        Option(
            "log-poll-seconds", "how often a followed log looks for events", positive_float, 1.0
        ),
        Option("password", "the password (env only)", secret=True),
        Option(
            "insecure",
            "do not verify vCenter's TLS certificate",
            flag_only=True,
        ),
    ],
)


def add_vsphere_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --config, the vSphere flags and --insecure in a group of their own."""
    OPTIONS.add_arguments(parser)


def read_password(path: str) -> Secret:
    """The password in file `path` (a trailing newline dropped); ConfigError when unreadable."""

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the password file {path}: {exc.strerror}") from exc
    return Secret(text.rstrip("\r\n"))


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Resolves flags, environment and config file into `Settings`; ConfigError when something
    needed is missing or malformed. The message never carries the password."""
    values = OPTIONS.resolve(args, env)
    for name, what in (("url", "the vCenter URL"), ("username", "the user name")):
        if not values[name]:
            raise ConfigError(f"{what} is missing: {OPTIONS.source_of(name)}")
    if values["password_file"]:
        password = read_password(values["password_file"])
    elif values["password"]:
        password = values["password"]
    else:
        raise ConfigError(
            f"the password is missing: {OPTIONS.source_of('password-file')}, "
            f"or {OPTIONS.source_of('password')}"
        )
    if values["insecure"] and values["ca_file"]:
        raise ConfigError("--insecure and --ca-file contradict each other; give one")
    if values["ca_file"] and not Path(values["ca_file"]).is_file():
        raise ConfigError(f"the CA file {values['ca_file']} does not exist")
    if values["watch_wait_seconds"] >= values["http_timeout_seconds"]:
        raise ConfigError("--watch-wait-seconds must be shorter than --http-timeout-seconds")
    folder = str(values["vm_folder"]).strip("/")
    if not folder:
        raise ConfigError("--vm-folder must name a folder")
    return Settings(
        address=VCenterAddress.parse(values["url"]),
        username=values["username"],
        password=password,
        password_file=values["password_file"],
        ca_file=values["ca_file"],
        insecure=values["insecure"],
        datacenter=values["datacenter"],
        clusters=values["cluster"],
        vm_folder=folder,
        template_folder=(values["template_folder"] or "").strip("/") or None,
        datastore=values["datastore"],
        network=values["network"],
        node_prefix=values["node_prefix"],
        reserve_cpu=values["reserve_cpu"],
        reserve_memory=values["reserve_memory"],
        max_pods=values["max_pods"],
        workers=values["workers"],
        max_creates=values["max_creates"],
        keepalive_seconds=values["keepalive_seconds"],
        watch_wait_seconds=values["watch_wait_seconds"],
        http_timeout_seconds=values["http_timeout_seconds"],
        task_timeout_seconds=values["task_timeout_seconds"],
        reconnect_max_seconds=values["reconnect_max_seconds"],
        log_poll_seconds=values["log_poll_seconds"],
    )


def describe(settings: Settings) -> dict[str, Any]:
    """The settings as log fields, without the password."""
    return {
        "vcenter": settings.address.url,
        "username": settings.username,
        "tls": "insecure" if settings.insecure else ("ca-file" if settings.ca_file else "system"),
        "datacenter": settings.datacenter or "(only one)",
        "clusters": ",".join(settings.clusters) or "(all)",
        "vm_folder": settings.vm_folder,
        "template_folder": settings.template_folder or "(anywhere)",
        "datastore": settings.datastore or "(template's)",
        "network": settings.network or "(template's)",
    }
