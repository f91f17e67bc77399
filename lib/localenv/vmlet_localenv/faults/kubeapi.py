"""A small JSON client of the apiserver as the admin, that waits out an apiserver or etcd that is
down (connection refused or reset, 5xx, 429) instead of failing, as a user retrying would.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

__all__ = ["ApiRefused", "KubeApi"]

MERGE = "application/merge-patch+json"


class ApiRefused(Exception):
    """The apiserver answered with a 4xx: the request was refused, not lost."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


class KubeApi:
    """GET/POST/PATCH/DELETE JSON against ``server``, retrying through outages for ``patience``
    seconds."""

    def __init__(self, server: str, context: ssl.SSLContext, patience: float = 120.0) -> None:
        self.server = server
        self.context = context
        self.patience = patience
        self.retries = 0

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body).encode()
        deadline = time.monotonic() + self.patience
        while True:
            req = urllib.request.Request(self.server + path, data=data, method=method,
                                         headers={"Content-Type": content_type,
                                                  "Accept": "application/json"})
            try:
                with urllib.request.urlopen(req, context=self.context, timeout=15) as resp:
                    return json.loads(resp.read() or b"null")
            except urllib.error.HTTPError as err:
                text = err.read().decode(errors="replace")
                if err.code < 500 and err.code != 429:
                    raise ApiRefused(err.code, text) from None
                last: Exception = err
            except (OSError, urllib.error.URLError) as err:  # refused, reset, timed out
                last = err
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method} {path}: apiserver unavailable: {last}")
            self.retries += 1
            time.sleep(0.5)

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def create(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def merge(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body, MERGE)

    def delete(self, path: str, body: Any = None) -> Any:
        return self.request("DELETE", path, body)
