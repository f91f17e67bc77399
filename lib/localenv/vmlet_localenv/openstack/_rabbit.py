"""A private RabbitMQ broker for one OpenStack env.

oslo.messaging needs a real broker between nova-api, -conductor, -scheduler and the computes; its
in-process ``fake`` driver cannot cross process boundaries. Debian's rabbitmq-server runs here as
its own node: its own Erlang node name, cookie (HOME), Mnesia and log directories in the env's
state dir, its own epmd, and every listener (AMQP, Erlang distribution, epmd) on loopback ports
picked at start. The system-wide broker, if any, is never touched.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path

from vmlet_localenv.private import private_dir, write_private

from ._process import Service, free_ports

__all__ = ["Rabbit", "rabbitmq_server_path"]

_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)


def rabbitmq_server_path() -> str | None:
    """The real rabbitmq-server start script (not Debian's wrapper, which switches user)."""
    for c in _CANDIDATES:
        if os.access(c, os.X_OK):
            return c
    return None


class Rabbit:
    """One broker node; ``services`` are the epmd and broker processes to start and stop."""

    def __init__(self, state_dir: Path, log_dir: Path, ports: Sequence[int] | None = None) -> None:
        self.dir = state_dir / "rabbitmq"
        self.port, self._dist_port, self._epmd_port = ports or free_ports(3)
        # A user of this env's own, not guest/guest: anyone on the machine could use that one.
        self.user = "vmlet"
        self.password = secrets.token_urlsafe(16)
        # Node names must be unique per host; our pid and AMQP port keep parallel envs apart.
        self.node = f"vmlet{os.getpid()}x{self.port}@localhost"
        server = rabbitmq_server_path()
        if server is None:
            raise FileNotFoundError("rabbitmq-server is missing: run hack/openstack/install.sh")
        epmd = shutil.which("epmd") or "/usr/bin/epmd"
        private_dir(self.dir)
        conf = write_private(
            self.dir / "rabbitmq.conf",
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"default_user = {self.user}\n"
            f"default_pass = {self.password}\n"
            "loopback_users = none\n"
            "log.console = true\n"
            "log.file = false\n"
        )
        plugins = self.dir / "enabled_plugins"
        plugins.write_text("[].\n")
        env = dict(os.environ)
        env.update(
            HOME=str(self.dir),  # the Erlang cookie lives here
            ERL_EPMD_ADDRESS="127.0.0.1",
            ERL_EPMD_PORT=str(self._epmd_port),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self._dist_port),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_CONFIG_FILE=str(conf),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(plugins),
            RABBITMQ_PID_FILE=str(self.dir / "rabbit.pid"),
            # Erlang distribution only on loopback; two schedulers are plenty for a test broker.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_SERVER_ERL_ARGS="+S 2:2 +sbwt none +sbwtdcpu none +sbwtdio none",
        )
        # epmd runs in the foreground as our child, so the broker finds it and does not start a
        # daemonised one that would escape the parent-death signal.
        self.services = [
            Service("epmd", [epmd, "-address", "127.0.0.1", "-port", str(self._epmd_port)],
                    log_dir=log_dir, env=env),
            Service("rabbitmq", [server], log_dir=log_dir, env=env, cwd=self.dir),
        ]

    @property
    def transport_url(self) -> str:
        return f"rabbit://{self.user}:{self.password}@127.0.0.1:{self.port}/"

    def ready(self) -> bool:
        """The AMQP listener opens only once the broker has booted."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            return s.recv(8).startswith(b"\x01\x00\x00")  # connection.start frame
