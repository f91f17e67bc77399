"""What the vSphere provider is pointed at, from flags, environment or a TOML file.

Every setting has a flag, an environment variable (VMLET_VSPHERE_<NAME>) and a key in the file
given by --config (or VMLET_VSPHERE_CONFIG), with that precedence: flag, then environment, then
file, then the default. Keys in the file are the flag names without the dashes in front
(`vm-folder = "vmlet"`; underscores work too).

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
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

__all__ = [
    "ENV_PREFIX",
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


class ConfigError(ValueError):
    """The configuration is incomplete or contradicts itself."""


class Secret:
    """A credential that never shows itself by accident: repr/str print "[redacted]"."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The credential itself, for the one call that needs it."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('[redacted]')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


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


@dataclass(frozen=True)
class _Option:
    name: str  # flag name without dashes; the env var and file key derive from it
    help: str
    convert: Callable[[Any], Any] = str
    default: Any = None
    multiple: bool = False
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


def _positive_int(value: Any) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"{value} is not a positive whole number")
    return number


def _positive_float(value: Any) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError(f"{value} is not a positive number")
    return number


_OPTIONS: Final[tuple[_Option, ...]] = (
    _Option("url", "vCenter (or ESXi) SDK URL, e.g. https://vcenter.example.com/sdk"),
    _Option("username", "user to log in as"),
    _Option("password-file", "file holding the password (else env VMLET_VSPHERE_PASSWORD)"),
    _Option("ca-file", "CA bundle (PEM) vCenter's certificate is checked against"),
    _Option("datacenter", "datacenter to serve (default: the only one)"),
    _Option(
        "cluster",
        "cluster whose hosts become nodes; repeat for more (default: every host in the "
        "datacenter); comma-separated in env and file",
        multiple=True,
    ),
    _Option("vm-folder", "VM folder, under the datacenter's, where VMs are made", default="vmlet"),
    _Option(
        "template-folder",
        "VM folder where templates are looked up (default: the whole datacenter)",
    ),
    _Option("datastore", "datastore for clones (default: the template's)"),
    _Option("network", "network (port group) for the VM's first NIC (default: the template's)"),
    _Option("node-prefix", "node names are PREFIX-<host name>", default="vsphere"),
    _Option("reserve-cpu", "CPU kept back from each host's allocatable (quantity)", default="0"),
    _Option(
        "reserve-memory", "memory kept back from each host's allocatable (quantity)", default="0"
    ),
    _Option("max-pods", "pods each node admits", convert=_positive_int, default=110),
    _Option("workers", "threads that talk to vCenter", convert=_positive_int, default=8),
    _Option(
        "max-creates",
        "CreatePods worked on at once (clone to power-on); more wait their turn",
        convert=_positive_int,
        default=16,
    ),
    _Option("keepalive-seconds", "how often the session is checked", _positive_float, default=60.0),
    _Option(
        "watch-wait-seconds",
        "longest a WaitForUpdatesEx call waits",
        convert=_positive_int,
        default=20,
    ),
    _Option(
        "http-timeout-seconds", "socket timeout of vCenter calls", _positive_float, default=60.0
    ),
    _Option(
        "task-timeout-seconds", "longest a vSphere task is waited for", _positive_float, 1800.0
    ),
    _Option(
        "reconnect-max-seconds",
        "longest pause between attempts to reach vCenter",
        _positive_float,
        10.0,
    ),
    _Option("log-poll-seconds", "how often a followed log looks for events", _positive_float, 1.0),
)


def add_vsphere_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the vSphere flags (and --config and --insecure) in a group of their own."""
    group = parser.add_argument_group("vsphere")
    group.add_argument(
        "--config",
        default=None,
        metavar="TOML",
        help=f"file with any of these settings (env {ENV_PREFIX}CONFIG)",
    )
    for option in _OPTIONS:
        group.add_argument(
            f"--{option.name}",
            dest=option.dest,
            default=None,
            action="append" if option.multiple else "store",
            metavar=option.metavar,
            help=f"{option.help} (env {option.env})",
        )
    group.add_argument(
        "--insecure",
        action="store_true",
        default=False,
        help="do not verify vCenter's TLS certificate (flag only: never from env or file)",
    )


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    table = data.get("vsphere", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [vsphere] must be a table")
    out = {str(k).replace("_", "-"): v for k, v in table.items()}
    for forbidden in ("password", "insecure"):
        if forbidden in out:
            raise ConfigError(
                f"config file {path} sets {forbidden!r}, which only "
                + (
                    "VMLET_VSPHERE_PASSWORD or password-file may give"
                    if forbidden == "password"
                    else "the --insecure flag may turn on"
                )
            )
    known = {o.name for o in _OPTIONS}
    unknown = sorted(set(out) - known)
    if unknown:
        raise ConfigError(f"config file {path} has unknown keys: {', '.join(unknown)}")
    return out


def _split(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        items = [str(v) for v in value]
    else:
        items = str(value).split(",")
    return [item.strip() for item in items if item.strip()]


def _resolve(
    option: _Option, args: argparse.Namespace, env: Mapping[str, str], file: Mapping[str, Any]
) -> Any:
    value = getattr(args, option.dest, None)
    source = f"--{option.name}"
    if value is None and env.get(option.env):
        value, source = env[option.env], option.env
    if value is None and option.name in file:
        value, source = file[option.name], f"config key {option.name}"
    if value is None:
        return option.default
    if option.multiple:
        flat: list[str] = []
        for item in value if isinstance(value, list) else [value]:
            flat.extend(_split(item))
        return tuple(flat)
    try:
        return option.convert(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from exc


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
    env = os.environ if env is None else env
    config_path = args.config or env.get(ENV_PREFIX + "CONFIG")
    file = _read_file(config_path) if config_path else {}
    values = {o.dest: _resolve(o, args, env, file) for o in _OPTIONS}
    if not values["url"]:
        raise ConfigError(f"the vCenter URL is missing: --url or {ENV_PREFIX}URL")
    if not values["username"]:
        raise ConfigError(f"the user name is missing: --username or {ENV_PREFIX}USERNAME")
    if values["password_file"]:
        password = read_password(values["password_file"])
    elif env.get(ENV_PREFIX + "PASSWORD"):
        password = Secret(env[ENV_PREFIX + "PASSWORD"])
    else:
        raise ConfigError(
            f"the password is missing: --password-file, {ENV_PREFIX}PASSWORD_FILE or "
            f"{ENV_PREFIX}PASSWORD"
        )
    insecure = bool(getattr(args, "insecure", False))
    if insecure and values["ca_file"]:
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
        insecure=insecure,
        datacenter=values["datacenter"],
        clusters=values["cluster"] or (),
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
