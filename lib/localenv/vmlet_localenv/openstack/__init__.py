"""A real OpenStack on loopback for vmlet's tests and ``make up IAAS=openstack``.

Keystone, Placement, Glance, Neutron, Nova (api, conductor, scheduler and two fake-driver
computes) and Cinder (api, scheduler, volume) of one pinned release, from PyPI in their own
virtualenv (hack/openstack/install.sh). See docs/openstack-env.md.

Modules:
  env              OpenStackEnv: start (state dir, ports, processes in order) and stop
  _install         the pinned release, its virtualenv, whether the env can start here
  _credentials     Keystone credentials as openstacksdk and clouds.yaml take them
  _config          the layout: ports, passwords, URLs and every service's config file
  _process         processes (spawned, logged, waited for, ended), free ports, waits
  _rest            a small Keystone-authenticated REST session
  client           openstacksdk connections to the env's clouds (tests, benchmarks)
  _mariadb, _rabbit, _databases   the database server, the broker, the migrated-schema template
  _bootstrap       users, catalog, project, flavors and image (run in the OpenStack venv)
  _networking, _macvtap_agent     Neutron networks whose ports bind, the agents' config
  _cinder, _cinder_backend        Cinder's config and its sparse-file volume backend
  _readiness       waiting until the computes and network agents are usable
  __main__         the CLI
"""

from ._credentials import Credentials
from ._install import OPENSTACK_RELEASE, OpenStackNotInstalled, default_venv, installed
from .env import OpenStackEnv

__all__ = [
    "OPENSTACK_RELEASE",
    "Credentials",
    "OpenStackEnv",
    "OpenStackNotInstalled",
    "default_venv",
    "installed",
]
