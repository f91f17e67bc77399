"""The shape of the pretend IaaS, from flags, environment or a TOML file.

Every setting follows `vmlet_contract.settings`: the flag (--nodes), then the environment
(VMLET_MEMORY_NODES), then a key of the TOML file of --config (VMLET_MEMORY_CONFIG), at the top
or in a [memory] table, then the default. There is no credential to keep out of logs.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from vmlet_contract.settings import ConfigError, Option, Options, at_least, positive_int

from .cloud import CloudOptions
from .hosts import parse_quantity

__all__ = ["OPTIONS", "ConfigError", "Settings", "describe", "settings_from_args"]

_DEFAULTS: Final = CloudOptions()


def _quantity(value: Any) -> str:
    text = str(value)
    parse_quantity(text)
    return text


def _network(value: Any) -> str:
    text = str(value)
    ipaddress.ip_network(text, strict=False)
    return text


OPTIONS: Final = Options(
    "memory",
    [
        Option("nodes", "how many hosts (nodes) to serve", positive_int, _DEFAULTS.nodes),
        Option("node-prefix", "node names are PREFIX-<i>", default=_DEFAULTS.node_prefix),
        Option("cpu", "CPU of each node, as a quantity", _quantity, _DEFAULTS.cpu),
        Option("memory", "memory of each node, as a quantity", _quantity, _DEFAULTS.memory),
        Option("pods", "pods each node admits", positive_int, _DEFAULTS.pods),
        Option(
            "start-delay-seconds",
            "how long a pod stays Pending before it runs",
            at_least(float, 0.0),
            _DEFAULTS.start_delay_seconds,
        ),
        Option("ip-base", "the network pod addresses come from", _network, _DEFAULTS.ip_base),
        Option(
            "images",
            "the images the IaaS has; repeat or comma-separate (default: every well-formed name)",
            multiple=True,
        ),
        Option(
            "networks",
            "the networks the IaaS has; repeat or comma-separate (default: every name)",
            multiple=True,
        ),
        Option("state-file", "keep the state in this JSON file across restarts", Path),
    ],
)


@dataclass(frozen=True)
class Settings:
    """The pretend IaaS and where its state is kept."""

    cloud: CloudOptions
    state_file: Path | None = None


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Resolves flags, environment and config file into `Settings`; ConfigError when a value
    is malformed."""
    values = OPTIONS.resolve(args, env)
    state_file = values.pop("state_file")
    return Settings(cloud=CloudOptions(**values), state_file=state_file)


def describe(settings: Settings) -> dict[str, Any]:
    """The settings as log fields."""
    cloud = settings.cloud
    return {
        "nodes": cloud.nodes,
        "node_prefix": cloud.node_prefix,
        "cpu": cloud.cpu,
        "memory": cloud.memory,
        "state_file": str(settings.state_file) if settings.state_file else "(none)",
    }
