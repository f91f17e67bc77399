from __future__ import annotations

import pytest

from vmlet_facade.quantity import cpu_millis, memory_bytes


@pytest.mark.parametrize(("text", "millis"), [("1", 1000), ("500m", 500), ("0.5", 500),
                                              ("2.0001", 2001), (3, 3000), ("100u", 1)])
def test_cpu(text: str, millis: int) -> None:
    assert cpu_millis(text) == millis


@pytest.mark.parametrize(("text", "size"), [("1Gi", 2**30), ("512Mi", 512 * 2**20),
                                            ("1G", 10**9), ("1.5Ki", 1536), ("100", 100),
                                            ("1e3", 1000)])
def test_memory(text: str, size: int) -> None:
    assert memory_bytes(text) == size


@pytest.mark.parametrize("text", ["", "abc", "-1", "1Xi", "Gi"])
def test_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        memory_bytes(text)
