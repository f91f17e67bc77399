"""What every verb works with: the cluster, where to print, and a clock to wait by."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from vmlet_api.names import (
    GROUP,
    KINDS,
    VIRTUAL_MACHINE,
    VIRTUAL_MACHINE_BACKUP,
    VIRTUAL_MACHINE_MIGRATION,
    VIRTUAL_MACHINE_RESTORE,
)
from vmlet_kubectl.api import Api, NotFound, Obj, Target

__all__ = [
    "BACKUP",
    "MIGRATION",
    "RESTORE",
    "VM",
    "Failure",
    "Session",
    "condition",
    "ref",
]

# Fully qualified, so that another API's `vm` (KubeVirt's, say) is never the one edited.
VM = VIRTUAL_MACHINE.qualified
BACKUP = VIRTUAL_MACHINE_BACKUP.qualified
RESTORE = VIRTUAL_MACHINE_RESTORE.qualified
MIGRATION = VIRTUAL_MACHINE_MIGRATION.qualified
_KINDS = {k.qualified: k for k in KINDS}


class Failure(Exception):
    """The command did not get done; the message says why, for the user."""


def ref(resource: str, name: str) -> str:
    """``virtualmachine.vmlet.io/web``, as kubectl names what it acted on."""
    kind = _KINDS.get(resource)
    if kind is None:
        return f"{resource}/{name}"
    return f"{kind.singular}.{GROUP}/{name}"


def _kind(resource: str) -> str:
    kind = _KINDS.get(resource)
    return kind.kind if kind else resource


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

    def wait_for_change(self, target: Target | None, seconds: float) -> None:
        """Until ``target`` changes (a watch), at most ``seconds``; with nothing to watch, a
        pause of ``poll`` seconds."""
        if target is None:
            self.sleep(min(self.poll, seconds))
        else:
            self.api.wait_for_change(target, seconds)

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
            raise Failure(f'{_kind(resource)} "{name}" not found in namespace '
                          f'"{self.namespace()}"') from None

    def patch(self, resource: str, name: str, body: Obj) -> Obj:
        try:
            return self.api.patch(resource, name, body)
        except NotFound:
            raise Failure(f'{_kind(resource)} "{name}" not found in namespace '
                          f'"{self.namespace()}"') from None
