"""A request's query parameters, as the kubelet's option parsers read them."""

from __future__ import annotations

from typing import Protocol

from starlette.requests import HTTPConnection

__all__ = ["Params", "Query"]


class Params(Protocol):
    """The first value of a parameter, or every value of it."""

    def param(self, name: str, default: str = "") -> str: ...

    def params(self, name: str) -> list[str]: ...


class Query:
    """`Params` of an HTTP request or WebSocket handshake."""

    def __init__(self, conn: HTTPConnection) -> None:
        self._params = conn.query_params

    def param(self, name: str, default: str = "") -> str:
        return self._params.get(name, default)

    def params(self, name: str) -> list[str]:
        return self._params.getlist(name)
