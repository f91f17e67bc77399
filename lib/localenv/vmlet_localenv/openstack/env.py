"""A real OpenStack on loopback: Keystone, Placement, Glance, Neutron, Nova with fake computes, and
Cinder.

The services come from PyPI, in their own virtualenv (hack/openstack/install.sh), and run here as
they would in a small devstack with the fake hypervisor: the WSGI APIs under gunicorn on
127.0.0.1, nova-conductor, nova-scheduler and two or more nova-compute services with
``compute_driver=fake.FakeDriver`` and distinct host names, cinder-scheduler and cinder-volume
(a sparse-file backend, see ``_cinder``), neutron-rpc-server and a macvtap agent per compute
host so that ports bind (see ``_networking``), a private MariaDB and RabbitMQ, all in one state
dir. Nothing is mocked: openstacksdk talks to the real Nova and Cinder APIs.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import json
import logging
import os
import pwd
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from vmlet_localenv.private import private_dir, write_private

from ._bootstrap import FLAVORS, IMAGE_NAME
from ._cinder import cinder_service_env, volume_service_ready
from ._cinder import gunicorn_conf as cinder_gunicorn_conf
from ._cinder import write_files as write_cinder_files
from ._config import REGION, SERVICE_USERS, Layout
from ._credentials import Credentials
from ._databases import copy_template, ensure_template
from ._install import OPENSTACK_RELEASE, OpenStackNotInstalled, default_venv, installed
from ._mariadb import DB_USER, MariaDB
from ._networking import agent_conf, networks_unsupported, rpc_server_conf
from ._process import Service, Spawner, free_ports, run_command, wait_until
from ._rabbit import Rabbit
from ._readiness import wait_computes, wait_network_agents
from ._rest import Session, answers

__all__ = ["DEFAULT_COMPUTE_HOSTS", "OpenStackEnv"]

DEFAULT_COMPUTE_HOSTS = ("vmlet-compute-1", "vmlet-compute-2")
_HERE = Path(__file__).resolve().parent
_LOG = logging.getLogger("vmlet_localenv.openstack")


class OpenStackEnv:
    """Starts and stops one OpenStack on loopback.

    ``start()`` returns once every API answers, both computes are up in the compute service
    and hypervisor lists, mapped to the cell and known to Placement, and the flavors and the test
    image exist. ``stop()`` ends every process it started, also after a failed start.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        venv: str | os.PathLike[str] | None = None,
        compute_hosts: Sequence[str] = DEFAULT_COMPUTE_HOSTS,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if len(set(compute_hosts)) != len(compute_hosts) or not compute_hosts:
            raise ValueError("compute_hosts must be distinct and not empty")
        self.venv = Path(venv) if venv else default_venv()
        self.compute_hosts = tuple(compute_hosts)
        self._given_state_dir = Path(state_dir) if state_dir is not None else None
        self._progress = progress or (lambda msg: _LOG.info("%s", msg))
        self._services: list[Service] = []
        self._spawner: Spawner | None = None
        self._layout: Layout | None = None
        self._state_dir: Path | None = None
        self._made_state_dir = False
        self._image_id: str | None = None
        self._networks: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._t0 = 0.0

    # -- facts -------------------------------------------------------------------------------
    @property
    def layout(self) -> Layout:
        if self._layout is None:
            raise RuntimeError("the env is not started")
        return self._layout

    @property
    def state_dir(self) -> Path:
        return self.layout.state_dir

    @property
    def auth_url(self) -> str:
        return self.layout.auth_url

    @property
    def region(self) -> str:
        return REGION

    @property
    def admin(self) -> Credentials:
        return Credentials(self.auth_url, "admin", self.layout.admin_password, "admin")

    @property
    def vmlet(self) -> Credentials:
        return Credentials(self.auth_url, "vmlet", self.layout.vmlet_password, "vmlet")

    @property
    def clouds_yaml(self) -> Path:
        """A clouds.yaml with the clouds ``vmlet`` and ``vmlet-admin`` (OS_CLIENT_CONFIG_FILE)."""
        return self.layout.etc / "clouds.yaml"

    @property
    def endpoints(self) -> dict[str, str]:
        return self.layout.endpoints

    @property
    def image_name(self) -> str:
        return IMAGE_NAME

    @property
    def image_id(self) -> str | None:
        return self._image_id

    @property
    def flavor_names(self) -> list[str]:
        return [f[0] for f in FLAVORS]

    @property
    def networks(self) -> list[dict[str, Any]]:
        """The vmlet project's networks whose ports bind (name, id, subnet_id, cidr, vlan), in
        the order made; empty when ports cannot bind here (see ``_networking``)."""
        return [dict(n) for n in self._networks]

    @property
    def transport_url(self) -> str:
        return self.layout.transport_url

    def facts(self) -> dict[str, Any]:
        """The connection facts, as the CLI prints them (passwords included: loopback only)."""
        return {
            "release": OPENSTACK_RELEASE,
            "auth_url": self.auth_url,
            "region": self.region,
            "clouds_yaml": str(self.clouds_yaml),
            "clouds": {"vmlet": "vmlet", "admin": "vmlet-admin"},
            "admin": self.admin.as_dict(),
            "vmlet": self.vmlet.as_dict(),
            "compute_hosts": list(self.compute_hosts),
            "endpoints": self.endpoints,
            "image": {"name": self.image_name, "id": self.image_id},
            "flavors": self.flavor_names,
            "networks": self.networks,
            "state_dir": str(self.state_dir),
            "logs": str(self.layout.logs),
            "pids": {s.name: s.pid for s in self._services},
        }

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> OpenStackEnv:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 600) -> OpenStackEnv:
        with self._lock:
            if self._layout is not None:
                raise RuntimeError("the env is already started")
            if why := installed(self.venv):
                raise OpenStackNotInstalled(f"{why}: run hack/openstack/install.sh")
            self._t0 = time.monotonic()
            atexit.register(self.stop)
            try:
                self._start(deadline=time.monotonic() + timeout)
            except BaseException:
                self._stop()
                raise
            self._progress(f"OpenStack {OPENSTACK_RELEASE} ready in {self._elapsed()}")
            return self

    def stop(self) -> None:
        with self._lock:
            self._stop()

    def check_alive(self) -> None:
        """Raise if any service of the env has exited."""
        for s in self._services:
            s.check_alive()

    # -- internals ---------------------------------------------------------------------------
    def _elapsed(self) -> str:
        return f"{time.monotonic() - self._t0:.1f}s"

    def _say(self, msg: str) -> None:
        self._progress(f"[{self._elapsed():>6}] {msg}")

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "VIRTUAL_ENV"))}
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPATH", None)
        env.update(extra)
        return env

    def _bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def _run(self, name: str, argv: Sequence[str], *, stdin: str | None = None,
             env: dict[str, str] | None = None, timeout: float = 300) -> str:
        return run_command(name, argv, log_dir=self.layout.logs, env=env or self._env(),
                           stdin=stdin, timeout=timeout)

    def _service(self, name: str, argv: Sequence[str], **env: str) -> Service:
        assert self._spawner is not None
        svc = Service(name, argv, log_dir=self.layout.logs, env=self._env(**env),
                      cwd=self.layout.state_dir)
        self._services.append(svc)
        return svc.start(self._spawner)

    def _alive(self) -> None:
        self.check_alive()

    def _runner(self, log_dir: Path) -> Callable[..., str]:
        def run(name: str, argv: Sequence[str], *, stdin: str | None = None,
                env: dict[str, str] | None = None, timeout: float = 300) -> str:
            return run_command(name, argv, log_dir=log_dir, env=env or self._env(),
                               stdin=stdin, timeout=timeout)
        return run

    def prepare(self) -> Path:
        """Builds the migrated-schema template now (install.sh calls this); returns its dir."""
        if why := installed(self.venv):
            raise OpenStackNotInstalled(f"{why}: run hack/openstack/install.sh")
        return ensure_template(self.venv, self._runner, self._progress)

    def _start(self, deadline: float) -> None:
        def left() -> float:
            return max(1.0, deadline - time.monotonic())

        if self._given_state_dir is not None:
            state = private_dir(self._given_state_dir.resolve())
            # A dir used before starts clean: a new env never sees an old one's data.
            for sub in ("etc", "data", "logs", "rabbitmq", "mysql"):
                shutil.rmtree(state / sub, ignore_errors=True)
            (state / "facts.json").unlink(missing_ok=True)
        else:
            state = Path(tempfile.mkdtemp(prefix="vmlet-openstack-"))
            self._made_state_dir = True
        self._state_dir = state
        (state / "logs").mkdir(exist_ok=True)
        template = ensure_template(self.venv, self._runner, self._say)
        # All ports at once, so that none is handed out twice.
        names = ["keystone", "placement", "glance", "neutron", "nova", "cinder"]
        ports = free_ports(len(names) + 4)
        rabbit = Rabbit(state, state / "logs", ports=ports[-4:-1])
        db = MariaDB(state / "mysql", state / "logs", port=ports[-1])
        lay = self._layout = Layout(
            state_dir=state, venv=self.venv, compute_hosts=self.compute_hosts,
            ports=dict(zip(names, ports, strict=False)),
            transport_url=rabbit.transport_url, db_port=db.port,
            db_password=secrets.token_urlsafe(16),
        )
        for d in (lay.etc, lay.logs, lay.data):
            d.mkdir(parents=True, exist_ok=True)
        lay.write_config_files()
        write_cinder_files(lay)
        copy_template(template, db)
        self._spawner = Spawner()
        self._say(f"state in {state}; starting RabbitMQ on 127.0.0.1:{rabbit.port} and "
                  f"MariaDB on 127.0.0.1:{db.port} (schemas copied from the template)")
        for proc in [*rabbit.services, db.service]:
            self._services.append(proc)
            proc.start(self._spawner)
        wait_until(db.ready, timeout=left(), what="mariadb", alive=self._alive, interval=0.2)
        # The template's password is in the source: this env's own replaces it before any
        # service connects (given on stdin, which no log and no command line shows).
        self._run("mariadb-password", db.client(), stdin=(
            f"ALTER USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{lay.db_password}';\n"))
        self._say("MariaDB ready")

        # Keystone's keys and admin, and Nova's cells, are made by the real tools, side by side;
        # services that need only their database start meanwhile.
        with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="openstack-setup") as pool:
            keystone = pool.submit(self._keystone_setup)
            cells = pool.submit(self._nova_cells)
            self._gunicorn("placement", "placement.wsgi.api:application", "placement-api")
            self._gunicorn("glance", "glance.wsgi.api:application", "glance-api")
            self._gunicorn("neutron", "neutron.wsgi.api:application", "neutron-server",
                           OS_NEUTRON_CONFIG_FILES="neutron.conf;ml2_conf.ini")
            (lay.etc / "gunicorn-cinder.py").write_text(cinder_gunicorn_conf(lay))
            self._service("cinder-api", [self._bin("gunicorn"), "-c",
                                         str(lay.etc / "gunicorn-cinder.py")])
            keystone.result(timeout=left())
            self._gunicorn("keystone", "keystone.wsgi.api:application", "keystone",
                           OS_KEYSTONE_CONFIG_FILES="keystone.conf")
            self._say("keystone bootstrapped; placement, glance, neutron, keystone starting")
            cells.result(timeout=left())
        self._say("cell0 and cell1 mapped")
        wait_until(rabbit.ready, timeout=left(), what="rabbitmq", alive=self._alive)
        self._say("RabbitMQ ready")
        binds = networks_unsupported() is None
        if binds:
            self._start_network_agents()
        for svc in ("scheduler", "volume"):
            self._service(f"cinder-{svc}", [self._bin(f"cinder-{svc}"), "--config-file",
                                            str(lay.etc / "cinder.conf")],
                          **cinder_service_env(lay))
        self._gunicorn("nova", "nova.wsgi.osapi_compute:application", "nova-api",
                       OS_NOVA_CONFIG_FILES=";".join([
                           str(self.venv / "etc" / "nova" / "api-paste.ini"),
                           "nova.conf", "nova-api.conf"]),
                       # nova-api in native threads: gunicorn's gthread worker and eventlet
                       # don't mix.
                       OS_NOVA_DISABLE_EVENTLET_PATCHING="true")
        wait_until(lambda: answers(lay.auth_url), timeout=left(), what="keystone",
                   alive=self._alive)
        self._bootstrap("identity")
        self._say("service users, catalog and the vmlet project registered")
        # The conductor and scheduler log in to Keystone as they start.
        for svc in ("conductor", "scheduler"):
            self._service(f"nova-{svc}", [self._bin(f"nova-{svc}"),
                                          *self._nova_conf(f"nova-{svc}.conf")])
        # A compute reports to Placement at start and only once a minute after a failure, so
        # it starts once Placement can authenticate it.
        wait_until(lambda: answers(lay.url("placement") + "/"), timeout=left(),
                   what="placement", alive=self._alive)
        for i in range(1, len(self.compute_hosts) + 1):
            self._service(f"nova-compute-{i}", [self._bin("nova-compute"),
                                                *self._nova_conf(f"nova-compute-{i}.conf")])
        self._say(f"nova-api, conductor, scheduler and {len(self.compute_hosts)} computes started")
        for name in ("glance", "neutron", "nova", "cinder"):
            root = lay.url(name) + "/"
            wait_until(partial(answers, root), timeout=left(), what=name, alive=self._alive)
        self._say("all APIs answer")
        out = self._bootstrap("compute")
        self._image_id = json.loads(out.strip().splitlines()[-1])["image_id"]
        self._say("flavors and image created")
        if binds:
            self._make_networks()
        wait_computes(lay, self.compute_hosts,
                      [self._bin("nova-manage"), *self._nova_conf("nova-manage.conf")], self._run,
                      left=left, alive=self._alive, say=self._say)
        admin = Session(lay.auth_url, "admin", lay.admin_password, "admin")
        wait_until(partial(volume_service_ready, admin, lay), timeout=left(),
                   what="cinder-volume and its pool in the scheduler", alive=self._alive)
        self._say("cinder-volume up, its pool known to cinder-scheduler")
        if binds:
            wait_network_agents(lay, self.compute_hosts, left=left, alive=self._alive,
                                say=self._say)
        self._write_clouds_yaml()
        write_private(lay.state_dir / "facts.json", json.dumps(self.facts(), indent=2))

    def _nova_conf(self, *overlays: str) -> list[str]:
        files = ["nova.conf", *overlays]
        return [a for f in files for a in ("--config-file", str(self.layout.etc / f))]

    def _gunicorn(self, name: str, app: str, argv0: str, **env: str) -> Service:
        lay = self.layout
        conf = lay.etc / f"gunicorn-{name}.py"
        conf.write_text(lay.gunicorn_conf(name, app, argv0))
        env.setdefault(f"OS_{name.upper()}_CONFIG_DIR", str(lay.etc))
        return self._service(f"{name}-api", [self._bin("gunicorn"), "-c", str(conf)], **env)

    def _start_network_agents(self) -> None:
        """neutron-rpc-server and one macvtap agent per compute host (see ``_networking``)."""
        lay = self.layout
        (lay.etc / "neutron-rpc.conf").write_text(rpc_server_conf(lay.logs))
        self._service("neutron-rpc", [self._bin("neutron-rpc-server"), *(
            a for f in ("neutron.conf", "ml2_conf.ini", "neutron-rpc.conf")
            for a in ("--config-file", str(lay.etc / f)))])
        for i, host in enumerate(self.compute_hosts, 1):
            name = f"neutron-macvtap-agent-{i}"
            conf = lay.etc / f"{name}.ini"
            conf.write_text(agent_conf(host=host, name=name, logs=lay.logs, data=lay.data,
                                       transport_url=lay.transport_url))
            conf.chmod(0o600)
            (lay.data / name / "locks").mkdir(parents=True, exist_ok=True)
            self._service(name, [self._bin("python"), str(_HERE / "_macvtap_agent.py"),
                                 "--config-file", str(conf)])
        self._say(f"neutron-rpc-server and {len(self.compute_hosts)} macvtap agents starting")

    def _make_networks(self) -> None:
        out = self._run("bootstrap-network", [self._bin("python"), str(_HERE / "_networking.py")],
                        stdin=json.dumps(self._bootstrap_facts()))
        self._networks = json.loads(out.strip().splitlines()[-1])["networks"]
        self._say("networks: " + ", ".join(f"{n['name']} ({n['cidr']})" for n in self._networks))


    def _keystone_setup(self) -> None:
        lay = self.layout
        conf = ["--config-file", str(lay.etc / "keystone.conf")]
        km = self._bin("keystone-manage")
        owner = ["--keystone-user", pwd.getpwuid(os.getuid()).pw_name,
                 "--keystone-group", _group_name(os.getgid())]
        url = lay.auth_url
        # The two key repositories side by side; bootstrap checks that the token keys exist.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            keys = [pool.submit(self._run, f"keystone-manage-{what}", [km, *conf, what, *owner])
                    for what in ("fernet_setup", "credential_setup")]
            for k in keys:
                k.result()
        self._run("keystone-manage-bootstrap", [
            km, *conf, "bootstrap", "--bootstrap-username", "admin",
            "--bootstrap-project-name", "admin", "--bootstrap-role-name", "admin",
            "--bootstrap-region-id", REGION, "--bootstrap-admin-url", url,
            "--bootstrap-public-url", url, "--bootstrap-internal-url", url,
        ], env=self._env(OS_BOOTSTRAP_PASSWORD=lay.admin_password))

    def _nova_cells(self) -> None:
        lay = self.layout
        nm = [self._bin("nova-manage"), *self._nova_conf("nova-manage.conf")]
        # Not --database_connection: the URL holds the password, and a command line is public.
        # nova-manage names cell0's database after [database]/connection's, plus "_cell0".
        cell0 = write_private(lay.etc / "nova-map-cell0.conf",
                              f"[database]\nconnection = {lay.db('nova')}\n")
        self._run("nova-manage", [*nm, "--config-file", str(cell0), "cell_v2", "map_cell0"])
        self._run("nova-manage", [*nm, "cell_v2", "create_cell", "--name", "cell1",
                                  "--verbose"])

    def _bootstrap_facts(self) -> dict[str, Any]:
        lay = self.layout
        return {
            "admin": self.admin.as_dict(),
            "vmlet": self.vmlet.as_dict(),
            "service_users": {u: lay.service_passwords[u] for u in SERVICE_USERS},
            "endpoints": lay.endpoints,
        }

    def _bootstrap(self, phase: str) -> str:
        return self._run(f"bootstrap-{phase}", [self._bin("python"), str(_HERE / "_bootstrap.py"),
                                                phase], stdin=json.dumps(self._bootstrap_facts()))


    def _write_clouds_yaml(self) -> None:
        clouds = {"clouds": {"vmlet": self.vmlet.as_cloud(), "vmlet-admin": self.admin.as_cloud()}}
        # JSON is YAML; the standard library is all this module needs.
        self.clouds_yaml.write_text(json.dumps(clouds, indent=2) + "\n")
        self.clouds_yaml.chmod(0o600)

    def _stop(self) -> None:
        atexit.unregister(self.stop)
        services, self._services = self._services, []
        if services:
            t = time.monotonic()
            # Computes and the rest of Nova first, the broker and epmd last.
            for s in reversed(services):
                s.terminate()
            # Nothing of the env is worth a slow graceful shutdown: whatever has not ended after
            # a few seconds is killed.
            deadline = time.monotonic() + 5
            for s in reversed(services):
                s.wait_gone(timeout=max(0.0, deadline - time.monotonic()))
            self._progress(f"OpenStack env stopped in {time.monotonic() - t:.1f}s")
        if self._spawner is not None:
            self._spawner.close()
            self._spawner = None
        if self._made_state_dir and self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
        self._layout = None
        self._state_dir = None
        self._made_state_dir = False


def _group_name(gid: int) -> str:
    import grp

    return grp.getgrgid(gid).gr_name
