"""What the OpenStack provider is pointed at and how it behaves, from flags and environment.

Authentication is openstacksdk's own: a cloud of a clouds.yaml (--cloud or OS_CLOUD; the file
from --clouds-yaml, OS_CLIENT_CONFIG_FILE, or the usual places: ./clouds.yaml,
~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml), or, with no cloud named, the OS_*
variables (OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME, ...). No flag takes a password
or a token, so none shows in `ps`; `describe` gives the settings as log fields without them.

Every other setting has a flag and an environment variable VMLET_OPENSTACK_<NAME>:

  --cloud                 OS_CLOUD         the clouds.yaml entry (none: the OS_* variables)
  --clouds-yaml           OS_CLIENT_CONFIG_FILE  a clouds.yaml to read
  --region                OS_REGION_NAME   the region (the cloud's own when unset)
  --network               ..._NETWORK      none (default: no ports), auto, or network names/IDs
  --node-prefix           ..._NODE_PREFIX  node names are PREFIX-<compute host> (openstack)
  --max-pods              ..._MAX_PODS     pods each node admits (110)
  --migration             ..._MIGRATION    auto (live, else cold), live or cold
  --workers               ..._WORKERS      threads making OpenStack calls (8)
  --api-timeout-seconds   ..._API_TIMEOUT_SECONDS   one HTTP request to OpenStack (30)
  --read-retry-seconds    ..._READ_RETRY_SECONDS    a read retries a dropped connection (15)
  --poll-seconds          ..._POLL_SECONDS         the server list interval (2)
  --fast-poll-seconds     ..._FAST_POLL_SECONDS    the interval while an operation waits (0.5)
  --resync-seconds        ..._RESYNC_SECONDS       a full server list this often (60)
  --node-poll-seconds     ..._NODE_POLL_SECONDS    compute services and hypervisors (10)
  --operation-timeout-seconds ..._OPERATION_TIMEOUT_SECONDS  one migrate/resize/stop (600)
  --log-poll-seconds      ..._LOG_POLL_SECONDS     console polling of followed logs (2)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ENV_PREFIX",
    "ConfigError",
    "Settings",
    "add_openstack_arguments",
    "describe",
    "settings_from_args",
]

ENV_PREFIX: Final = "VMLET_OPENSTACK_"
MIGRATIONS: Final = ("auto", "live", "cold")


class ConfigError(ValueError):
    """The configuration is incomplete or contradicts itself."""


@dataclass(frozen=True)
class Settings:
    """The provider's settings; holds no credential (openstacksdk reads those itself)."""

    cloud: str | None = None
    clouds_yaml: str | None = None
    region: str | None = None
    network: tuple[str, ...] = ("none",)
    node_prefix: str = "openstack"
    max_pods: int = 110
    migration: str = "auto"
    workers: int = 8
    api_timeout_seconds: float = 30.0
    read_retry_seconds: float = 15.0
    poll_seconds: float = 2.0
    fast_poll_seconds: float = 0.5
    resync_seconds: float = 60.0
    node_poll_seconds: float = 10.0
    operation_timeout_seconds: float = 600.0
    log_poll_seconds: float = 2.0

    @property
    def networks_none(self) -> bool:
        """Whether servers boot without ports (`networks: none`)."""
        return self.network == ("none",)

    @property
    def networks_auto(self) -> bool:
        """Whether Nova picks or makes the project's network (`networks: auto`)."""
        return self.network == ("auto",)


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value else None


