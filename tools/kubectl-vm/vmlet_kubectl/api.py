"""What the verbs need from the cluster, and its errors sorted as kubectl sorts them.

The verbs see a small :class:`Api` (``cluster.Cluster`` on the official client; a fake in unit
tests). Objects are the apiserver's JSON as dicts. Errors come in the few kinds the verbs tell
apart (not found, forbidden, the CRDs missing, anything else), with kubectl's own wording.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = [
    "Api",
    "Forbidden",
    "KubectlError",
    "NotFound",
    "Obj",
    "Target",
    "UnknownResource",
]

Obj = dict[str, Any]
#: What a wait watches: (resource, name, the resourceVersion last seen; "" for none).
Target = tuple[str, str, str]


class KubectlError(Exception):
    """The cluster refused or could not be reached; the message is what kubectl would print,
    without its `error:` prefix."""


class NotFound(KubectlError):
    """The object (or its kind) does not exist."""


class Forbidden(KubectlError):
    """The user may not do this."""


class UnknownResource(KubectlError):
    """The cluster does not serve the kind asked for (the vmlet.io CRDs are not applied)."""


class Api(Protocol):
    """What the commands need from the cluster; unit tests implement it with a fake."""

    def get(self, resource: str, name: str) -> Obj: ...

    def list(self, resource: str, field_selector: str | None = None) -> list[Obj]: ...

    def patch(self, resource: str, name: str, body: Obj) -> Obj: ...

    def create(self, obj: Obj) -> Obj: ...

    def namespace(self) -> str: ...

    def wait_for_change(self, target: Target, timeout: float) -> None:
        """Return once ``target`` changes past its resourceVersion (or appears, or goes), its
        watch ends, or ``timeout`` seconds pass; the caller then looks again."""
        ...
