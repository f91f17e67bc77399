"""openstacksdk connections to the env's clouds, as its tests, benchmarks and demo make them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# keystoneauth tries a request again this many times when the connection is refused or reset.
# A pooled keep-alive connection can be closed by the API server just as a request goes out on
# it; without a retry that race fails whatever call met it.
CONNECT_RETRIES = 3


def sdk_connection(clouds_yaml: Path | str, cloud: str, *, api_timeout: float = 60) -> Any:
    """An ``openstack.connection.Connection`` to `cloud` of `clouds_yaml` (openstacksdk is
    imported here: it lives in the workspace's environment, not in this package's)."""
    import openstack.config
    import openstack.connection

    config = openstack.config.OpenStackConfig(config_files=[str(clouds_yaml)])
    region = config.get_one(cloud=cloud, api_timeout=api_timeout,
                            connect_retries=CONNECT_RETRIES)
    return openstack.connection.Connection(config=region)
