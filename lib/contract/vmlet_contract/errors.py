"""The one error taxonomy of the provider boundary.

Providers raise a `ProviderError` subclass wherever their IaaS says no; the server scaffold turns
it into the gRPC status code it carries, with its message as the status details. Anything else a
servicer raises becomes INTERNAL with a generic message, so no stack trace ever crosses the
boundary.

The facade side reads codes back with `is_retryable` (retry with backoff, or give up and surface
the error) and `reason_for` (the CamelCase reason written into pod status and Events), and can
turn a failed call back into a typed error with `error_from_rpc`.

Retryable codes are the ones where trying the same call again later can succeed without anyone
changing anything: UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, RESOURCE_EXHAUSTED (room frees up on
the host), CANCELLED, INTERNAL and UNKNOWN (a provider bug or an IaaS hiccup; every call of the
contract is idempotent, so retrying is safe). Permanent codes need the caller or a user to change
something first: INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, UNIMPLEMENTED,
PERMISSION_DENIED, UNAUTHENTICATED, OUT_OF_RANGE and DATA_LOSS.
"""

from __future__ import annotations

from typing import Any, ClassVar

import grpc

__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ProviderError",
    "ResourceExhausted",
    "Unavailable",
    "check_namespace",
    "error_from_rpc",
    "is_retryable",
    "reason_for",
]


class ProviderError(Exception):
    """An error a provider reports to the facade as a gRPC status with a human message.

    Subclasses fix the code; the base class takes any code (INTERNAL when none is given), which
    `error_from_rpc` uses for codes without a subclass of their own.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            # An instance attribute shadows the class default for this one error.
            self.code = code  # type: ignore[misc]

    @property
    def reason(self) -> str:
        """The CamelCase reason the facade shows for this error."""
        return reason_for(self.code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code.name})"


class NotFound(ProviderError):
    """The pod, VM, snapshot or disk named does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ProviderError):
    """Something with that name exists and is not the one asked for."""

    code = grpc.StatusCode.ALREADY_EXISTS


class InvalidArgument(ProviderError):
    """The request cannot be carried out as written, whatever the state of the IaaS."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(ProviderError):
    """The IaaS is not in a state that allows the call, e.g. deleting an attached disk."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ProviderError):
    """There is no room for it: host capacity, quota, or address space."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class PermissionDenied(ProviderError):
    """The caller may not do this to that object: a VM recorded for another namespace."""

    code = grpc.StatusCode.PERMISSION_DENIED


def check_namespace(recorded: str, requested: str, identity: str) -> None:
    """Refuse (PERMISSION_DENIED) to act on the VM of ``identity``, recorded in the IaaS for
    namespace ``recorded``, for namespace ``requested``. Either empty: nothing to hold against."""
    if recorded and requested and recorded != requested:
        raise PermissionDenied(
            f"the VM of identity {identity} belongs to another namespace than {requested}: "
            "it is not adopted, moved or deleted for it")


class Unavailable(ProviderError):
    """The IaaS (or the provider) cannot be reached right now; retry later."""

    code = grpc.StatusCode.UNAVAILABLE


_RETRYABLE: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)

_REASONS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "",
    grpc.StatusCode.CANCELLED: "ProviderCallCancelled",
    grpc.StatusCode.UNKNOWN: "ProviderError",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidSpec",
    grpc.StatusCode.DEADLINE_EXCEEDED: "ProviderTimeout",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "ProviderPermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "InsufficientResources",
    grpc.StatusCode.FAILED_PRECONDITION: "PreconditionFailed",
    grpc.StatusCode.ABORTED: "Conflict",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "NotSupported",
    grpc.StatusCode.INTERNAL: "ProviderError",
    grpc.StatusCode.UNAVAILABLE: "ProviderUnavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "ProviderUnauthenticated",
}

_BY_CODE: dict[grpc.StatusCode, type[ProviderError]] = {
    cls.code: cls
    for cls in (
        NotFound,
        AlreadyExists,
        InvalidArgument,
        FailedPrecondition,
        PermissionDenied,
        ResourceExhausted,
        Unavailable,
    )
}


def is_retryable(code: grpc.StatusCode) -> bool:
    """Whether the same call may succeed later without anyone changing anything."""
    return code in _RETRYABLE


def reason_for(code: grpc.StatusCode) -> str:
    """The CamelCase reason for pod status and Events when a provider call ends with `code`.

    OK has no reason (the empty string).
    """
    return _REASONS.get(code, "ProviderError")


def error_from_rpc(error: grpc.RpcError | Any) -> ProviderError:
    """Turns a failed gRPC call (a `grpc.aio.AioRpcError` or a sync `grpc.RpcError`) back into
    a `ProviderError` of the matching subclass, carrying the status details as its message."""
    code: grpc.StatusCode = error.code()
    message = error.details() or code.name
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls(message)
    return ProviderError(message, code=code)
