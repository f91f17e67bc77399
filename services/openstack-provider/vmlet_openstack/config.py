"""What the OpenStack provider is pointed at and how it behaves: flags, environment, TOML file.

Authentication is openstacksdk's own, OpenStack's standard: a cloud of a clouds.yaml (--cloud;
the file from --clouds-yaml, or the usual places: ./clouds.yaml, ~/.config/openstack/clouds.yaml,
/etc/openstack/clouds.yaml), or, with no cloud named, the OS_* variables (OS_AUTH_URL,
OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME, ...). No flag or vmlet setting takes a password or a
token, so none shows in `ps`; `describe` gives the settings as log fields without them.

Every setting follows `vmlet_contract.settings`: flag, then environment VMLET_OPENSTACK_<NAME>,
then a key of the TOML file of --config (VMLET_OPENSTACK_CONFIG), then the default. The cloud,
clouds.yaml and region also fall back to openstacksdk's own OS_CLOUD, OS_CLIENT_CONFIG_FILE and
OS_REGION_NAME.

  --cloud                 the clouds.yaml entry (none: the OS_* variables)
  --clouds-yaml           a clouds.yaml to read
  --region                the region (the cloud's own when unset)
  --network               none (default: no ports), auto, or network names/IDs
  --node-prefix           node names are PREFIX-<compute host> (openstack)
  --max-pods              pods each node admits (110)
  --migration             auto (live, else cold), live or cold
  --workers               threads making OpenStack calls (8)
  --api-timeout-seconds   one HTTP request to OpenStack (30)
  --read-retry-seconds    a read retries a dropped connection (15)
  --poll-seconds          the server list interval (2)
  --fast-poll-seconds     the interval while an operation waits (0.5)
  --resync-seconds        a full server list this often (60)
  --node-poll-seconds     compute services and hypervisors (10)
  --operation-timeout-seconds  one migrate/resize/stop (600)
  --log-poll-seconds      console polling of followed logs (2)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from vmlet_contract.settings import ConfigError, Option, Options, at_least

__all__ = [
    "ENV_PREFIX",
    "OPTIONS",
    "ConfigError",
    "Settings",
    "add_openstack_arguments",
    "describe",
    "settings_from_args",
]

ENV_PREFIX: Final = "VMLET_OPENSTACK_"
MIGRATIONS: Final = ("auto", "live", "cold")


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


OPTIONS: Final = Options(
    "openstack",
    [
        Option(
            "cloud",
            "the cloud in clouds.yaml (none: the OS_* variables)",
            fallback_env=("OS_CLOUD",),
        ),
        Option(
            "clouds-yaml",
            "a clouds.yaml to read (default: the usual places)",
            metavar="PATH",
            fallback_env=("OS_CLIENT_CONFIG_FILE",),
        ),
        Option(
            "region", "the region (the cloud's own when unset)", fallback_env=("OS_REGION_NAME",)
        ),
        Option(
            "network",
            "none (no ports), auto, or a network name or ID; repeat for more",
            multiple=True,
            metavar="NAME",
        ),
        Option("node-prefix", "node names are PREFIX-<compute host>", default="openstack"),
        Option("max-pods", "pods each node admits", at_least(int, 1), 110),
        Option("migration", "how servers move between hosts", default="auto", choices=MIGRATIONS),
        Option("workers", "threads making OpenStack calls", at_least(int, 1), 8),
        Option("api-timeout-seconds", "one HTTP request to OpenStack", at_least(float, 0.5), 30.0),
        Option(
            "read-retry-seconds",
            "how long a read retries a refused or reset connection",
            at_least(float, 0.0),
            15.0,
        ),
        Option("poll-seconds", "interval of the server list", at_least(float, 0.1), 2.0),
        Option(
            "fast-poll-seconds",
            "interval of the server list while an operation waits",
            at_least(float, 0.1),
            0.5,
        ),
        Option("resync-seconds", "interval of a full server list", at_least(float, 1.0), 60.0),
        Option(
            "node-poll-seconds",
            "interval of the compute service and hypervisor lists",
            at_least(float, 0.5),
            10.0,
        ),
        Option(
            "operation-timeout-seconds",
            "how long one migrate, resize, start or stop may take",
            at_least(float, 1.0),
            600.0,
        ),
        Option(
            "log-poll-seconds",
            "console polling interval of followed logs",
            at_least(float, 0.1),
            2.0,
        ),
    ],
)


def add_openstack_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --config and the OpenStack flags of the module docstring to `parser`."""
    OPTIONS.add_arguments(parser)


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Resolves flags, environment and config file into `Settings` (flag, then environment,
    then file, then the default); ConfigError when a value is malformed."""
    values = OPTIONS.resolve(args, env)
    networks: tuple[str, ...] = values["network"] or ("none",)
    lowered = tuple(n.lower() for n in networks)
    if ("none" in lowered or "auto" in lowered) and len(networks) > 1:
        raise ConfigError("--network none and auto stand alone, not with other networks")
    values["network"] = lowered if lowered[0] in ("none", "auto") else networks
    prefix = values["node_prefix"].strip().lower()
    if not prefix or not all(c.isalnum() or c == "-" for c in prefix) or prefix[0] == "-":
        raise ConfigError("--node-prefix must be lower-case letters, digits and dashes")
    values["node_prefix"] = prefix
    if values["clouds_yaml"] and not os.path.isfile(values["clouds_yaml"]):
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
