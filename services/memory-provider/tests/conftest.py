"""Fixtures for the memory provider's tests: a provider served in-process on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from vmlet_memory.cloud import CloudOptions
from vmlet_memory.testing import Harness, running_provider


@pytest.fixture
async def mp() -> AsyncIterator[Harness]:
    """A memory provider with two nodes and no start delay."""
    async with running_provider(CloudOptions()) as harness:
        yield harness
