"""The one place where vSphere faults and connection errors become the boundary's errors.

Everything pyvmomi raises (vmodl/vim faults from vCenter, socket, TLS and HTTP errors on the way
there) is mapped here to a `vmlet_contract` error with a message a user can act on: what the
provider was doing, the fault's name and vCenter's own message. No traceback and no credential
goes into a message. The order of the table matters: the first matching class wins, and several
faults are subclasses of others (NotAuthenticated is a NoPermission, InvalidPowerState an
InvalidState, NoDiskSpace a FileFault).

A size vSphere cannot hold is the caller's mistake, never an internal error: the faults for it
(VmConfigFault and its NumVirtualCpusNotSupported, MemorySizeNotSupported...; FileTooLarge for a
disk; InvalidRequest when vCenter cannot even decode a number, as for 2^62 CPUs) and a number
pyvmomi cannot serialise (OverflowError) are INVALID_ARGUMENT.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable
from typing import Any, Final

import grpc
from pyVmomi import vim, vmodl

from vmlet_contract import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ProviderError,
    ResourceExhausted,
    Unavailable,
)

__all__ = [
    "fault_name",
    "is_connection_error",
    "is_fault",
    "is_not_authenticated",
    "is_timeout",
    "to_provider_error",
]


def _permission_denied(message: str) -> ProviderError:
    return ProviderError(message, code=grpc.StatusCode.PERMISSION_DENIED)


def _aborted(message: str) -> ProviderError:
    return ProviderError(message, code=grpc.StatusCode.ABORTED)


def _unimplemented(message: str) -> ProviderError:
    return ProviderError(message, code=grpc.StatusCode.UNIMPLEMENTED)


def _internal(message: str) -> ProviderError:
    return ProviderError(message, code=grpc.StatusCode.INTERNAL)


# (fault class, error factory, hint appended to the message)
_TABLE: Final[tuple[tuple[type[Any], Callable[[str], ProviderError], str], ...]] = (
    (vim.fault.InvalidLogin, Unavailable, "vCenter refused the login: check the credentials"),
    (vim.fault.NotAuthenticated, Unavailable, "the vCenter session is not logged in; retry"),
    (vim.fault.NoPermission, _permission_denied, "the vCenter user lacks a privilege"),
    (vmodl.fault.SecurityError, _permission_denied, ""),
    (vmodl.fault.ManagedObjectNotFound, NotFound, "the vSphere object no longer exists"),
    (vim.fault.NotFound, NotFound, ""),
    (vim.fault.InsufficientResourcesFault, ResourceExhausted, "no room for it on the host"),
    (vim.fault.NoDiskSpace, ResourceExhausted, "the datastore is full"),
    (vim.fault.FileTooLarge, InvalidArgument, "larger than the datastore takes"),
    (vim.fault.InvalidPowerState, FailedPrecondition, "the VM is not in a power state for it"),
    (vim.fault.InvalidHostState, FailedPrecondition, "the host does not allow it now"),
    (vim.fault.InvalidState, FailedPrecondition, ""),
    (vim.fault.TaskInProgress, _aborted, "another task is busy with the object; retry"),
    (vim.fault.DuplicateName, AlreadyExists, ""),
    (vim.fault.AlreadyExists, AlreadyExists, ""),
    (vim.fault.InvalidName, InvalidArgument, ""),
    (vim.fault.VmConfigFault, InvalidArgument, "vCenter refused the VM's configuration"),
    (vim.fault.InvalidDatastore, FailedPrecondition, ""),
    (vim.fault.MigrationFault, FailedPrecondition, "the VM cannot move there"),
    (vim.fault.FileFault, FailedPrecondition, ""),
    (vmodl.fault.InvalidArgument, InvalidArgument, ""),
    (vmodl.fault.InvalidRequest, InvalidArgument, "a value is out of the range vSphere takes"),
    (vmodl.fault.NotImplemented, _unimplemented, ""),
    (vmodl.fault.NotSupported, FailedPrecondition, "vCenter does not support it here"),
    (vmodl.fault.RequestCanceled, Unavailable, "vCenter canceled the request; retry"),
    (vmodl.fault.HostCommunication, Unavailable, "vCenter cannot reach the host"),
    (vim.fault.HostConnectFault, Unavailable, "vCenter cannot reach the host"),
    (vim.fault.Timedout, Unavailable, "vCenter timed out; retry"),
)

_CONNECTION_ERRORS: Final = (
    ConnectionError,
    TimeoutError,
    socket.timeout,
    socket.gaierror,
    ssl.SSLError,
    http.client.HTTPException,
    OSError,
)


def is_fault(exc: BaseException) -> bool:
    """Whether `exc` is a fault vCenter answered with (rather than a transport failure)."""
    return isinstance(exc, vmodl.MethodFault)


def is_not_authenticated(exc: BaseException) -> bool:
    """Whether the session behind the call is gone (expired, or vCenter restarted)."""
    return isinstance(exc, vim.fault.NotAuthenticated)


def is_connection_error(exc: BaseException) -> bool:
    """Whether the call never got an answer from vCenter (refused, reset, timed out, TLS)."""
    return not is_fault(exc) and isinstance(exc, _CONNECTION_ERRORS)


def is_timeout(exc: BaseException) -> bool:
    """Whether the call timed out waiting for vCenter's answer (vCenter may merely be slow)."""
    return not is_fault(exc) and isinstance(exc, TimeoutError | socket.timeout)


def fault_name(fault: Any) -> str:
    """The short name of a fault class, e.g. InvalidPowerState."""
    return str(type(fault).__name__).rsplit(".", 1)[-1]


def _fault_text(fault: Any) -> str:
    text = str(getattr(fault, "msg", "") or "").strip()
    if not text:
        for message in getattr(fault, "faultMessage", None) or ():
            text = str(getattr(message, "message", "") or "").strip()
            if text:
                break
    # vcsim puts the Go type name in the message; that says nothing a user needs.
    if text.startswith("*types."):
        text = ""
    return text


def _connection_text(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS verification of vCenter failed ({exc.verify_message}); give its CA with --ca-file"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS with vCenter failed ({exc.reason or exc})"
    if isinstance(exc, socket.gaierror):
        return "vCenter's host name does not resolve"
    if isinstance(exc, ConnectionRefusedError):
        return "vCenter refused the connection"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "vCenter did not answer in time"
    if isinstance(exc, ConnectionError | http.client.HTTPException):
        return f"the connection to vCenter broke ({type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return f"vCenter is unreachable ({type(exc).__name__}: {exc.strerror})"
    return f"vCenter is unreachable ({type(exc).__name__})"


def to_provider_error(exc: BaseException, doing: str = "") -> ProviderError:
    """The boundary error for `exc`, raised while `doing` (e.g. "power on VM web-1")."""
    if isinstance(exc, ProviderError):
        return exc
    prefix = f"{doing}: " if doing else ""
    if is_fault(exc):
        name, text = fault_name(exc), _fault_text(exc)
        for cls, factory, hint in _TABLE:
            if isinstance(exc, cls):
                detail = "; ".join(part for part in (text, hint) if part)
                return factory(f"{prefix}{name}" + (f": {detail}" if detail else ""))
        return _internal(f"{prefix}vCenter fault {name}" + (f": {text}" if text else ""))
    if is_connection_error(exc):
        return Unavailable(f"{prefix}{_connection_text(exc)}")
    if isinstance(exc, OverflowError):
        return InvalidArgument(f"{prefix}a value is out of the range vSphere takes")
    return _internal(f"{prefix}unexpected {type(exc).__name__} talking to vCenter")
