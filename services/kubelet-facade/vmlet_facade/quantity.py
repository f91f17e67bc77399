"""Kubernetes resource quantities as integers: CPU in millicores, memory in bytes."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

__all__ = ["InvalidQuantity", "cpu_millis", "memory_bytes", "parse_quantity"]

_SUFFIXES: dict[str, int | Decimal] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}


class InvalidQuantity(ValueError):
    """A quantity the facade cannot read: a fault of the object that carries it, not of vmlet."""


def parse_quantity(text: str | int | float) -> Decimal:
    """Parse a quantity such as ``500m``, ``2``, ``1.5Gi`` or ``1e3``; InvalidQuantity when
    invalid."""
    s = str(text).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if suffix and s.endswith(suffix):
            number, mult = s[: -len(suffix)], _SUFFIXES[suffix]
            break
    else:
        number, mult = s, Decimal(1)
    try:
        value = Decimal(number) * Decimal(mult)
    except InvalidOperation:
        raise InvalidQuantity(f"invalid quantity {text!r}") from None
    if value < 0 or not value.is_finite():
        raise InvalidQuantity(f"invalid quantity {text!r}")
    return value


def cpu_millis(text: str | int | float) -> int:
    """CPU quantity in millicores, rounded up."""
    return int((parse_quantity(text) * 1000).to_integral_value(rounding="ROUND_CEILING"))


def memory_bytes(text: str | int | float) -> int:
    """Memory quantity in bytes, rounded up."""
    return int(parse_quantity(text).to_integral_value(rounding="ROUND_CEILING"))
