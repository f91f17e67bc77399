"""The configuration files of one OpenStack env, written into its state dir.

Everything binds to 127.0.0.1 on ports picked at start, keeps its data and logs in the state
dir, stores its databases on the env's own MariaDB and authenticates through the env's Keystone.
The values are the ones a small devstack with the fake hypervisor would use, trimmed to what a
test needs.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ._mariadb import DB_PASSWORD, DB_USER

__all__ = ["REGION", "SERVICE_USERS", "Layout", "render_ini"]

REGION = "RegionOne"
SERVICE_PROJECT = "service"
# One Keystone user per service, each with the admin and service roles on the service project.
SERVICE_USERS = ("nova", "placement", "glance", "neutron", "cinder")

Ini = Mapping[str, Mapping[str, object]]


def render_ini(sections: Ini) -> str:
    """oslo.config / paste style INI text; booleans as true/false, lists comma-joined."""
    out: list[str] = []
    for name, opts in sections.items():
        out.append(f"[{name}]")
        for key, value in opts.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, list | tuple):
                text = ",".join(str(v) for v in value)
            else:
                text = str(value)
            out.append(f"{key} = {text}")
        out.append("")
    return "\n".join(out)


def _secret() -> str:
    return secrets.token_urlsafe(12)


@dataclass
class Layout:
    """Where everything of one env lives and which loopback port each API listens on."""

    state_dir: Path
    venv: Path
    compute_hosts: tuple[str, ...]
    ports: dict[str, int]
    transport_url: str
    admin_password: str = field(default_factory=_secret)
    vmlet_password: str = field(default_factory=_secret)
    service_passwords: dict[str, str] = field(
        default_factory=lambda: {u: _secret() for u in SERVICE_USERS}
    )
    controller_host: str = "vmlet-controller"
    db_port: int = 0
    #: The schema template's password until the env sets its own (OpenStackEnv does, at start).
    db_password: str = DB_PASSWORD

    # -- paths -------------------------------------------------------------------------------
    @property
    def etc(self) -> Path:
        return self.state_dir / "etc"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def data(self) -> Path:
        return self.state_dir / "data"

    def db(self, name: str) -> str:
        """The URL of one database on the env's MariaDB."""
        return (f"mysql+pymysql://{DB_USER}:{self.db_password}@127.0.0.1:{self.db_port}/{name}"
                "?charset=utf8mb4")

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def auth_url(self) -> str:
        return f"{self.url('keystone')}/v3"

    @property
    def endpoints(self) -> dict[str, str]:
        """The catalog: service type to the URL registered in Keystone."""
        return {
            "identity": self.auth_url,
            "placement": self.url("placement"),
            "image": self.url("glance"),
            "network": self.url("neutron"),
            "compute": f"{self.url('nova')}/v2.1",
            # Cinder, under both names its clients look for (openstacksdk, Nova's catalog_info).
            "block-storage": f"{self.url('cinder')}/v3/%(project_id)s",
            "volumev3": f"{self.url('cinder')}/v3/%(project_id)s",
        }

    # -- shared sections ---------------------------------------------------------------------
    def _authtoken(self, user: str) -> dict[str, object]:
        return {
            "www_authenticate_uri": self.auth_url,
            "auth_url": self.auth_url,
            "auth_type": "password",
            "project_domain_name": "Default",
            "user_domain_name": "Default",
            "project_name": SERVICE_PROJECT,
            "username": user,
            "password": self.service_passwords[user],
            "region_name": REGION,
            "service_token_roles_required": True,
        }

    def _client_auth(self, user: str) -> dict[str, object]:
        return {
            "auth_type": "password",
            "auth_url": self.auth_url,
            "project_domain_name": "Default",
            "user_domain_name": "Default",
            "project_name": SERVICE_PROJECT,
            "username": user,
            "password": self.service_passwords[user],
            "region_name": REGION,
            "valid_interfaces": "public",
        }

    def _logging(self, name: str) -> dict[str, object]:
        return {"log_file": str(self.logs / f"{name}.log"), "debug": False, "use_stderr": False}

    # -- per service -------------------------------------------------------------------------
    def keystone_conf(self) -> str:
        k = self.data / "keystone"
        return render_ini({
            "DEFAULT": {**self._logging("keystone-api"), "max_token_size": 255},
            "database": {"connection": self.db("keystone")},
            "token": {"provider": "fernet", "expiration": 86400},
            "fernet_tokens": {"key_repository": str(k / "fernet-keys")},
            "fernet_receipts": {"key_repository": str(k / "fernet-keys")},
            "credential": {"key_repository": str(k / "credential-keys")},
            # bcrypt's fewest rounds: every token request hashes a password, tests make many.
            "identity": {"password_hash_algorithm": "bcrypt", "password_hash_rounds": 4},
            # Without a cache Keystone runs ~300 queries per token validation; one worker
            # process, so an in-memory cache is coherent.
            "cache": {"enabled": True, "backend": "dogpile.cache.memory"},
        })

    def placement_conf(self) -> str:
        return render_ini({
            "DEFAULT": self._logging("placement-api"),
            "placement_database": {"connection": self.db("placement")},
            "api": {"auth_strategy": "keystone"},
            "keystone_authtoken": self._authtoken("placement"),
        })

    def glance_conf(self) -> str:
        g = self.data / "glance"
        return render_ini({
            "DEFAULT": {
                **self._logging("glance-api"),
                "enabled_backends": "fs:file",
                "node_staging_uri": f"file://{g / 'staging'}",
                "show_image_direct_url": False,
                "image_size_cap": 10 * 1024**3,
            },
            "glance_store": {"default_backend": "fs"},
            "fs": {"filesystem_store_datadir": str(g / "images")},
            "os_glance_staging_store": {"filesystem_store_datadir": str(g / "staging")},
            "os_glance_tasks_store": {"filesystem_store_datadir": str(g / "tasks")},
            "database": {"connection": self.db("glance")},
            "keystone_authtoken": self._authtoken("glance"),
            "paste_deploy": {
                "flavor": "keystone",
                "config_file": str(self.venv / "etc" / "glance" / "glance-api-paste.ini"),
            },
            "oslo_concurrency": {"lock_path": str(g / "locks")},
            "oslo_messaging_notifications": {"driver": "noop"},
        })

    def neutron_conf(self) -> str:
        return render_ini({
            "DEFAULT": {
                **self._logging("neutron-api"),
                "host": self.controller_host,
                "core_plugin": "ml2",
                "service_plugins": "",
                "auth_strategy": "keystone",
                "api_paste_config": str(self.venv / "etc" / "neutron" / "api-paste.ini"),
                "transport_url": self.transport_url,
                # No agents and no ports of Nova's: nothing to tell Nova or a DHCP agent.
                "notify_nova_on_port_status_changes": False,
                "notify_nova_on_port_data_changes": False,
                "dhcp_agent_notification": False,
                "allow_overlapping_ips": True,
            },
            "database": {"connection": self.db("neutron")},
            "keystone_authtoken": self._authtoken("neutron"),
            "oslo_concurrency": {"lock_path": str(self.data / "neutron" / "locks")},
            "oslo_messaging_notifications": {"driver": "noop"},
            "agent": {"root_helper": "", "root_helper_daemon": ""},
        })

    def ml2_conf(self) -> str:
        return render_ini({
            "ml2": {
                "type_drivers": "flat,vlan",
                # A project's own networks are VLANs of physnet1, as the env's (_networking).
                "tenant_network_types": "vlan",
                # Binds ports for hosts whose macvtap agent is alive (see _networking).
                "mechanism_drivers": "macvtap",
                "extension_drivers": "port_security",
            },
            "ml2_type_flat": {"flat_networks": "*"},
            "ml2_type_vlan": {"network_vlan_ranges": "physnet1:100:199"},
        })

    def nova_conf(self) -> str:
        n = self.data / "nova"
        return render_ini({
            "DEFAULT": {
                "host": self.controller_host,
                "my_ip": "127.0.0.1",
                "state_path": str(n),
                "instances_path": str(n / "instances"),
                "transport_url": self.transport_url,
                "compute_driver": "fake.FakeDriver",
                "debug": False,
                "use_stderr": False,
                "rpc_response_timeout": 120,
                "long_rpc_timeout": 600,
                "report_interval": 10,
                "service_down_time": 60,
                # Resize and cold migration go to the other host, as on a real cloud.
                "allow_resize_to_same_host": False,
                # No periodic healing of the port cache: Nova builds it at boot.
                "heal_instance_info_cache_interval": -1,
                "instance_usage_audit": False,
                # A test env is thrown away: no minute-long graceful shutdown.
                "graceful_shutdown_timeout": 2,
                # The fake driver plugs no VIF, so the macvtap agents never see a port come up
                # and Neutron sends no network-vif-plugged: Nova must not wait for it (a live
                # migration of a server with ports otherwise hangs for vif_plugging_timeout).
                "vif_plugging_is_fatal": False,
                "vif_plugging_timeout": 0,
            },
            "compute": {"live_migration_wait_for_vif_plug": False},
            "api": {"auth_strategy": "keystone"},
            "wsgi": {"api_paste_config": str(self.venv / "etc" / "nova" / "api-paste.ini")},
            "api_database": {"connection": self.db("nova_api")},
            "database": {"connection": self.db("nova_cell1")},
            "keystone_authtoken": self._authtoken("nova"),
            "service_user": {"send_service_user_token": True, **self._client_auth("nova")},
            "placement": self._client_auth("nova"),
            "neutron": self._client_auth("nova"),
            "glance": {"region_name": REGION, "valid_interfaces": "public"},
            # Volume attach: Nova calls Cinder with the user's token and its service token; some
            # calls (a detach at cleanup) as its own service user.
            "cinder": {"os_region_name": REGION, "catalog_info": "volumev3::publicURL",
                       **self._client_auth("nova")},
            # Hosts are mapped to cell1 by `nova-manage cell_v2 discover_hosts` at start.
            "scheduler": {"workers": 1, "discover_hosts_in_cells_interval": -1},
            "conductor": {"workers": 1},
            "oslo_concurrency": {"lock_path": str(n / "locks")},
            "oslo_messaging_notifications": {"driver": "noop"},
            "oslo_policy": {"policy_file": str(self.etc / "nova-policy.yaml")},
            "vnc": {"enabled": False},
            "spice": {"enabled": False},
        })

    def nova_service_conf(self, name: str, host: str | None = None) -> str:
        """The per-process overlay: its log file and, for a compute, its host name."""
        default: dict[str, object] = {"log_file": str(self.logs / f"{name}.log")}
        if host is not None:
            default["host"] = host
            default["state_path"] = str(self.data / name)
            default["instances_path"] = str(self.data / name / "instances")
        return render_ini({"DEFAULT": default})

    def nova_policy(self) -> str:
        """Lets the ``vmlet-operator`` role do what a VM-per-host provider needs, not only admin.

        A vmlet provider places each VM on the hypervisor its virtual node stands for, so it must
        see the hypervisors and compute services, name a host at create, read a server's host
        and move servers between hosts. Nova's defaults keep all of that to admins.
        """
        rule = '"rule:context_is_admin or role:vmlet-operator"'
        names = [
            "os_compute_api:os-hypervisors:list",
            "os_compute_api:os-hypervisors:list-detail",
            "os_compute_api:os-hypervisors:show",
            "os_compute_api:os-hypervisors:search",
            "os_compute_api:os-hypervisors:servers",
            "os_compute_api:os-hypervisors:statistics",
            "os_compute_api:os-services:list",
            "compute:servers:create:requested_destination",
            "os_compute_api:os-extended-server-attributes",
            "os_compute_api:servers:show:host_status",
            "os_compute_api:os-migrate-server:migrate",
            "os_compute_api:os-migrate-server:migrate:host",
            "os_compute_api:os-migrate-server:migrate_live",
            "os_compute_api:os-migrate-server:migrate_live:host",
            "os_compute_api:os-migrations:index:host",
        ]
        return "".join(f'"{n}": {rule}\n' for n in names)

    def write_config_files(self) -> None:
        """Writes every service's configuration into ``etc`` (owner-only: it holds passwords)."""
        files = {
            "keystone.conf": self.keystone_conf(),
            "placement.conf": self.placement_conf(),
            "glance-api.conf": self.glance_conf(),
            "neutron.conf": self.neutron_conf(),
            "ml2_conf.ini": self.ml2_conf(),
            "nova.conf": self.nova_conf(),
            "nova-policy.yaml": self.nova_policy(),
        }
        for svc in ("api", "conductor", "scheduler", "manage"):
            files[f"nova-{svc}.conf"] = self.nova_service_conf(f"nova-{svc}")
        for i, host in enumerate(self.compute_hosts, 1):
            files[f"nova-compute-{i}.conf"] = self.nova_service_conf(f"nova-compute-{i}", host)
        for d in (self.data / "keystone", self.data / "glance", self.data / "nova",
                  self.data / "neutron"):
            d.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            path = self.etc / name
            path.write_text(text)
            path.chmod(0o600)

    def gunicorn_conf(self, name: str, app: str, argv0: str, threads: int = 4) -> str:
        """A gunicorn config that also hides gunicorn's own argv from the app's oslo.config."""
        return (
            "import sys\n"
            "# The apps parse sys.argv with oslo.config; gunicorn's arguments are not theirs.\n"
            f"sys.argv = [{argv0!r}]\n"
            f"wsgi_app = {app!r}\n"
            f"bind = ['127.0.0.1:{self.ports[name]}']\n"
            "workers = 1\n"
            "worker_class = 'gthread'\n"
            f"threads = {threads}\n"
            "timeout = 300\n"
            "graceful_timeout = 5\n"
            # gunicorn closes an idle keep-alive connection after 2 s by default, which a
            # client's next request on it can meet half-way (reset by peer); keep them longer.
            "keepalive = 120\n"
            f"errorlog = {str(self.logs / (name + '-gunicorn.log'))!r}\n"
            f"accesslog = {str(self.logs / (name + '-access.log'))!r}\n"
            f"proc_name = 'vmlet-{name}'\n"
        )