def add_openstack_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the flags of the module docstring to `parser`; unset flags read the environment."""
    group = parser.add_argument_group("openstack")
    group.add_argument("--cloud", help="the cloud in clouds.yaml (env OS_CLOUD)")
    group.add_argument(
        "--clouds-yaml", metavar="PATH", help="a clouds.yaml to read (env OS_CLIENT_CONFIG_FILE)"
    )
    group.add_argument("--region", help="the region (env OS_REGION_NAME)")
    group.add_argument(
        "--network",
        action="append",
        metavar="NAME",
        help="none (no ports, the default), auto, or a network name or ID; repeat for more "
        f"(env {ENV_PREFIX}NETWORK, comma-separated)",
    )
    group.add_argument("--node-prefix", help=f"node name prefix (env {ENV_PREFIX}NODE_PREFIX)")
    group.add_argument("--max-pods", type=int, help=f"pods per node (env {ENV_PREFIX}MAX_PODS)")
    group.add_argument(
        "--migration",
        choices=MIGRATIONS,
        help=f"how servers move between hosts (env {ENV_PREFIX}MIGRATION)",
    )
    for name, help_text in (
        ("workers", "threads making OpenStack calls"),
        ("api-timeout-seconds", "timeout of one HTTP request to OpenStack"),
        ("read-retry-seconds", "how long a read retries a refused or reset connection"),
        ("poll-seconds", "interval of the server list"),
        ("fast-poll-seconds", "interval of the server list while an operation waits"),
        ("resync-seconds", "interval of a full server list"),
        ("node-poll-seconds", "interval of the compute service and hypervisor lists"),
        ("operation-timeout-seconds", "how long one migrate, resize, start or stop may take"),
        ("log-poll-seconds", "console polling interval of followed logs"),
    ):
        env_name = ENV_PREFIX + name.upper().replace("-", "_")
        group.add_argument(
            f"--{name}",
            type=int if name == "workers" else float,
            metavar="N",
            help=f"{help_text} (env {env_name})",
        )


def _number(value: Any, source: str, kind: type[int] | type[float], minimum: float) -> Any:
    try:
        out = kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {value!r} is not a number") from exc
    if out < minimum:
        raise ConfigError(f"{source}: must be at least {minimum}")
    return out


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Resolves flags and environment into `Settings` (flag first, then environment, then the
    default); ConfigError when a value is malformed."""
    env = os.environ if env is None else env
    defaults = Settings()

    def pick(dest: str, env_name: str) -> tuple[Any, str]:
        value = getattr(args, dest, None)
        if value is not None:
            return value, "--" + dest.replace("_", "-")
        return _env(env, env_name), env_name

    values: dict[str, Any] = {}
    for dest, env_name in (
        ("cloud", "OS_CLOUD"),
        ("clouds_yaml", "OS_CLIENT_CONFIG_FILE"),
        ("region", "OS_REGION_NAME"),
        ("node_prefix", ENV_PREFIX + "NODE_PREFIX"),
        ("migration", ENV_PREFIX + "MIGRATION"),
    ):
        value, _ = pick(dest, env_name)
        if value is not None:
            values[dest] = str(value)
    for dest, kind, minimum in (
        ("max_pods", int, 1),
        ("workers", int, 1),
        ("api_timeout_seconds", float, 0.5),
        ("read_retry_seconds", float, 0.0),
        ("poll_seconds", float, 0.1),
        ("fast_poll_seconds", float, 0.1),
        ("resync_seconds", float, 1.0),
        ("node_poll_seconds", float, 0.5),
        ("operation_timeout_seconds", float, 1.0),
        ("log_poll_seconds", float, 0.1),
    ):
        value, source = pick(dest, ENV_PREFIX + dest.upper())
        if value is not None:
            values[dest] = _number(value, source, kind, minimum)
    raw: list[str] = list(getattr(args, "network", None) or [])
    if not raw and _env(env, ENV_PREFIX + "NETWORK"):
        raw = [env[ENV_PREFIX + "NETWORK"]]
    networks = tuple(n.strip() for item in raw for n in item.split(",") if n.strip())
    if networks:
        lowered = tuple(n.lower() for n in networks)
        if ("none" in lowered or "auto" in lowered) and len(networks) > 1:
            raise ConfigError("--network none and auto stand alone, not with other networks")
        values["network"] = lowered if lowered[0] in ("none", "auto") else networks
    if values.get("migration", defaults.migration) not in MIGRATIONS:
        raise ConfigError(f"--migration must be one of {', '.join(MIGRATIONS)}")
    prefix = values.get("node_prefix", defaults.node_prefix).strip().lower()
    if not prefix or not all(c.isalnum() or c == "-" for c in prefix) or prefix[0] == "-":
        raise ConfigError("--node-prefix must be lower-case letters, digits and dashes")
    values["node_prefix"] = prefix
    if values.get("clouds_yaml") and not os.path.isfile(values["clouds_yaml"]):
        raise ConfigError(f"the clouds.yaml {values['clouds_yaml']} does not exist")
    return Settings(**values)


def describe(settings: Settings) -> dict[str, Any]:
    """The settings as log fields; there is no credential in them to hide."""
    return {
        "cloud": settings.cloud or "(OS_* environment)",
        "clouds_yaml": settings.clouds_yaml or "(default places)",
        "region": settings.region or "(the cloud's)",
        "network": ",".join(settings.network),
        "node_prefix": settings.node_prefix,
        "migration": settings.migration,
        "workers": settings.workers,
        "poll_seconds": settings.poll_seconds,
    }
