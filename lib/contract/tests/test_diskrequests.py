from __future__ import annotations

import pytest

from vmlet_contract import InvalidArgument
from vmlet_contract.diskrequests import check_create_disk


def test_a_good_request_passes() -> None:
    check_create_disk("pvc-1", 1 << 30, {"type": "ssd"}, ("type", "availability"), "the X provider")


@pytest.mark.parametrize(("name", "size", "params", "message"), [
    ("", 1, {}, "a disk needs a name"),
    ("d", 0, {}, "disk d: the size must be positive, not 0"),
    ("d", 1, {"tpye": "ssd"},
     "disk d: unknown StorageClass parameters ['tpye']; the X provider takes ['type']"),
])
def test_bad_requests_say_what_is_wrong(name: str, size: int, params: dict[str, str],
                                        message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_create_disk(name, size, params, ("type",), "the X provider")
    assert info.value.message == message
