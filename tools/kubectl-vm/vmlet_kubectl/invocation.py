"""One parsed `kubectl vm` command line, as the verbs receive it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_TIMEOUT", "Invocation"]

DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Invocation:
    """What the user asked for; connection flags are None where kubectl's defaults apply."""

    verb: str
    name: str
    wait: bool = False
    timeout: float = DEFAULT_TIMEOUT
    cpu: int | str | None = None
    memory: str | None = None
    target_node: str | None = None
    backup: str | None = None
    resource_name: str | None = None
    namespace: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
