"""Whether the OpenStack env can start here: the pinned release, its virtualenv, RabbitMQ and
MariaDB."""

from __future__ import annotations

import os
from pathlib import Path

from ._mariadb import mariadbd_path
from ._rabbit import rabbitmq_server_path

__all__ = ["OPENSTACK_RELEASE", "OpenStackNotInstalled", "default_venv", "installed"]

OPENSTACK_RELEASE = "2025.2"


class OpenStackNotInstalled(RuntimeError):
    """The OpenStack virtualenv, rabbitmq-server or mariadb-server is missing.

    hack/openstack/install.sh installs all three.
    """


def default_venv() -> Path:
    """Where hack/openstack/install.sh puts the OpenStack virtualenv."""
    if v := os.environ.get("VMLET_OPENSTACK_VENV"):
        return Path(v)
    cache = Path(os.environ.get("VMLET_CACHE", Path.home() / ".cache" / "vmlet"))
    return cache / f"openstack-{OPENSTACK_RELEASE}"


def installed(venv: Path | None = None) -> str | None:
    """None when the env can start; otherwise why not, in a sentence."""
    venv = venv or default_venv()
    if not (venv / ".vmlet-installed").is_file():
        return f"the OpenStack {OPENSTACK_RELEASE} virtualenv is not at {venv}"
    if not (venv / "bin" / "cinder-volume").is_file():
        return f"the OpenStack {OPENSTACK_RELEASE} virtualenv at {venv} predates Cinder"
    if rabbitmq_server_path() is None:
        return "rabbitmq-server is not installed"
    if mariadbd_path() is None:
        return "mariadb-server is not installed"
    return None
