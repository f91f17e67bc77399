"""The vSphere provider: pods become VMs on ESXi hosts through pyvmomi."""
