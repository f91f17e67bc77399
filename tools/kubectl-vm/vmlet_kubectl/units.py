"""Quantities, durations and ages, as users type them and as Kubernetes prints them.

Quantities are checked here so that `--cpu two` fails before anything is sent, and compared by
value so that a VM resized to `2048Mi` is recognised once its status says `2Gi`.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation

__all__ = [
    "age",
    "cpu_value",
    "format_duration",
    "memory_value",
    "parse_duration",
    "parse_quantity",
    "same_quantity",
]

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE](?P<exponent>[+-]?\d+))?$")
_SCALE = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_quantity(value: str | int | float) -> Decimal:
    """The value of a Kubernetes quantity (``500m`` -> 0.5, ``1Gi`` -> 1073741824)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid quantity {value!r}")
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _QUANTITY.match(value.strip())
    if match is None:
        raise ValueError(f"invalid quantity {value!r} (expected e.g. 2, 500m, 4Gi, 1.5G)")
    try:
        number = Decimal(match["number"])
    except InvalidOperation:
        raise ValueError(f"invalid quantity {value!r}") from None
    if match["exponent"] is not None:
        return number.scaleb(int(match["exponent"]))
    return number * _SCALE[match["suffix"] or ""]


def same_quantity(a: object, b: object) -> bool:
    """Whether two quantities (strings or numbers) have the same value."""
    if not isinstance(a, str | int | float) or not isinstance(b, str | int | float):
        return False
    try:
        return parse_quantity(a) == parse_quantity(b)
    except ValueError:
        return False


def cpu_value(text: str) -> int | str:
    """``--cpu`` as it goes into spec.cpu: a whole number stays a number, as users write it."""
    if parse_quantity(text) <= 0:
        raise ValueError(f"invalid cpu {text!r}: must be more than 0")
    text = text.strip()
    return int(text) if text.isdigit() else text


def memory_value(text: str) -> str:
    """``--memory`` as it goes into spec.memory."""
    if parse_quantity(text) <= 0:
        raise ValueError(f"invalid memory {text!r}: must be more than 0")
    return text.strip()


def parse_duration(text: str) -> float:
    """Seconds in a duration as kubectl takes them: ``5m``, ``90s``, ``1h30m``, ``120``."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match[1]) * _SECONDS[match[2]]
            pos = match.end()
        if pos != len(text) or not text:
            raise ValueError(f"invalid duration {text!r} (expected e.g. 30s, 5m, 1h30m)") from None
    if seconds <= 0 or seconds != seconds:
        raise ValueError(f"invalid duration {text!r}: must be more than 0")
    return seconds


def format_duration(seconds: float) -> str:
    """``300`` -> ``5m``, ``90`` -> ``1m30s``."""
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:g}s" if seconds < 1 else f"{whole}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "",
             f"{secs}s" if secs else ""]
    return "".join(parts)


def age(timestamp: str | None, now: dt.datetime | None = None) -> str:
    """How long ago an RFC 3339 timestamp was, as kubectl prints ages (``45s``, ``3m``, ``2d``)."""
    if not timestamp:
        return "<unknown>"
    try:
        then = dt.datetime.fromisoformat(timestamp)
    except ValueError:
        return "<unknown>"
    if then.tzinfo is None:
        then = then.replace(tzinfo=dt.UTC)
    seconds = max(0, int(((now or dt.datetime.now(dt.UTC)) - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
