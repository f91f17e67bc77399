"""The small parts: addresses, quantities, hosts' admission, the shell, the state file."""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal
from pathlib import Path

import pytest

from vmlet_contract import ResourceExhausted
from vmlet_memory import shell
from vmlet_memory.addresses import IpPool
from vmlet_memory.hosts import Host, Usage, parse_quantity
from vmlet_memory.statefile import StateFile, read_state


def test_ip_pool_hands_out_reuses_and_runs_out() -> None:
    pool = IpPool("192.168.7.0/30")
    assert pool.size == 2
    a, b = pool.allocate(), pool.allocate()
    assert (a, b) == ("192.168.7.1", "192.168.7.2")
    with pytest.raises(ResourceExhausted):
        pool.allocate()
    pool.release(a)
    assert pool.allocate() == a
    pool.release("192.168.7.2")
    pool.claim("192.168.7.2")
    assert pool.in_use == 2
    with pytest.raises(ValueError):
        pool.claim("10.0.0.1")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("64", Decimal(64)),
        ("500m", Decimal("0.5")),
        ("256Gi", Decimal(256 * 2**30)),
        ("1.5G", Decimal(1_500_000_000)),
        ("10Ki", Decimal(10240)),
    ],
)
def test_quantities(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "lots", "5Q", "-1"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_host_admission() -> None:
    host = Host("h", cpu="2", memory="4Gi", pods=3)
    host.admit(Usage(cpu_millis=1500, memory_bytes=2 << 30), what="a")
    with pytest.raises(ResourceExhausted, match="cpu"):
        host.admit(Usage(cpu_millis=600), what="b")
    host.admit(Usage(cpu_millis=500), what="c")
    host.give_back(Usage(cpu_millis=500))
    assert (host.used_pods, host.used_cpu_millis) == (1, 1500)


async def _run(
    argv: list[str], stdin: list[bytes] | None = None
) -> list[shell.Output | shell.Exit]:
    chunks = list(stdin or [])

    async def read() -> bytes | None:
        return chunks.pop(0) if chunks else None

    return [e async for e in shell.run(argv, read, shell.Guest("g", {"A": "1"}))]


async def test_shell() -> None:
    assert await _run(["echo", "-n", "x"]) == [shell.Output("stdout", b"x"), shell.Exit(0)]
    assert (await _run(["sh", "-c", "echo 'a b'"]))[0] == shell.Output("stdout", b"a b\n")
    assert await _run(["cat"], [b"1", b"2"]) == [
        shell.Output("stdout", b"1"),
        shell.Output("stdout", b"2"),
        shell.Exit(0),
    ]
    assert (await _run(["exit", "300"]))[-1] == shell.Exit(300 & 0xFF)
    assert (await _run(["false"]))[-1] == shell.Exit(1)
    assert (await _run(["env"]))[0] == shell.Output("stdout", b"A=1\n")
    assert (await _run(["printenv", "B"]))[-1] == shell.Exit(1)
    assert (await _run(["sleep", "0.01"]))[-1] == shell.Exit(0)


async def test_state_file_writes_atomically_and_reports_failures(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    assert read_state(path) is None
    data = {"n": 0}
    store = StateFile(path, lambda: dict(data))
    for i in range(5):
        data["n"] = i
        store.mark_dirty()
    await store.flush()
    assert read_state(path) == {"n": 4}
    assert os.listdir(tmp_path) == ["s.json"]

    broken = StateFile(tmp_path / "missing-dir" / "s.json", lambda: {})
    broken.mark_dirty()
    with pytest.raises(RuntimeError, match="cannot write"):
        await asyncio.wait_for(broken.flush(), 5)
