"""`kubectl vm`: a kubectl plugin for vmlet's VirtualMachines.

Installed as the console script ``kubectl-vm``, so `kubectl vm ...` finds it on PATH. It edits
the vmlet.io/v1alpha1 resources with the official `kubernetes` client, connected as the user's
kubectl is, and watches their status.
"""

from vmlet_kubectl.cli import build_parser, main, parse
from vmlet_kubectl.invocation import Invocation

__all__ = ["Invocation", "build_parser", "main", "parse"]
