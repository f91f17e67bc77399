"""What every verb works with: the cluster, where to print, and a clock to wait by."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from vmlet_kubectl.kubectl import Api, NotFound, Obj

__all__ = [
    "API_VERSION",
    "BACKUP",
    "MIGRATION",
    "RESTORE",
    "VM",
    "Failure",
    "Session",
    "condition",
    "ref",
]

API_VERSION = "vmlet.io/v1alpha1"
# Fully qualified, so that another API's `vm` (KubeVirt's, say) is never the one edited.
VM = "virtualmachines.vmlet.io"
BACKUP = "virtualmachinebackups.vmlet.io"
RESTORE = "virtualmachinerestores.vmlet.io"
MIGRATION = "virtualmachinemigrations.vmlet.io"
_KINDS = {VM: "VirtualMachine", BACKUP: "VirtualMachineBackup", RESTORE: "VirtualMachineRestore",
          MIGRATION: "VirtualMachineMigration"}


class Failure(Exception):
    """The command did not get done; the message says why, for the user."""


def ref(resource: str, name: str) -> str:
    """``virtualmachine.vmlet.io/web``, as kubectl names what it acted on."""
    plural, _, group = resource.partition(".")
    return f"{plural.removesuffix('s')}.{group}/{name}"


def condition(obj: Obj, ctype: str) -> Obj | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return None


@dataclass
class Session:
    """The cluster and the terminal, for one command."""

    api: Api
    out: TextIO
    poll: float = 1.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _namespace: str | None = field(default=None, repr=False)

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def namespace(self) -> str:
        if self._namespace is None:
            self._namespace = self.api.namespace()
        return self._namespace

    def get(self, resource: str, name: str) -> Obj:
        """``name``, or a Failure that names the kind and namespace when it does not exist."""
        try:
            return self.api.get(resource, name)
        except NotFound:
            raise Failure(f'{_KINDS.get(resource, resource)} "{name}" not found in namespace '
                          f'"{self.namespace()}"') from None

    def patch(self, resource: str, name: str, body: Obj) -> Obj:
        try:
            return self.api.patch(resource, name, body)
        except NotFound:
            raise Failure(f'{_KINDS.get(resource, resource)} "{name}" not found in namespace '
                          f'"{self.namespace()}"') from None
