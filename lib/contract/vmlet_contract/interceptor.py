"""The server interceptor every provider runs behind: error mapping and RPC metrics in one place.

grpc.aio interceptors only see the method handler, not the call, so this one wraps the handler's
behaviour function in a function of the same shape (coroutine for unary responses and for
reader/writer streams, async generator for generator streams); gRPC dispatches on that shape.
Synchronous handlers (only the generated UNIMPLEMENTED stubs, in practice) are wrapped as async
ones. The wrapper is made once per method and cached.

A request body that does not parse as the method's request message reaches the wrapper as
`_Undecodable` (the handler's deserializer is wrapped too; gRPC itself would answer UNKNOWN with
the parser's exception) and ends the call with INVALID_ARGUMENT naming the message type.
Inside the wrapper, every request message (each one of a request stream too) is checked against
the contract's bounds first (`requestbounds.check_request`): out of bounds is INVALID_ARGUMENT
before the provider's code runs. Then:
- a `ProviderError` ends the call with its code and its message;
- `context.abort(...)` done by the servicer passes through untouched;
- NotImplementedError (what the generated base servicers raise) ends it with UNIMPLEMENTED;
- any other exception is logged with its traceback under a short incident id and ends the call
  with INTERNAL and a message that carries only that id;
- a cancelled call (the client went away) is counted as CANCELLED.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

from .errors import InvalidArgument, ProviderError
from .metrics import RpcMetrics, RpcName
from .requestbounds import check_request

__all__ = ["BoundaryInterceptor"]

_log = logging.getLogger(__name__)

_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


class _Call:
    """The bookkeeping of one RPC: start time, outcome, and the mapping of its failure."""

    __slots__ = ("_metrics", "_rpc", "_started", "code")

    def __init__(self, metrics: RpcMetrics, rpc: RpcName) -> None:
        self._metrics = metrics
        self._rpc = rpc
        self._started = time.perf_counter()
        self.code = grpc.StatusCode.OK
        metrics.started(rpc)

    def succeeded(self, context: Any) -> None:
        # A servicer may set a code without raising; honour it.
        code = context.code()
        self.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK

    async def failed(self, exc: BaseException, context: Any) -> NoReturn:
        """Records why the call failed and ends it with the right status; always raises."""
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            self.code = grpc.StatusCode.CANCELLED
            raise exc
        if isinstance(exc, grpc.aio.AbortError):
            code = context.code()
            self.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
            raise exc
        if isinstance(exc, ProviderError):
            self.code = exc.code
            _log.log(
                logging.DEBUG if exc.code is grpc.StatusCode.NOT_FOUND else logging.INFO,
                "rpc failed",
                extra={"rpc": self._rpc.method, "code": exc.code.name, "error": exc.message},
            )
            await context.abort(exc.code, exc.message)
        if not isinstance(exc, Exception):
            raise exc  # KeyboardInterrupt, SystemExit and the like are not ours to map.
        if isinstance(exc, NotImplementedError):
            self.code = grpc.StatusCode.UNIMPLEMENTED
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{self._rpc.service}/{self._rpc.method} is not implemented by this provider",
            )
        incident = uuid.uuid4().hex[:12]
        self.code = grpc.StatusCode.INTERNAL
        _log.error(
            "rpc raised an unexpected error",
            exc_info=exc,
            extra={"rpc": f"{self._rpc.service}/{self._rpc.method}", "incident": incident},
        )
        await context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal provider error (incident {incident}; details are in the provider's log)",
        )
        raise AssertionError("unreachable")  # pragma: no cover - abort always raises

    def finished(self) -> None:
        self._metrics.handled(self._rpc, self.code, time.perf_counter() - self._started)


def _sync_as_async(behaviour: Callable[..., Any], *, streaming: bool) -> Callable[..., Any]:
    """A synchronous handler (the generated base classes' UNIMPLEMENTED stubs) as an async one,
    so it is counted and mapped like the rest."""
    if streaming:

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            for response in behaviour(request, context):
                yield response

        return stream

    async def unary(request: Any, context: Any) -> Any:
        return behaviour(request, context)

    return unary


class _Undecodable:
    """A request body its deserializer refused, with why."""

    __slots__ = ("message", "reason")

    def __init__(self, message: str, reason: str) -> None:
        self.message = message
        self.reason = reason

    def refuse(self) -> NoReturn:
        raise InvalidArgument(
            f"the request is not a valid {self.message} message ({self.reason})"
        )


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserializer``, answering `_Undecodable` instead of raising."""
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message = str(getattr(descriptor, "full_name", "") or "request")

    def deserialize(body: bytes) -> Any:
        try:
            return deserializer(body)
        except Exception as exc:  # whatever the parser raises, the body is the client's fault
            reason = str(exc).rpartition("': ")[2] or type(exc).__name__
            return _Undecodable(message, reason)

    return deserialize


def _check(request: Any) -> None:
    if isinstance(request, _Undecodable):
        request.refuse()
    check_request(request)


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        _check(request)
        yield request


def _checked(request: Any, request_streaming: bool) -> Any:
    """The request, checked against the bounds; a stream is checked message by message."""
    if request_streaming:
        return _checked_stream(aiter(request))
    _check(request)
    return request


def _wrap(
    behaviour: Callable[..., Any], metrics: RpcMetrics, rpc: RpcName, *, streaming: bool
) -> Callable[..., Any]:
    if not (inspect.isasyncgenfunction(behaviour) or inspect.iscoroutinefunction(behaviour)):
        behaviour = _sync_as_async(behaviour, streaming=streaming)
    request_streaming = rpc.type in ("client_stream", "bidi_stream")

    if inspect.isasyncgenfunction(behaviour):
        generator: Callable[[Any, Any], AsyncIterator[Any]] = behaviour

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            call = _Call(metrics, rpc)
            try:
                async for response in generator(_checked(request, request_streaming), context):
                    yield response
                call.succeeded(context)
            except BaseException as exc:
                await call.failed(exc, context)
            finally:
                call.finished()

        return stream

    # A coroutine: a unary response, or a stream written with context.write().
    coroutine: Callable[[Any, Any], Awaitable[Any]] = behaviour

    async def unary(request: Any, context: Any) -> Any:
        call = _Call(metrics, rpc)
        try:
            result = await coroutine(_checked(request, request_streaming), context)
            call.succeeded(context)
            return result
        except BaseException as exc:
            await call.failed(exc, context)
        finally:
            call.finished()

    return unary


class BoundaryInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Maps exceptions to status codes and counts every RPC, for every service of the server."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics
        # Method name -> (handler as registered, handler as wrapped); wrapping once per method
        # keeps the per-call cost to a dict look-up.
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        rpc = RpcName.parse(
            method,
            request_streaming=handler.request_streaming,
            response_streaming=handler.response_streaming,
        )
        changes = {
            kind: _wrap(
                getattr(handler, kind), self._metrics, rpc, streaming=handler.response_streaming
            )
            for kind in _KINDS
            if getattr(handler, kind) is not None
        }
        if handler.request_deserializer is not None:
            changes["request_deserializer"] = _tolerant(handler.request_deserializer)
        wrapped = handler._replace(**changes)
        self._wrapped[method] = (handler, wrapped)
        return wrapped
