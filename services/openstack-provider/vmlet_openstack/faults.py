"""The one place where OpenStack's errors become the boundary's errors, and server faults reasons.

`to_provider_error` maps whatever an openstacksdk/keystoneauth call raised to a `vmlet_contract`
error with a message a user can act on: what the provider was doing and OpenStack's own words.

  HTTP 400 Bad Request            InvalidArgument (ResourceExhausted for "No valid host")
  HTTP 401                        UNAUTHENTICATED: the provider's credentials were refused
  HTTP 403 Forbidden              PERMISSION_DENIED (ResourceExhausted for a quota)
  HTTP 404 Not Found              NotFound
  HTTP 409 Conflict, 412          FailedPrecondition (the server is not in a state for it)
  HTTP 413 Over limit             ResourceExhausted
  HTTP 429, 502, 503, 504         Unavailable: retry
  HTTP 501                        UNIMPLEMENTED
  other HTTP 5xx                  INTERNAL with OpenStack's message
  refused, reset, timed out, TLS, endpoint discovery failures: Unavailable

Messages never carry a credential: OpenStack's error texts hold none, and the only request detail
added is the service and status code. `server_fault` turns the `fault` of a server in ERROR into
the CamelCase reason and the message of its pod.
"""

from __future__ import annotations

import re
import socket
from typing import Any, Final

import grpc
import requests
from keystoneauth1 import exceptions as ksa
from openstack import exceptions as sdk

from vmlet_contract import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ProviderError,
    ResourceExhausted,
    Unavailable,
)

__all__ = ["is_unavailable", "server_fault", "status_error", "to_provider_error"]

_NO_VALID_HOST = re.compile(r"no valid host", re.IGNORECASE)
_QUOTA = re.compile(r"quota|limit exceeded|exceeds? .*limit", re.IGNORECASE)

_TRANSPORT: Final = (
    ksa.ConnectionError,
    ksa.DiscoveryFailure,
    ksa.EndpointNotFound,
    ksa.AuthorizationFailure,
    requests.ConnectionError,
    requests.Timeout,
    ConnectionError,
    TimeoutError,
    socket.timeout,
)


def status_error(status: int, text: str, doing: str = "") -> ProviderError:
    """The boundary error for an HTTP `status` OpenStack answered with `text`."""
    message = f"{doing}: {text}" if doing else text
    if status == 400:
        if _NO_VALID_HOST.search(text):
            return ResourceExhausted(message)
        return InvalidArgument(message)
    if status == 401:
        return ProviderError(
            f"{message} (OpenStack refused the provider's credentials)",
            code=grpc.StatusCode.UNAUTHENTICATED,
        )
    if status == 403:
        if _QUOTA.search(text):
            return ResourceExhausted(message)
        return ProviderError(
            f"{message} (the OpenStack user lacks a role or policy for this)",
            code=grpc.StatusCode.PERMISSION_DENIED,
        )
    if status == 404:
        return NotFound(message)
    if status in (409, 412):
        return FailedPrecondition(message)
    if status == 413:
        return ResourceExhausted(message)
    if status in (429, 502, 503, 504):
        return Unavailable(message)
    if status == 501:
        return ProviderError(message, code=grpc.StatusCode.UNIMPLEMENTED)
    return ProviderError(message, code=grpc.StatusCode.INTERNAL)


def _http_text(exc: Any, status: int) -> str:
    text = str(getattr(exc, "details", "") or "").strip()
    if not text:
        text = str(getattr(exc, "message", "") or "").strip()
    if not text or text.lower().startswith("client error") or text.lower().startswith("server"):
        text = text or f"HTTP {status}"
    return f"{text} (HTTP {status})" if f"{status}" not in text else text


