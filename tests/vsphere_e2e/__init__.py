"""vSphere end to end: the real control plane, the facade and the vSphere provider (each its own
process) on a vcsim of three hosts, every step checked in vCenter itself through pyvmomi.

Pods and VirtualMachines are applied with kubectl as a user would; the scheduler picks the
nodes. vcsim runs no guests, so no VMware Tools reports an IP: the tests report one the way the
tools would (vcsim's SET.guest.ipAddress extraConfig key) once the VM is powered on, and check
that nothing before that invents one. The package runs its own vcsim, started once for it
(conftest.py), since its last test restarts it.

  conftest                 the package's vcsim and stack; a namespace per test
  vcenter                  nodes and hosts, vCenter as pyvmomi sees it, the objects applied
  test_pods_and_vms        placement, the VM lifecycle, NICs, Services, duplicate creates, SIGKILL
  test_disks               claims as first-class disks: delete, retain, grow, attach
  test_vcenter_restart     vCenter restarted: re-login and recovery (last: file names sort so)
"""
