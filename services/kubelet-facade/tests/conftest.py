"""The facade's unit tests import their fakes (the fakes package) by module name: pytest runs
in importlib mode, which puts no test folder on sys.path, so this one is put there. The fixtures
every controller test shares are here: an empty fake apiserver, a fake provider "fake" with one
node "node-1", and the background in which a test runs its controllers."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from fakes import Background, FakeKube, FakeProvider  # noqa: E402


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    tasks = Background()
    yield tasks
    await tasks.close()
