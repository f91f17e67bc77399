"""Prometheus metrics of the kubelet API: requests by endpoint and code, open sessions.

``vmlet_facade_kubelet_api_sessions`` counts the exec/attach/port-forward/log sessions open
right now: it returns to zero when clients are gone, which is how tests prove that a stream cut
off midway leaves nothing behind.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = ["AUTH_DECISIONS", "CONNECTIONS", "CONNECTIONS_CLOSED", "CONNECTIONS_REFUSED",
           "REQUESTS", "SESSIONS", "SESSION_ENDS", "UPGRADES"]

REQUESTS = Counter("vmlet_facade_kubelet_api_requests_total",
                   "Requests to the kubelet API, by endpoint and HTTP status",
                   ["endpoint", "code"])
SESSIONS = Gauge("vmlet_facade_kubelet_api_sessions",
                 "Streaming sessions (exec, attach, portforward, logs) open now", ["kind"])
SESSION_ENDS = Counter("vmlet_facade_kubelet_api_session_ends_total",
                       "Streaming sessions ended, by how they ended", ["kind", "end"])
AUTH_DECISIONS = Counter("vmlet_facade_kubelet_api_auth_total",
                         "Authentication and authorization outcomes of the kubelet API, "
                         "by step, result and whether the answer came from the cache",
                         ["step", "result", "cached"])
UPGRADES = Counter("vmlet_facade_kubelet_api_upgrades_total",
                   "Connections switched to a streaming protocol, by endpoint, transport "
                   "(spdy or websocket) and negotiated protocol", ["endpoint", "transport",
                                                                  "protocol"])
CONNECTIONS = Gauge("vmlet_facade_kubelet_api_connections",
                    "Open connections to the kubelet API: strangers (no request authorized "
                    "yet) and authorized", ["state"])
CONNECTIONS_REFUSED = Counter("vmlet_facade_kubelet_api_connections_refused_total",
                              "Connections closed as accepted, before any TLS, because a cap "
                              "was reached: total (every slot authorized) or client (too many "
                              "strangers from one address)", ["reason"])
CONNECTIONS_CLOSED = Counter("vmlet_facade_kubelet_api_connections_closed_total",
                             "Connections the kubelet API closed on a limit: evicted (the "
                             "oldest stranger, to admit a newcomer at the cap), "
                             "handshake_timeout, request_timeout (a stranger's request), "
                             "idle_timeout (an authorized connection's keep-alive), "
                             "header_too_large", ["reason"])