def _transport_text(exc: BaseException) -> str:
    if isinstance(exc, ksa.SSLError | requests.exceptions.SSLError):
        return "TLS with OpenStack failed; check the CA (cacert in clouds.yaml or OS_CACERT)"
    if isinstance(exc, ksa.ConnectTimeout | requests.Timeout | TimeoutError | socket.timeout):
        return "OpenStack did not answer in time"
    if isinstance(exc, ksa.ConnectFailure | requests.ConnectionError | ConnectionError):
        return "OpenStack is unreachable (connection refused or reset)"
    if isinstance(exc, ksa.EndpointNotFound):
        return "the service is not in OpenStack's catalog (or the catalog is unreachable)"
    if isinstance(exc, ksa.DiscoveryFailure):
        return "OpenStack's version discovery failed: the API is unreachable"
    return f"OpenStack is unreachable ({type(exc).__name__})"


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(chain) < 8:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def to_provider_error(exc: BaseException, doing: str = "") -> ProviderError:
    """The boundary error for `exc`, raised while `doing` (e.g. "start server web-1")."""
    if isinstance(exc, ProviderError):
        return exc
    prefix = f"{doing}: " if doing else ""
    for cause in _causes(exc):
        if isinstance(cause, sdk.HttpException) and cause.status_code is not None:
            status = int(cause.status_code)
            return status_error(status, _http_text(cause, status), doing)
        if isinstance(cause, ksa.HttpError) and getattr(cause, "http_status", None):
            status = int(cause.http_status)
            return status_error(status, _http_text(cause, status), doing)
        if isinstance(cause, _TRANSPORT):
            return Unavailable(prefix + _transport_text(cause))
        if isinstance(cause, sdk.ResourceTimeout):
            return Unavailable(prefix + "OpenStack did not finish in time; retry")
    if isinstance(exc, sdk.SDKException | ksa.ClientException):
        text = str(exc).strip() or type(exc).__name__
        return ProviderError(f"{prefix}{text}", code=grpc.StatusCode.INTERNAL)
    if isinstance(exc, OSError):
        return Unavailable(prefix + f"OpenStack is unreachable ({type(exc).__name__})")
    return ProviderError(
        f"{prefix}unexpected {type(exc).__name__} talking to OpenStack",
        code=grpc.StatusCode.INTERNAL,
    )


def is_unavailable(error: ProviderError) -> bool:
    """Whether OpenStack could not be reached (rather than having said no)."""
    return bool(error.code == grpc.StatusCode.UNAVAILABLE)


# Nova fault messages worth a reason of their own; the rest become ServerError.
_FAULT_REASONS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (_NO_VALID_HOST, "NoValidHost"),
    (re.compile(r"exceeded maximum number of retries", re.I), "RescheduleLimitExceeded"),
    (re.compile(r"build of instance .* aborted", re.I), "BuildAborted"),
    (re.compile(r"image .*(not found|could not be found)", re.I), "ImageNotFound"),
    (re.compile(r"flavor .*(not found|could not be found)", re.I), "FlavorNotFound"),
    (re.compile(r"quota", re.I), "QuotaExceeded"),
    (re.compile(r"port|network|neutron", re.I), "NetworkError"),
    (re.compile(r"volume|cinder|block device", re.I), "VolumeError"),
    (re.compile(r"timed? ?out", re.I), "Timeout"),
)


def server_fault(fault: dict[str, Any] | None, server_name: str) -> tuple[str, str]:
    """The pod's (reason, message) for a server in ERROR with Nova's `fault` (None when Nova
    recorded none): the reason names the fault when it is a known kind (NoValidHost,
    BuildAborted, ...) and is ServerError otherwise; the message is Nova's."""
    if not fault:
        return "ServerError", f"Nova put server {server_name} in ERROR without saying why"
    text = str(fault.get("message") or "").strip() or "no message"
    code = fault.get("code")
    reason = "ServerError"
    for pattern, name in _FAULT_REASONS:
        if pattern.search(text):
            reason = name
            break
    suffix = f" (code {code})" if code else ""
    return reason, f"Nova put server {server_name} in ERROR: {text}{suffix}"
