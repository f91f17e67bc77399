"""Just enough of the OpenStack REST APIs to tell when an env is ready, with the standard library.

vmlet-localenv does not depend on openstacksdk; the readiness checks only need a token and a few
GETs against the real Keystone, Nova and Placement.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

__all__ = ["Session", "answers"]


def answers(url: str) -> bool:
    """Whether an HTTP server at ``url`` answers at all (any status below 500)."""
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError as e:
        return e.code < 500


class Session:
    """A project-scoped password session against Keystone v3."""

    def __init__(self, auth_url: str, username: str, password: str, project: str) -> None:
        self._auth_url = auth_url
        self._body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {"name": username, "domain": {"id": "default"},
                                 "password": password},
                    },
                },
                "scope": {"project": {"name": project, "domain": {"id": "default"}}},
            }
        }
        self._token: str | None = None

    def token(self) -> str:
        if self._token is None:
            req = urllib.request.Request(
                f"{self._auth_url}/auth/tokens", data=json.dumps(self._body).encode(),
                headers={"Content-Type": "application/json"}, method="POST",
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                self._token = resp.headers["X-Subject-Token"]
        return self._token

    def get(self, url: str, headers: dict[str, str] | None = None) -> Any:
        req = urllib.request.Request(
            url, headers={"X-Auth-Token": self.token(), "Accept": "application/json",
                          **(headers or {})},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)
