"""The request log, a debug feature: one JSON line per request the facade sends to the apiserver
(method, path, watch, status), appended to the file ``VMLET_KUBE_REQUEST_LOG`` names. It shows
what the facade asks for, to hold against its RBAC (docs/operations.md, troubleshooting), and the
deployment tests hold the ClusterRole against it. Off when the variable is unset; a file that
cannot be written is warned about once and the log turns off, never failing a request.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TextIO

__all__ = ["REQUEST_LOG_ENV", "RequestLog"]

#: The environment variable naming the request log's file.
REQUEST_LOG_ENV = "VMLET_KUBE_REQUEST_LOG"

log = logging.getLogger(__name__)


class RequestLog:
    """Appends a line per request to ``path``; records nothing when ``path`` is empty."""

    def __init__(self, path: str = "") -> None:
        self.path = path
        self._out: TextIO | None = None

    @classmethod
    def from_env(cls) -> RequestLog:
        """The log the environment asks for (``REQUEST_LOG_ENV``), read once."""
        return cls(os.environ.get(REQUEST_LOG_ENV, ""))

    def record(self, method: str, path: str, watch: bool, status: int) -> None:
        if not self.path:
            return
        line = json.dumps({"method": method, "path": path, "watch": watch, "status": status})
        try:
            if self._out is None:
                self._out = open(self.path, "a", buffering=1)
            self._out.write(line + "\n")
        except OSError as err:
            log.warning("request log %s turned off: %s", self.path, err)
            self.path = ""
            self.close()

    def close(self) -> None:
        if self._out is not None:
            out, self._out = self._out, None
            try:
                out.close()
            except OSError:
                pass
