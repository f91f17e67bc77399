"""The error taxonomy: codes, retryability, reasons, and the way back from a failed call."""

from __future__ import annotations

import grpc
import pytest

from vmlet_contract import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ProviderError,
    ResourceExhausted,
    Unavailable,
    error_from_rpc,
    is_retryable,
    reason_for,
)


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (NotFound, grpc.StatusCode.NOT_FOUND),
        (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
        (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
        (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Unavailable, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_each_error_carries_its_code(cls: type[ProviderError], code: grpc.StatusCode) -> None:
    err = cls("the message")
    assert err.code is code
    assert err.message == "the message"
    assert str(err) == "the message"
    assert isinstance(err, ProviderError)


def test_base_error_defaults_to_internal_and_takes_any_code() -> None:
    assert ProviderError("x").code is grpc.StatusCode.INTERNAL
    err = ProviderError("x", code=grpc.StatusCode.ABORTED)
    assert err.code is grpc.StatusCode.ABORTED
    assert ProviderError.code is grpc.StatusCode.INTERNAL  # the class default is untouched


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    ],
)
def test_retryable_codes(code: grpc.StatusCode) -> None:
    assert is_retryable(code)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DATA_LOSS,
    ],
)
def test_permanent_codes(code: grpc.StatusCode) -> None:
    assert not is_retryable(code)


def test_every_code_has_a_camelcase_reason() -> None:
    for code in grpc.StatusCode:
        reason = reason_for(code)
        if code is grpc.StatusCode.OK:
            assert reason == ""
        else:
            assert reason[:1].isupper() and reason.isalnum(), (code, reason)
    assert reason_for(grpc.StatusCode.INVALID_ARGUMENT) == "InvalidSpec"
    assert reason_for(grpc.StatusCode.RESOURCE_EXHAUSTED) == "InsufficientResources"
    assert reason_for(grpc.StatusCode.UNAVAILABLE) == "ProviderUnavailable"
    assert NotFound("x").reason == "NotFound"


class _FakeRpcError:
    """Quacks like a failed call (code() and details())."""

    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


def test_error_from_rpc_picks_the_subclass() -> None:
    err = error_from_rpc(_FakeRpcError(grpc.StatusCode.NOT_FOUND, "pod a/b not found"))
    assert type(err) is NotFound
    assert err.message == "pod a/b not found"
    other = error_from_rpc(_FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, None))
    assert type(other) is ProviderError
    assert other.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert other.message == "DEADLINE_EXCEEDED"
