"""The vSphere provider: pods become VMs on ESXi hosts through pyvmomi.

Modules, from the bottom up:
  config       settings from flags, environment and a TOML file; credentials as `Secret`
  faults       vSphere faults and connection errors -> the boundary's errors (one table)
  session      the vCenter session: thread pool, login, keep-alive, re-login, reconnect
  inventory    datacenter, clusters, VM folder, datastores, networks, templates
  props        PropertyCollector specs and plain-Python conversion of values
  records      the watched properties and the host/VM records built from them
  cache        hosts and VMs as last seen, by ID, node name and identity
  watch        the WaitForUpdatesEx loop that keeps the cache current
  naming       node names, VM names, label values
  sizing       image -> template, resources -> vCPUs/MiB, quantities
  tasks        waiting for vSphere tasks without holding a thread; the base of what runs them
  nics         NIC i of a VM on network i of its pod: the device changes
  vms          clone, power, shut down, relocate, reconfigure, destroy; templates, networks
  nodes        hosts as nodes, placement of pods on hosts
  disks        first-class disks: create, grow, delete, attach, detach
  status       a pod's status from its VM
  podtable     the pods the provider runs, their statuses and the push of every change
  vmbuilder    a pod's VM: clone (or adopt), move, label, re-network, resize; its extraConfig
  pods         create/update/start/stop/delete/destroy by identity (disks too), under identity locks
  snapshots    snapshots by identity
  events       VM events and tasks as log lines
  stats        quick stats as the stats summary
  backend_*    the kit's backends (`vmlet_contract.kit`) over the above, one per service
  app          the wiring; __main__ the process
"""

from .app import PROVIDER_KIND, VSphereProvider, build, version
from .config import Settings, settings_from_args

__all__ = ["PROVIDER_KIND", "Settings", "VSphereProvider", "build", "settings_from_args", "version"]
