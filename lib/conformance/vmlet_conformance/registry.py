"""The suite's checks, in the order they run: each a function of a `Subject` that raises on a
breach of the contract.

A check module registers its functions with `@check` when imported; `CHECKS` is the suite,
ordered by `ORDER` of their modules and then as written, so the pytest module of this package
and a project's own tests parametrise over the same list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .subject import Subject

__all__ = ["CHECKS", "ORDER", "Check", "check"]

#: The check modules, in the order their checks run.
ORDER = ("lifecycle", "notifications", "requests", "vmservice", "disks", "endpoints", "logs")


@dataclass(frozen=True)
class Check:
    """One conformance check: ``name`` is its test id, ``run`` the check itself."""

    name: str
    run: Callable[[Subject], None]
    doc: str


CHECKS: list[Check] = []


def check(run: Callable[[Subject], None]) -> Callable[[Subject], None]:
    """Registers ``run`` as a check named after the function."""
    CHECKS.append(Check(run.__name__, run, (run.__doc__ or "").strip()))
    CHECKS.sort(key=lambda c: ORDER.index(c.run.__module__.rsplit(".", 1)[-1]))
    return run
