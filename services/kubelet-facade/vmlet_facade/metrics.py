"""Prometheus metrics of the facade."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["NODE_SERVED", "NODE_SHARD_CHANGES", "provider_call", "status_write"]

PROVIDER_CALLS = Counter("vmlet_facade_provider_calls_total",
                         "Provider calls made by the facade", ["method", "result"])
PROVIDER_LATENCY = Histogram("vmlet_facade_provider_call_seconds",
                             "Latency of provider calls", ["method"])
STATUS_WRITES = Counter("vmlet_facade_pod_status_writes_total",
                        "Pod status patches sent to the apiserver", ["result"])
NODE_SERVED = Gauge("vmlet_facade_node_served",
                    "1 for each node this replica serves (--shard-nodes), by name and replica",
                    ["node", "replica"])
NODE_SHARD_CHANGES = Counter("vmlet_facade_node_shard_changes_total",
                             "Nodes this replica took or gave up (--shard-nodes)", ["change"])


@contextmanager
def provider_call(method: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    except Exception:
        PROVIDER_CALLS.labels(method, "error").inc()
        raise
    else:
        PROVIDER_CALLS.labels(method, "ok").inc()
    finally:
        PROVIDER_LATENCY.labels(method).observe(time.perf_counter() - start)


@contextmanager
def status_write() -> Iterator[None]:
    try:
        yield
    except Exception:
        STATUS_WRITES.labels("error").inc()
        raise
    STATUS_WRITES.labels("ok").inc()
