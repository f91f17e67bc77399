"""The env's databases: migrated once per installed release, copied at every start.

Running every project's migrations (keystone-manage db_sync, nova-manage api_db sync and db sync
for both cells, placement-manage, glance-manage, neutron-db-manage, cinder-manage) costs minutes
of CPU on a small machine, and the result is the same empty schema every time. So the first start
after an install (or hack/openstack/install.sh itself) runs them, with the projects' own tools,
against a throwaway MariaDB, and keeps its data dir beside the virtualenv, keyed by the install
stamp; each start copies that data dir and runs its own server over the copy. Anything that names
an env (cells, transport URL, endpoints, users) is written per start by the real tools on top.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from ._cinder import sync_schema as _cinder
from ._config import Layout
from ._mariadb import DB_PASSWORD, DB_USER, MariaDB
from ._process import Spawner, wait_until

__all__ = ["DATABASES", "Runner", "copy_template", "ensure_template"]

# Bump when the way a template is made changes, so old templates are not reused.
_RECIPE = "mariadb-2"
DATABASES = ("keystone", "placement", "glance", "neutron", "nova_api", "nova_cell0", "nova_cell1",
             "cinder")

Runner = Callable[..., str]


def _template_dir(venv: Path) -> Path:
    stamp = (venv / ".vmlet-installed").read_bytes()
    key = hashlib.sha256(stamp + _RECIPE.encode()).hexdigest()[:16]
    return venv / "db-templates" / key


def ensure_template(
    venv: Path, make_runner: Callable[[Path], Runner], progress: Callable[[str], None],
) -> Path:
    """The template for ``venv`` (a MariaDB data dir with every schema), built when missing."""
    final = _template_dir(venv)
    if (final / ".complete").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    logs = build / "logs"
    logs.mkdir()
    try:
        progress("migrating every database schema into a template (once per install)")
        run = make_runner(logs)
        db = MariaDB(build / "mysql", logs)
        run("mariadb-install-db", db.install_db())
        spawner = Spawner()
        try:
            db.service.start(spawner)
            wait_until(db.ready, timeout=120, what="mariadb", alive=db.service.check_alive,
                       interval=0.2)
            sql = [f"CREATE DATABASE {n} CHARACTER SET utf8mb4;" for n in DATABASES]
            sql += [f"CREATE USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}';",
                    f"GRANT ALL PRIVILEGES ON *.* TO '{DB_USER}'@'127.0.0.1';"]
            run("mariadb", db.client(), stdin="\n".join(sql))
            lay = Layout(
                state_dir=build, venv=venv, compute_hosts=(),
                ports=dict.fromkeys(
                    ("keystone", "placement", "glance", "neutron", "nova", "cinder"), 9),
                transport_url="rabbit://guest:guest@127.0.0.1:9/", db_port=db.port,
            )
            for d in (lay.etc, lay.data):
                d.mkdir(parents=True, exist_ok=True)
            lay.write_config_files()
            # cell0 has the cell schema; it is synced as a main database of its own here, so
            # the template holds no cell mapping (those name one env's database port).
            (lay.etc / "nova-cell0.conf").write_text(
                f"[database]\nconnection = {lay.db('nova_cell0')}\n")
            with concurrent.futures.ThreadPoolExecutor(len(_SYNCS)) as pool:
                for f in [pool.submit(sync, lay, run) for sync in _SYNCS]:
                    f.result()
        finally:
            db.service.terminate()  # InnoDB shuts down cleanly on SIGTERM
            db.service.wait_gone(timeout=120)
            spawner.close()
        out = build / "template"
        out.mkdir()
        os.rename(db.datadir, out / "mysql-data")
        (out / ".complete").write_text("ok\n")
        try:
            os.rename(out, final)
        except OSError:
            if not (final / ".complete").is_file():  # not a concurrent builder that won
                raise
        for old in final.parent.iterdir():  # templates of earlier installs or recipes
            if old != final and not old.name.startswith(".build-"):
                shutil.rmtree(old, ignore_errors=True)
        progress("database schemas migrated and kept as a template")
        return final
    except BaseException:
        kept = final.parent / "failed-build-logs"
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(logs, kept)
        progress(f"building the schema template failed; its logs are in {kept}")
        raise
    finally:
        shutil.rmtree(build, ignore_errors=True)


def copy_template(template: Path, db: MariaDB) -> None:
    """Gives ``db`` a copy of the migrated data dir."""
    shutil.copytree(template / "mysql-data", db.datadir)


def _bin(lay: Layout, name: str) -> str:
    return str(lay.venv / "bin" / name)


def _conf(lay: Layout, *names: str) -> Sequence[str]:
    return [arg for n in names for arg in ("--config-file", str(lay.etc / n))]


def _keystone(lay: Layout, run: Runner) -> None:
    run("keystone-manage", [_bin(lay, "keystone-manage"), *_conf(lay, "keystone.conf"), "db_sync"])


def _nova(lay: Layout, run: Runner) -> None:
    nm = [_bin(lay, "nova-manage"), *_conf(lay, "nova.conf", "nova-manage.conf")]
    run("nova-manage", [*nm, "api_db", "sync"])
    run("nova-manage", [*nm, "db", "sync", "--local_cell"])


def _nova_cell0(lay: Layout, run: Runner) -> None:
    run("nova-manage", [_bin(lay, "nova-manage"),
                        *_conf(lay, "nova.conf", "nova-manage.conf", "nova-cell0.conf"),
                        "db", "sync", "--local_cell"])


def _placement(lay: Layout, run: Runner) -> None:
    run("placement-manage", [_bin(lay, "placement-manage"), *_conf(lay, "placement.conf"),
                             "db", "sync"])


def _glance(lay: Layout, run: Runner) -> None:
    run("glance-manage", [_bin(lay, "glance-manage"), *_conf(lay, "glance-api.conf"), "db_sync"])


def _neutron(lay: Layout, run: Runner) -> None:
    run("neutron-db-manage", [_bin(lay, "neutron-db-manage"),
                              *_conf(lay, "neutron.conf", "ml2_conf.ini"), "upgrade", "heads"])


_SYNCS = (_neutron, _nova, _nova_cell0, _keystone, _glance, _placement, _cinder)
