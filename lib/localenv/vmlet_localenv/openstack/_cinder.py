"""Cinder in the env: its configuration, its volume backend and its place in the schema template.

cinder-api (under gunicorn), cinder-scheduler and cinder-volume run as in a small devstack. The
kernel here has no device-mapper (no ``/dev/mapper/control``, no ``dm_mod``, no module loading
in the container), so the reference LVM backend cannot run: ``vgcreate`` and ``lvcreate`` need it.
cinder-volume runs instead with ``vmlet_cinder_backend.SparseFileDriver`` (``_cinder_backend.py``,
copied into the state dir): Cinder's own fake driver, which answers attach and detach like the
fake hypervisor it pairs with, keeping each volume as a sparse file of the volume's size, so a
volume's existence, deletion and growth show on disk too. Everything above the driver (API,
scheduler, volume manager, attachments, Nova's calls) is the real Cinder.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from ._config import REGION, Layout, render_ini
from ._rest import Session

__all__ = [
    "BACKEND",
    "DRIVER_MODULE",
    "cinder_conf",
    "cinder_service_env",
    "gunicorn_conf",
    "sync_schema",
    "volume_service_ready",
    "volumes_dir",
    "write_files",
]

BACKEND = "vmlet"
DRIVER_MODULE = "vmlet_cinder_backend"
_HERE = Path(__file__).resolve().parent


def volumes_dir(lay: Layout) -> Path:
    """Where the backend keeps one sparse file per volume, named ``volume-<id>``."""
    return lay.data / "cinder" / "volumes"


def cinder_conf(lay: Layout) -> str:
    c = lay.data / "cinder"
    auth = {
        "auth_type": "password",
        "auth_url": lay.auth_url,
        "project_domain_name": "Default",
        "user_domain_name": "Default",
        "project_name": "service",
        "username": "cinder",
        "password": lay.service_passwords["cinder"],
    }
    return render_ini({
        "DEFAULT": {
            "host": lay.controller_host,
            "my_ip": "127.0.0.1",
            "state_path": str(c),
            "transport_url": lay.transport_url,
            "auth_strategy": "keystone",
            "debug": False,
            "use_stderr": False,
            "api_paste_config": str(lay.venv / "etc" / "cinder" / "api-paste.ini"),
            "resource_query_filters_file": str(
                lay.venv / "etc" / "cinder" / "resource_filters.json"),
            "enabled_backends": BACKEND,
            "storage_availability_zone": "nova",
            "default_availability_zone": "nova",
            "glance_api_servers": lay.url("glance"),
            "report_interval": 10,
            "service_down_time": 60,
            "rpc_response_timeout": 120,
            # The backend keeps no data: nothing to wipe on delete.
            "volume_clear": "none",
        },
        "database": {"connection": lay.db("cinder")},
        "keystone_authtoken": {
            "www_authenticate_uri": lay.auth_url,
            "region_name": REGION,
            "service_token_roles_required": True,
            **auth,
        },
        # Cinder tells Nova when an attached volume grows (server external events).
        "nova": {"region_name": REGION, "interface": "public", **auth},
        BACKEND: {
            "volume_driver": f"{DRIVER_MODULE}.SparseFileDriver",
            "volume_backend_name": BACKEND,
            "target_helper": "fake",
        },
        "oslo_concurrency": {"lock_path": str(c / "locks")},
        "oslo_messaging_notifications": {"driver": "noop"},
        "coordination": {"backend_url": f"file://{c / 'coordination'}"},
    })


def write_files(lay: Layout) -> Path:
    """Writes ``cinder.conf`` and the backend module; returns the dir to put on PYTHONPATH."""
    lib = lay.etc / "cinder-lib"
    for d in (lib, volumes_dir(lay), lay.data / "cinder" / "locks"):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_HERE / "_cinder_backend.py", lib / f"{DRIVER_MODULE}.py")
    conf = lay.etc / "cinder.conf"
    conf.write_text(cinder_conf(lay))
    conf.chmod(0o600)
    return lib


def gunicorn_conf(lay: Layout) -> str:
    """cinder-api's gunicorn config: cinder's WSGI app reads its config files from ``sys.argv``
    only (no ``OS_CINDER_CONFIG_FILES`` as keystone, glance and nova have)."""
    conf = lay.etc / "cinder.conf"
    return (lay.gunicorn_conf("cinder", "cinder.wsgi.api:application", "cinder-api")
            + f"sys.argv += ['--config-file', {str(conf)!r}]\n")


def cinder_service_env(lay: Layout) -> dict[str, str]:
    """What cinder-volume needs beyond its config: the backend module and its dir."""
    return {"PYTHONPATH": str(lay.etc / "cinder-lib"),
            "VMLET_CINDER_VOLUMES_DIR": str(volumes_dir(lay))}


def sync_schema(lay: Layout, run: Callable[..., str]) -> None:
    """``cinder-manage db sync`` for the schema template."""
    write_files(lay)
    run("cinder-manage", [str(lay.venv / "bin" / "cinder-manage"),
                          "--config-file", str(lay.etc / "cinder.conf"), "db", "sync"])


def volume_service_ready(admin: Session, lay: Layout) -> bool:
    """cinder-volume is up and the scheduler has its pool (before that, a create finds no host)."""
    base = f"{lay.url('cinder')}/v3"
    mv = {"OpenStack-API-Version": "volume 3.67"}  # 3.67: no project id in the URL
    services = admin.get(f"{base}/os-services?binary=cinder-volume", mv)["services"]
    if not any(s["state"] == "up" for s in services):
        return False
    return bool(admin.get(f"{base}/scheduler-stats/get_pools", mv)["pools"])
