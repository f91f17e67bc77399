"""Quantities, durations and ages."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from vmlet_kubectl.units import (
    age,
    cpu_value,
    format_duration,
    memory_value,
    parse_duration,
    parse_quantity,
    same_quantity,
)


@pytest.mark.parametrize(("text", "value"), [
    ("2", Decimal(2)), ("500m", Decimal("0.5")), ("1.5", Decimal("1.5")),
    ("4Gi", Decimal(4 * 2**30)), ("512Mi", Decimal(512 * 2**20)), ("1G", Decimal(10**9)),
    ("1e3", Decimal(1000)), ("1E-3", Decimal("0.001")), ("100k", Decimal(100_000)),
    (".5", Decimal("0.5")), (" 2 ", Decimal(2)), (2, Decimal(2)), (0.5, Decimal("0.5")),
])
def test_parse_quantity(text: str | int | float, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "two", "4GB", "4 Gi", "Gi", "1.2.3", "0x10", "1e"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ValueError, match="invalid quantity"):
        parse_quantity(text)


def test_same_quantity() -> None:
    assert same_quantity("2Gi", "2048Mi")
    assert same_quantity(2, "2")
    assert same_quantity("1", "1000m")
    assert not same_quantity("2Gi", "2G")
    assert not same_quantity(None, "1")
    assert not same_quantity("x", "x")


def test_cpu_and_memory_values() -> None:
    assert cpu_value("4") == 4
    assert cpu_value("500m") == "500m"
    assert cpu_value("1.5") == "1.5"
    assert memory_value("8Gi") == "8Gi"
    with pytest.raises(ValueError, match="more than 0"):
        cpu_value("0m")


@pytest.mark.parametrize(("text", "seconds"), [
    ("5m", 300), ("90s", 90), ("1h30m", 5400), ("120", 120), ("1.5m", 90), ("500ms", 0.5),
    ("1h2m3s", 3723),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "5x", "5m3", "-5s", "0", "nan", "5 m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (4, 90, 300, 3600, 5400, 0.5)] == [
        "4s", "1m30s", "5m", "1h", "1h30m", "0.5s"]


def test_age() -> None:
    now = dt.datetime(2025, 1, 2, 12, 0, 0, tzinfo=dt.UTC)
    assert age("2025-01-02T11:59:15Z", now) == "45s"
    assert age("2025-01-02T11:55:00Z", now) == "5m"
    assert age("2025-01-02T09:00:00Z", now) == "3h"
    assert age("2024-12-29T12:00:00Z", now) == "4d"
    assert age("2025-01-02T11:59:59.123456Z", now) == "0s"
    assert age(None, now) == age("garbage", now) == "<unknown>"
