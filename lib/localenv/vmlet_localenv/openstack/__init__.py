"""A real OpenStack on loopback for vmlet's tests and ``make up IAAS=openstack``.

Keystone, Placement, Glance, Neutron, Nova (api, conductor, scheduler and two fake-driver
computes) and Cinder (api, scheduler, volume) of one pinned release, from PyPI in their own
virtualenv (hack/openstack/install.sh). See docs/openstack-env.md.
"""

from .env import (
    OPENSTACK_RELEASE,
    Credentials,
    OpenStackEnv,
    OpenStackNotInstalled,
    default_venv,
    installed,
)

__all__ = [
    "OPENSTACK_RELEASE",
    "Credentials",
    "OpenStackEnv",
    "OpenStackNotInstalled",
    "default_venv",
    "installed",
]
