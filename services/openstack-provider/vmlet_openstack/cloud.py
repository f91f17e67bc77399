"""The way to OpenStack: one openstacksdk connection, a bounded thread pool, plain-JSON calls.

openstacksdk blocks, so every call runs in a `ThreadPoolExecutor` of `workers` threads and the
event loop only ever awaits it; no call blocks the loop. The calls go through openstacksdk's
service adapters (`conn.compute`, `conn.image`, `conn.placement`: Keystone auth, token renewal,
the catalog, version discovery) as REST requests with an explicit microversion, and come back as
the JSON OpenStack sent, so what the provider relies on is the documented API and not the SDK's
resource mapping:

  compute 2.79  `host` at create (2.74), `networks: none` (2.37), tags at create (2.52), the
                flavor embedded in servers (2.47), migrate to a host (2.56), createImage
                returning the image ID (2.45), live migration without `force` (2.68)
  compute 2.87  the hypervisor list with its vCPUs and memory (dropped in 2.88)
  placement 1.14 resource providers by name, their inventories and usages

The connection is made on first use and re-made after it failed to authenticate, so the provider
starts, serves and keeps trying while Keystone or Nova is down. `Cloud` tracks whether OpenStack
answered the last call and tells its listeners when that changes. Credentials stay inside
openstacksdk: nothing here logs a request, and keystoneauth's and openstacksdk's own loggers are
held at WARNING.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from typing import Any, Final, TypeVar

import grpc
import openstack
import openstack.config
import openstack.connection
from keystoneauth1 import exceptions as ksa
from openstack import exceptions as sdk
from prometheus_client import Counter, Gauge, Histogram

from vmlet_contract import ProviderError

from .config import ConfigError, Settings
from .faults import is_unavailable, to_provider_error

__all__ = ["COMPUTE_MV", "Api", "Cloud", "Listener", "cloud_region", "quiet_sdk_loggers"]

_log = logging.getLogger(__name__)

# The OpenStack side of the provider's metrics (the gRPC side is the scaffold's).
_CALLS = Counter(
    "vmlet_openstack_calls_total",
    "Calls the provider made to OpenStack, by the gRPC code their outcome maps to.",
    ("code",),
)
_RETRIES = Counter(
    "vmlet_openstack_read_retries_total",
    "Reads tried again after OpenStack refused, reset or dropped the connection.",
)
_CALL_SECONDS = Histogram(
    "vmlet_openstack_call_seconds",
    "Time one call to OpenStack took, thread pool wait included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
_REACHABLE = Gauge("vmlet_openstack_reachable", "1 while OpenStack answers, 0 while it does not.")
T = TypeVar("T")

COMPUTE_MV: Final = "2.79"
HYPERVISOR_MV: Final = "2.87"
PLACEMENT_MV: Final = "1.14"
_PAGE: Final = 500

Listener = Callable[[bool, str], None]


def _json(resp: Any) -> Any:
    sdk.raise_from_response(resp)
    if resp.status_code == 204 or not resp.content:
        return None
    return resp.json()


def _server_date(resp: Any) -> float | None:
    text = resp.headers.get("Date")
    if not text:
        return None
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None


class Api:
    """Blocking OpenStack calls over one connection; run them through `Cloud.call`."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    # -- compute: servers ----------------------------------------------------------------
    def list_servers(
        self, *, changes_since: str | None = None, tags: str | None = None
    ) -> tuple[list[dict[str, Any]], float | None]:
        """Every server of the project (with deleted ones when `changes_since` is given), and
        Nova's clock at the time of the first page (its Date header)."""
        params: dict[str, Any] = {"limit": _PAGE}
        if changes_since:
            params["changes-since"] = changes_since
        if tags:
            params["tags"] = tags
        out: list[dict[str, Any]] = []
        date: float | None = None
        while True:
            resp = self.conn.compute.get("/servers/detail", params=params, microversion=COMPUTE_MV)
            body = _json(resp)
            if date is None:
                date = _server_date(resp)
            page = body.get("servers", [])
            out.extend(page)
            nexts = [link for link in body.get("servers_links", []) if link.get("rel") == "next"]
            if not nexts or not page:
                return out, date
            params = {**params, "marker": page[-1]["id"]}

    def get_server(self, server_id: str) -> dict[str, Any]:
        resp = self.conn.compute.get(f"/servers/{server_id}", microversion=COMPUTE_MV)
        server: dict[str, Any] = _json(resp)["server"]
        return server

    def create_server(self, body: dict[str, Any]) -> str:
        """Asks Nova for a server; returns its ID (the rest of the answer, an admin password
        among it, is dropped)."""
        resp = self.conn.compute.post("/servers", json={"server": body}, microversion=COMPUTE_MV)
        server_id: str = _json(resp)["server"]["id"]
        return server_id

    def delete_server(self, server_id: str) -> None:
        _json(self.conn.compute.delete(f"/servers/{server_id}", microversion=COMPUTE_MV))

    def action(self, server_id: str, body: dict[str, Any]) -> Any:
        resp = self.conn.compute.post(
            f"/servers/{server_id}/action", json=body, microversion=COMPUTE_MV
        )
        return _json(resp)

    def set_metadata(self, server_id: str, metadata: dict[str, str]) -> None:
        _json(
            self.conn.compute.post(
                f"/servers/{server_id}/metadata",
                json={"metadata": metadata},
                microversion=COMPUTE_MV,
            )
        )

    def replace_metadata(self, server_id: str, metadata: dict[str, str]) -> None:
        _json(
            self.conn.compute.put(
                f"/servers/{server_id}/metadata",
                json={"metadata": metadata},
                microversion=COMPUTE_MV,
            )
        )

    def set_metadata_item(self, server_id: str, key: str, value: str) -> None:
        _json(
            self.conn.compute.put(
                f"/servers/{server_id}/metadata/{key}",
                json={"meta": {key: value}},
                microversion=COMPUTE_MV,
            )
        )

    def delete_metadata_item(self, server_id: str, key: str) -> None:
        _json(
            self.conn.compute.delete(
                f"/servers/{server_id}/metadata/{key}", microversion=COMPUTE_MV
            )
        )

    def console_output(self, server_id: str, length: int | None) -> str:
        args: dict[str, Any] = {} if length is None else {"length": length}
        body = self.action(server_id, {"os-getConsoleOutput": args})
        return str((body or {}).get("output") or "")

    def instance_actions(self, server_id: str) -> list[dict[str, Any]]:
        resp = self.conn.compute.get(
            f"/servers/{server_id}/os-instance-actions", microversion=COMPUTE_MV
        )
        actions: list[dict[str, Any]] = _json(resp).get("instanceActions", [])
        return actions

    def diagnostics(self, server_id: str) -> dict[str, Any]:
        resp = self.conn.compute.get(f"/servers/{server_id}/diagnostics", microversion=COMPUTE_MV)
        body: dict[str, Any] = _json(resp) or {}
        return body

    # -- compute: hosts and flavors -------------------------------------------------------
    def compute_services(self) -> list[dict[str, Any]]:
        resp = self.conn.compute.get(
            "/os-services", params={"binary": "nova-compute"}, microversion=COMPUTE_MV
        )
        services: list[dict[str, Any]] = _json(resp).get("services", [])
        return services

    def hypervisors(self) -> list[dict[str, Any]]:
        resp = self.conn.compute.get("/os-hypervisors/detail", microversion=HYPERVISOR_MV)
        hypervisors: list[dict[str, Any]] = _json(resp).get("hypervisors", [])
        return hypervisors

    def flavors(self) -> list[dict[str, Any]]:
        resp = self.conn.compute.get("/flavors/detail", microversion=COMPUTE_MV)
        flavors: list[dict[str, Any]] = _json(resp).get("flavors", [])
        return flavors

    def ping(self) -> None:
        """The cheapest authenticated Nova call."""
        _json(self.conn.compute.get("/flavors", params={"limit": 1}, microversion=COMPUTE_MV))

    # -- placement ------------------------------------------------------------------------
    def resource_providers(self) -> list[dict[str, Any]]:
        resp = self.conn.placement.get("/resource_providers", microversion=PLACEMENT_MV)
        providers: list[dict[str, Any]] = _json(resp).get("resource_providers", [])
        return providers

    def inventories(self, provider_uuid: str) -> dict[str, dict[str, Any]]:
        resp = self.conn.placement.get(
            f"/resource_providers/{provider_uuid}/inventories", microversion=PLACEMENT_MV
        )
        inventories: dict[str, dict[str, Any]] = _json(resp).get("inventories", {})
        return inventories

    # -- network --------------------------------------------------------------------------
    def networks(self, name_or_id: str) -> list[dict[str, Any]]:
        """The networks whose ID or name is `name_or_id`."""
        by_id = self.conn.network.get(f"/networks/{name_or_id}")
        if by_id.status_code < 400:
            return [_json(by_id)["network"]]
        body = _json(self.conn.network.get("/networks", params={"name": name_or_id}))
        networks: list[dict[str, Any]] = body.get("networks", [])
        return networks

    # -- image ----------------------------------------------------------------------------
    def images(self, params: dict[str, str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        query: dict[str, Any] = {"limit": _PAGE, **params}
        while True:
            body = _json(self.conn.image.get("/images", params=query))
            page = body.get("images", [])
            out.extend(page)
            if not body.get("next") or not page:
                return out
            query = {**query, "marker": page[-1]["id"]}

    def image(self, image_id: str) -> dict[str, Any]:
        body: dict[str, Any] = _json(self.conn.image.get(f"/images/{image_id}"))
        return body

    def delete_image(self, image_id: str) -> None:
        _json(self.conn.image.delete(f"/images/{image_id}"))


def quiet_sdk_loggers() -> None:
    """Holds the SDK's loggers at WARNING whatever --log-level says: at DEBUG they log requests,
    and nothing of a request belongs in vmlet's logs."""
    for name in (
        "keystoneauth",
        "keystoneauth1",
        "openstack",
        "stevedore",
        "urllib3",
        "os_service_types",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def cloud_region(settings: Settings) -> Any:
    """openstacksdk's configuration of the cloud the settings name (clouds.yaml or OS_*); reads
    files and the environment only, contacts nothing. ConfigError when the cloud is unknown or
    has no auth; the message never carries a credential."""
    try:
        config = openstack.config.OpenStackConfig(
            config_files=[settings.clouds_yaml] if settings.clouds_yaml else None,
            app_name="vmlet-openstack-provider",
        )
        region = config.get_one(
            cloud=settings.cloud,
            region_name=settings.region,
            api_timeout=settings.api_timeout_seconds,
        )
    except (sdk.SDKException, ksa.ClientException) as exc:
        # e.g. "Cloud x was not found.", "Auth plugin requires parameters which were not given:
        # auth_url": names of things, never their secret values.
        raise ConfigError(f"the OpenStack configuration is unusable: {exc}") from None
    auth = region.config.get("auth") or {}
    if not auth.get("auth_url") and region.config.get("auth_type") in (None, "password"):
        raise ConfigError(
            "no OpenStack to talk to: name a cloud (--cloud, OS_CLOUD) or set OS_AUTH_URL and "
            "the other OS_* variables"
        )
    return region


class Cloud:
    """Runs `Api` calls in the thread pool and knows whether OpenStack answers."""

    def __init__(self, settings: Settings, pool: ThreadPoolExecutor | None = None) -> None:
        self.settings = settings
        self._pool = pool or ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="openstack"
        )
        self._lock = threading.Lock()
        self._api: Api | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reachable: bool | None = None
        self.unreachable_reason = ""
        self.last_success = 0.0
        self._listeners: list[Listener] = []
        quiet_sdk_loggers()

    def listen(self, listener: Listener) -> None:
        """Calls `listener(reachable, reason)` on the loop whenever reachability changes."""
        self._listeners.append(listener)

    def _connect(self) -> Api:
        with self._lock:
            if self._api is None:
                region = cloud_region(self.settings)
                self._api = Api(openstack.connection.Connection(config=region))
            return self._api

    def forget_connection(self) -> None:
        """Drops the connection, so the next call authenticates afresh."""
        with self._lock:
            self._api = None

    def _run(self, fn: Callable[[Api], T], doing: str) -> T:
        try:
            return fn(self._connect())
        except ProviderError:
            raise
        except ConfigError as exc:
            # A clouds.yaml without the cloud, or no auth at all: permanent until fixed.
            raise ProviderError(
                f"{doing}: {exc}", code=grpc.StatusCode.FAILED_PRECONDITION
            ) from None
        except Exception as exc:
            error = to_provider_error(exc, doing)
            if error.code.name == "UNAUTHENTICATED":
                self.forget_connection()
            raise error from None

    async def call(self, doing: str, fn: Callable[[Api], T], *, read: bool = False) -> T:
        """Runs `fn(api)` in the pool; raises the boundary error of whatever went wrong, saying
        `doing` (e.g. "create server default-web").

        A `read` (a call that changes nothing in OpenStack) that meets a refused, reset or timed
        out connection is tried again with back-off for up to `read_retry_seconds`: an API worker
        that recycles, or a keep-alive connection the server dropped, is not an outage. Writes are
        never repeated here; their callers look up before they act again."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        deadline = time.monotonic() + (self.settings.read_retry_seconds if read else 0.0)
        delay = 0.2
        while True:
            started = time.monotonic()
            try:
                result = await loop.run_in_executor(self._pool, self._run, fn, doing)
            except ProviderError as error:
                _CALLS.labels(error.code.name).inc()
                if is_unavailable(error) and time.monotonic() + delay < deadline:
                    _RETRIES.inc()
                    _log.info("retrying a read", extra={"doing": doing, "error": error.message})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                if is_unavailable(error) or error.code == grpc.StatusCode.UNAUTHENTICATED:
                    # Refused credentials make OpenStack as unusable as an outage does. The
                    # reason kept is why, not this call's `doing`: later errors must not quote it.
                    self._set_reachable(False, error.message.removeprefix(f"{doing}: "))
                else:
                    self._set_reachable(True, "")
                raise
            finally:
                _CALL_SECONDS.observe(time.monotonic() - started)
            _CALLS.labels("OK").inc()
            self._set_reachable(True, "")
            return result

    def _set_reachable(self, reachable: bool, reason: str) -> None:
        if reachable:
            self.last_success = time.monotonic()
        was = self.reachable
        changed = was is not reachable
        self.reachable = reachable
        _REACHABLE.set(1 if reachable else 0)
        self.unreachable_reason = reason
        if changed:
            if reachable:
                _log.info("OpenStack answers" + (" again" if was is False else ""))
            else:
                _log.warning("OpenStack is unreachable", extra={"error": reason})
            for listener in list(self._listeners):
                try:
                    listener(reachable, reason)
                except Exception:
                    _log.exception("reachability listener failed")

    def close(self) -> None:
        """Lets the threads go; calls still running finish in the background."""
        self._pool.shutdown(wait=False, cancel_futures=True)
