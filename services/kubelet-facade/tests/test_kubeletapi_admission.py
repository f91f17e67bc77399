"""Which connections the kubelet API admits: the caps, and whom a newcomer displaces."""

from __future__ import annotations

import pytest

from vmlet_facade.kubeletapi.admission import Admission, ConnectionLimits, Slot, Stage


def admission(total: int = 4, per_client: int = 2) -> tuple[Admission, list[Slot]]:
    closed: list[Slot] = []
    adm = Admission(ConnectionLimits(max_connections=total,
                                     max_connections_per_client=per_client))
    original = adm.admit

    def admit(address: str) -> Slot | None:
        slot = original(address)
        if slot is not None:
            slot.closer = lambda: closed.append(slot)
        return slot

    adm.admit = admit  # type: ignore[method-assign]
    return adm, closed


def test_strangers_per_address_are_capped_and_authorized_ones_do_not_count() -> None:
    adm, _ = admission(total=10, per_client=2)
    first, second = adm.admit("10.0.0.1"), adm.admit("10.0.0.1")
    assert first is not None and second is not None
    assert adm.admit("10.0.0.1") is None  # a third stranger from the same address
    assert adm.admit("10.0.0.2") is not None  # another address is not affected
    first.authorize()
    assert adm.admit("10.0.0.1") is not None  # the apiserver's authorized streams free room
    second.release()
    second.release()  # idempotent
    assert adm.open == 3 and adm.strangers == 2


def test_at_the_cap_the_least_advanced_oldest_stranger_makes_room() -> None:
    adm, closed = admission(total=3, per_client=3)
    handshaking, silent_old, silent_new = (adm.admit("a"), adm.admit("b"), adm.admit("c"))
    assert handshaking is not None and silent_old is not None and silent_new is not None
    handshaking.advance(Stage.HANDSHAKE)
    newcomer = adm.admit("d")
    assert newcomer is not None and closed == [silent_old] and silent_old.released
    assert adm.open == 3
    later = adm.admit("e")
    assert later is not None and closed == [silent_old, silent_new]
    # No silent stranger left: the oldest of those in their handshake goes, not the
    # handshaken one.
    newcomer.advance(Stage.HANDSHAKEN)
    later.advance(Stage.HANDSHAKE)
    assert adm.admit("f") is not None and closed[-1] is handshaking
    # A silent newcomer goes before any stranger that has shown more, however old.
    assert adm.admit("g") is not None and closed[-1].address == "f"


def test_authorized_connections_are_never_evicted_and_the_cap_then_refuses() -> None:
    adm, closed = admission(total=2, per_client=2)
    slots = [adm.admit("apiserver"), adm.admit("apiserver")]
    for slot in slots:
        assert slot is not None
        slot.authorize()
    assert adm.admit("stranger") is None and closed == []
    assert adm.open == 2 and adm.strangers == 0


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        ConnectionLimits(max_connections=0)
    with pytest.raises(ValueError):
        ConnectionLimits(handshake_timeout=0)
    with pytest.raises(ValueError):
        ConnectionLimits(max_header_bytes=10)
