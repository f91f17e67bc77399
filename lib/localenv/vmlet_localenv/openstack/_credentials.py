"""Keystone v3 credentials of the env's users, as openstacksdk and clouds.yaml take them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._config import REGION

__all__ = ["Credentials"]


@dataclass(frozen=True)
class Credentials:
    """A Keystone v3 password identity, project-scoped, in the env's only region."""

    auth_url: str
    username: str
    password: str
    project_name: str
    region_name: str = REGION
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"

    def as_dict(self) -> dict[str, str]:
        """Keyword arguments for ``openstack.connect(**creds.as_dict())``."""
        return {
            "auth_url": self.auth_url,
            "username": self.username,
            "password": self.password,
            "project_name": self.project_name,
            "user_domain_name": self.user_domain_name,
            "project_domain_name": self.project_domain_name,
            "region_name": self.region_name,
        }

    def as_cloud(self) -> dict[str, Any]:
        """One entry of a clouds.yaml."""
        auth = {k: v for k, v in self.as_dict().items() if k != "region_name"}
        return {"auth": auth, "region_name": self.region_name, "identity_api_version": 3,
                "interface": "public"}
