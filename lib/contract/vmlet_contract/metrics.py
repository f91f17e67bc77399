"""Prometheus metrics of a provider's gRPC server, and the HTTP endpoint that serves them.

The metric names follow go-grpc-prometheus, so dashboards written for Go gRPC servers work on
providers too: `grpc_server_started_total`, `grpc_server_handled_total` (by code) and the
`grpc_server_handling_seconds` histogram, labelled by type, service and method. Streams are timed
from open to close.

Metrics live in a `CollectorRegistry` (the process-wide default unless told otherwise); one set per
registry, so several servers in one process (as in tests) share them instead of colliding.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

__all__ = ["MetricsEndpoint", "RpcMetrics", "RpcName", "split_host_port", "start_metrics_endpoint"]

_log = logging.getLogger(__name__)

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True)
class RpcName:
    """The labels of one RPC method: its kind, service and method name."""

    type: str
    service: str
    method: str

    @classmethod
    def parse(
        cls, full_method: str, *, request_streaming: bool, response_streaming: bool
    ) -> RpcName:
        """Builds the labels from a full method name like `/pkg.Service/Method`."""
        service, _, method = full_method.lstrip("/").rpartition("/")
        if request_streaming and response_streaming:
            kind = "bidi_stream"
        elif request_streaming:
            kind = "client_stream"
        elif response_streaming:
            kind = "server_stream"
        else:
            kind = "unary"
        return cls(type=kind, service=service or "unknown", method=method or full_method)


class RpcMetrics:
    """The RPC counters and the latency histogram of one registry."""

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, RpcMetrics] = (
        weakref.WeakKeyDictionary()
    )
    _lock = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started_total = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            labels,
            registry=registry,
        )
        self.handled_total = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its end (streams included).",
            labels,
            buckets=_BUCKETS,
            registry=registry,
        )
        self.provider_info = Gauge(
            "vmlet_provider_info",
            "Always 1; labelled with the kind of provider this process serves.",
            ("provider",),
            registry=registry,
        )

    @classmethod
    def for_registry(cls, registry: CollectorRegistry | None = None) -> RpcMetrics:
        """The metrics of `registry` (the default registry when None), made on first use."""
        registry = REGISTRY if registry is None else registry
        with cls._lock:
            metrics = cls._by_registry.get(registry)
            if metrics is None:
                metrics = cls(registry)
                cls._by_registry[registry] = metrics
            return metrics

    def started(self, rpc: RpcName) -> None:
        """Counts an RPC that began."""
        self.started_total.labels(rpc.type, rpc.service, rpc.method).inc()

    def handled(self, rpc: RpcName, code: grpc.StatusCode, seconds: float) -> None:
        """Counts an RPC that ended with `code` after `seconds`."""
        self.handled_total.labels(rpc.type, rpc.service, rpc.method, code.name).inc()
        self.handling_seconds.labels(rpc.type, rpc.service, rpc.method).observe(seconds)


def split_host_port(address: str) -> tuple[str, int]:
    """Splits `host:port` (or `[v6]:port`) into its parts; an empty host means all interfaces."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} is not of the form host:port")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


@dataclass
class MetricsEndpoint:
    """A running HTTP server that answers Prometheus scrapes on `/metrics`."""

    host: str
    port: int
    _server: Any

    def close(self) -> None:
        """Stops the server and releases its port."""
        self._server.shutdown()
        self._server.server_close()


def start_metrics_endpoint(
    address: str, registry: CollectorRegistry | None = None
) -> MetricsEndpoint:
    """Serves `registry` over HTTP on `address` (port 0 picks a free port) from a daemon thread."""
    host, port = split_host_port(address)
    server, _thread = start_http_server(
        port, addr=host, registry=REGISTRY if registry is None else registry
    )
    bound = int(server.server_port)
    _log.info("metrics endpoint listening", extra={"address": f"{host}:{bound}", "port": bound})
    return MetricsEndpoint(host=host, port=bound, _server=server)
