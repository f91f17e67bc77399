"""A private MariaDB server for one OpenStack env.

SQLite was tried first and fails under OpenStack's concurrency: oslo.db opens every transaction
with a deferred ``BEGIN``, and SQLite cannot upgrade a transaction that has read to a writer once
another connection has written, so two computes updating Placement, or nova-api and the
conductor writing the cell database, fail at once with "database is locked" (busy timeouts and
WAL do not help). So Debian's MariaDB runs here as a non-system instance: its own data dir in the
env's state dir, its own socket, a loopback port picked at start, no binary log and no fsync.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import tempfile
from pathlib import Path

from ._process import Service, free_ports

__all__ = ["DB_PASSWORD", "DB_USER", "MariaDB", "mariadbd_path"]

# The account every service uses, made in the schema template. Loopback only, test data only.
DB_USER = "openstack"
DB_PASSWORD = "vmlet-openstack-db"


def mariadbd_path() -> str | None:
    for c in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld"):
        if os.access(c, os.X_OK):
            return c
    return None


class MariaDB:
    """One server over ``datadir``; ``service`` is the process to start and stop."""

    def __init__(self, base: Path, log_dir: Path, port: int | None = None) -> None:
        server = mariadbd_path()
        if server is None:
            raise FileNotFoundError("mariadb-server is missing: run hack/openstack/install.sh")
        self.base = base
        self.datadir = base / "data"
        self.port = port or free_ports(1)[0]
        self.socket = base / "mysqld.sock"
        if len(str(self.socket)) > 100:  # a unix socket path has room for 107 bytes
            self.socket = Path(tempfile.gettempdir()) / f"vmlet-mariadb-{self.port}.sock"
        base.mkdir(parents=True, exist_ok=True)
        cnf = base / "my.cnf"
        lines = [
            "[mariadbd]",
            f"datadir = {self.datadir}",
            f"socket = {self.socket}",
            f"port = {self.port}",
            "bind-address = 127.0.0.1",
            f"pid-file = {base / 'mariadbd.pid'}",
            f"log-error = {log_dir / 'mariadb.log'}",
            f"tmpdir = {base}",
            "skip-name-resolve",
            "skip-log-bin",
            # A test database: speed over durability.
            "innodb-flush-log-at-trx-commit = 0",
            "innodb-doublewrite = 0",
            "innodb-log-file-size = 16M",
            "innodb-buffer-pool-size = 128M",
            "performance-schema = OFF",
            "max-connections = 1000",
            "character-set-server = utf8mb4",
            "collation-server = utf8mb4_general_ci",
        ]
        if os.getuid() == 0:
            lines.append("user = root")
        cnf.write_text("\n".join(lines) + "\n")
        self.cnf = cnf
        self.service = Service("mariadb", [server, f"--defaults-file={cnf}"], log_dir=log_dir,
                               env=dict(os.environ), cwd=base)

    def ready(self) -> bool:
        """mariadbd listens only once it accepts queries, and then answers every connection:
        with its greeting (protocol 10), or with an error packet (0xff) for a host that has no
        account yet, as 127.0.0.1 in a fresh data dir."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            return s.recv(5)[4:5] in (b"\x0a", b"\xff")

    def client(self) -> list[str]:
        """argv of the mariadb client over the socket, as the OS user (unix_socket auth)."""
        client = shutil.which("mariadb") or "/usr/bin/mariadb"
        return [client, "--no-defaults", f"--socket={self.socket}", f"--user={os_user()}"]

    def install_db(self) -> list[str]:
        """argv of mariadb-install-db making an empty data dir for ``datadir``."""
        tool = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
        return [tool, "--no-defaults", f"--datadir={self.datadir}", f"--user={os_user()}",
                "--auth-root-authentication-method=socket", "--skip-test-db",
                "--innodb-log-file-size=16M"]


def os_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name
