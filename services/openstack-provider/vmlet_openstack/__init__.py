"""The OpenStack provider: pods become Nova servers on compute hosts through openstacksdk.

Modules, from the bottom up:
  config       settings from flags and environment; auth is openstacksdk's (clouds.yaml, OS_*)
  faults       openstacksdk/keystoneauth errors -> the boundary's errors; server faults -> reasons
  cloud        the connection, the bounded thread pool, REST calls with explicit microversions
  naming       node names, server names, identity tags, metadata keys
  records      servers and flavors as plain values
  sizing       container image -> Glance image, resources -> flavor
  networks     a pod's networks (names or IDs) -> Neutron network IDs, in order
  catalog      flavors, images and networks, cached briefly
  watch        one changes-since server list per interval for all servers
  nodes        compute hosts as nodes, polled and pushed on change
  status       a pod's status from its server
  podtable     the pods the provider runs, their statuses and the push of every change
  converger    one task per identity walks a server toward its pod (move, resize, start, disks)
  pods         create/update/delete by identity
  restarts     StartPod: a stopped server powered on again (start, resume, unpause, unshelve)
  disks        Cinder volumes as disks, attached through Nova's volume attachments
  snapshots    Glance image snapshots, rebuild, VMs by identity
  consolelog   console output (or instance actions) as a log
  stats        what Nova exposes as the stats summary
  backend_*    the kit's backends (`vmlet_contract.kit`) over the above, one per service
  app          the wiring; __main__ the process
"""

from .app import PROVIDER_KIND, OpenStackProvider, build, version
from .config import Settings, settings_from_args

__all__ = [
    "PROVIDER_KIND",
    "OpenStackProvider",
    "Settings",
    "build",
    "settings_from_args",
    "version",
]
