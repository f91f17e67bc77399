"""The facade's unit tests import their fakes (the fakes package) by module name: pytest runs
in importlib mode, which puts no test folder on sys.path, so this one is put there. The fixtures
every controller test shares are here: an empty fake apiserver, a fake provider "fake" with one
node "node-1", the background in which a test runs its controllers, and a PodController started
on them."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from fakes import Background, FakeKube, FakeProvider  # noqa: E402

from vmlet_facade.events import EventRecorder  # noqa: E402
from vmlet_facade.pods import PodController, Route  # noqa: E402
from vmlet_facade.references import Resolver  # noqa: E402


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


@pytest.fixture
def start_pod_controller(kube: FakeKube, provider: FakeProvider, background: Background
                         ) -> Callable[[], Awaitable[PodController[FakeProvider]]]:
    """Starts a PodController as app.py does: adopt the provider's pods, then follow node-1."""
    async def go() -> PodController[FakeProvider]:
        client = kube.client
        controller: PodController[FakeProvider] = PodController(
            client, Resolver(client), EventRecorder(client))
        background.at_end(controller.stop)
        await controller.adopt(provider)
        controller.add_node("node-1", Route(provider, lambda: "192.0.2.1"))
        return controller
    return go
