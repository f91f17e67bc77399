"""A failed call's error names that call: what an earlier call was doing when vCenter went away
does not leak into the errors (and so the facade's Events) of later ones."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from vmlet_contract import Unavailable
from vmlet_vmware.config import Secret, Settings, VCenterAddress
from vmlet_vmware.session import Connection, Session


def refused(conn: Any) -> None:
    raise ConnectionRefusedError(111, "Connection refused")


def test_a_delete_after_a_broken_clone_names_the_delete() -> None:
    async def scenario() -> tuple[str, str, str]:
        with ThreadPoolExecutor(2) as pool:
            settings = Settings(address=VCenterAddress("127.0.0.1", 1), username="u",
                                password=Secret("p"))
            session = Session(settings, pool)
            session._conn = Connection(si=None, generation=1, inventory=None)  # type: ignore[arg-type]
            with pytest.raises(Unavailable) as clone:
                await session.call(refused, doing="clone VM web-1")
            assert session.connection is None  # the refusal dropped the connection
            with pytest.raises(Unavailable) as delete:
                await session.call(refused, doing="destroy VM web-1")
            return clone.value.message, delete.value.message, session.state.message

    clone, delete, state = asyncio.run(scenario())
    assert clone.startswith("clone VM web-1: ")
    assert delete.startswith("destroy VM web-1: vCenter https://127.0.0.1:1")
    assert delete.endswith("vCenter refused the connection")
    assert "clone" not in delete and "clone" not in state


def test_a_long_poll_that_times_out_is_neither_lost_nor_an_error(
        caplog: pytest.LogCaptureFixture) -> None:
    """The watch's long poll (slow_ok) timing out keeps the session and logs nothing at ERROR."""

    def slow(conn: Any) -> None:
        raise TimeoutError("timed out")

    async def scenario() -> bool:
        with ThreadPoolExecutor(2) as pool:
            settings = Settings(address=VCenterAddress("127.0.0.1", 1), username="u",
                                password=Secret("p"))
            session = Session(settings, pool)
            session._conn = Connection(si=None, generation=1, inventory=None)  # type: ignore[arg-type]
            with pytest.raises(Unavailable):
                await session.call(slow, doing="watch vCenter", slow_ok=True)
            return session.connection is not None

    with caplog.at_level("DEBUG"):
        kept = asyncio.run(scenario())
    assert kept
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
