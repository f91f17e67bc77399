"""The one vCenter session of the provider: login, keep-alive, re-login, reconnect.

pyvmomi blocks, so every call runs in a bounded thread pool and the asyncio loop only awaits it.
`Session.call(fn)` runs `fn(connection)` in the pool and maps whatever it raises through
`faults`, so callers only ever see `vmlet_contract` errors:

- NotAuthenticated (the session expired, or vCenter restarted and forgot it): log in again on the
  same connection, once for all callers that hit it at the same moment, and retry the call once.
- A transport failure (refused, reset, timed out, TLS): the connection is dropped, the call fails
  with UNAVAILABLE, and the supervisor (`run`) reconnects from scratch with backoff. A caller
  that knows vCenter may just be slow to answer it (the watch's long poll) asks for a timeout to
  fail its call only (`slow_ok`); a dead vCenter is still noticed by the other calls and the
  keep-alive. A fresh
  connection resolves the inventory again and bumps `generation`, which tells the watch to start
  over.
- While there is no connection every call fails at once with UNAVAILABLE and the reason.

Listeners hear about every change of `state`, which the nodes turn into their Ready condition.
The provider never crashes because vCenter is away; it waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

from vmlet_contract import ProviderError, Unavailable

from . import faults
from .config import ConfigError, Secret, Settings, read_password
from .inventory import Inventory, InventoryError, resolve
from .props import service_content

__all__ = ["Connection", "Session", "SessionState"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

#: Pause before trying again after vCenter refused the credentials.
LOGIN_RETRY_SECONDS = 60.0


@dataclass(frozen=True, eq=False)
class Connection:
    """A logged-in ServiceInstance and the inventory resolved on it."""

    si: Any
    generation: int
    inventory: Inventory

    @property
    def content(self) -> Any:
        """The ServiceInstance's content (managers and root folder)."""
        return service_content(self.si)

    def mo(self, cls: Any, moid: str) -> Any:
        """The managed object `cls` with ID `moid`, bound to this connection."""
        return cls(moid, self.si._stub)


@dataclass(frozen=True)
class SessionState:
    """Whether vCenter is reachable, with a CamelCase reason and a message for humans."""

    connected: bool
    reason: str
    message: str
    since: datetime = field(default_factory=lambda: datetime.now(UTC))


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    if settings.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=settings.ca_file)


class Session:
    """Owns the connection to vCenter; see the module docstring."""

    def __init__(self, settings: Settings, pool: Executor) -> None:
        self.settings = settings
        self._pool = pool
        self._conn: Connection | None = None
        self._generation = 0
        self._login_epoch = 0
        self._login_lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._closing = False
        self._listeners: list[Callable[[SessionState], None]] = []
        self._state = SessionState(False, "Connecting", f"connecting to {settings.address.url}")

    # State.

    @property
    def state(self) -> SessionState:
        """The current state of the connection."""
        return self._state

    @property
    def pool(self) -> Executor:
        """The worker threads calls run in."""
        return self._pool

    @property
    def connection(self) -> Connection | None:
        """The current connection, None while vCenter is unreachable."""
        return self._conn

    def add_listener(self, listener: Callable[[SessionState], None]) -> None:
        """Calls `listener(state)` (in the loop) whenever the state changes."""
        self._listeners.append(listener)

    def _set_state(self, connected: bool, reason: str, message: str) -> None:
        old = self._state
        if (old.connected, old.reason, old.message) == (connected, reason, message):
            return
        self._state = SessionState(connected, reason, message)
        level = logging.INFO if connected else logging.WARNING
        _log.log(
            level,
            "vcenter session",
            extra={"connected": connected, "reason": reason, "detail": message},
        )
        for listener in list(self._listeners):
            try:
                listener(self._state)
            except Exception:
                _log.exception("session listener failed")

    def unavailable(self, doing: str = "") -> Unavailable:
        """The error every call gets while there is no connection, naming what the caller was
        `doing` (the state's message says why vCenter is away, not what failed then)."""
        prefix = f"{doing}: " if doing else ""
        return Unavailable(f"{prefix}vCenter {self.settings.address.url}: {self._state.message}")

    # Calls.

    async def _run(
        self, pool: Executor | None, fn: Callable[[Connection], T], conn: Connection
    ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool or self._pool, fn, conn)

    async def call(
        self,
        fn: Callable[[Connection], T],
        *,
        doing: str,
        pool: Executor | None = None,
        slow_ok: bool = False,
    ) -> T:
        """Runs `fn(connection)` in a worker thread; see the module docstring for failures."""
        conn = self._conn
        if conn is None:
            raise self.unavailable(doing)
        epoch = self._login_epoch
        try:
            return await self._run(pool, fn, conn)
        except Exception as exc:
            if not faults.is_not_authenticated(exc):
                raise self._failed(conn, exc, doing, slow_ok) from None
        await self._relogin(conn, epoch)
        try:
            return await self._run(pool, fn, conn)
        except Exception as exc:
            raise self._failed(conn, exc, doing, slow_ok) from None

    def _failed(
        self, conn: Connection, exc: BaseException, doing: str, slow_ok: bool = False
    ) -> ProviderError:
        error = faults.to_provider_error(exc, doing)
        if faults.is_connection_error(exc):
            if slow_ok and faults.is_timeout(exc):
                return error  # a long poll that timed out: expected, vCenter is not lost
            # The state keeps why vCenter went away, not what this call was doing: later
            # calls (a delete) must not quote this one (a clone).
            self.lost(conn, faults.to_provider_error(exc).message)
        elif not faults.is_fault(exc) and not isinstance(exc, ProviderError):
            _log.error("unexpected error calling vCenter", exc_info=exc, extra={"doing": doing})
        return error

    def lost(self, conn: Connection, why: str) -> None:
        """Drops `conn` (when still current) after a transport failure; the supervisor
        reconnects."""
        if self._conn is not conn:
            return
        self._conn = None
        self._connected.clear()
        self._set_state(False, "VCenterUnreachable", why)
        self._wake.set()

    async def _relogin(self, conn: Connection, epoch: int) -> None:
        async with self._login_lock:
            if self._login_epoch != epoch or self._conn is not conn:
                return  # someone else logged in again meanwhile
            settings = self.settings

            def login(c: Connection) -> None:
                c.content.sessionManager.Login(settings.username, self._password().reveal())

            try:
                await self._run(None, login, conn)
            except Exception as exc:
                error = faults.to_provider_error(exc, "log in to vCenter again")
                if isinstance(exc, vim.fault.InvalidLogin):
                    self._conn = None
                    self._connected.clear()
                    self._set_state(False, "InvalidLogin", error.message)
                    self._wake.set()
                elif faults.is_connection_error(exc):
                    self.lost(conn, faults.to_provider_error(exc).message)
                raise error from None
            self._login_epoch += 1
            _log.info("vcenter session re-established", extra={"user": settings.username})

    async def ping(self) -> None:
        """Checks that vCenter answers and the session is logged in (logging in again when it
        is not); Unavailable otherwise."""
        conn = self._conn
        if conn is None:
            raise self.unavailable()
        epoch = self._login_epoch

        def alive(c: Connection) -> bool:
            # An unset property raises AttributeError on a pyVmomi managed object.
            return getattr(c.content.sessionManager, "currentSession", None) is not None

        if not await self.call(alive, doing="check the vCenter session"):
            await self._relogin(conn, epoch)

    async def wait_connected(self) -> Connection:
        """The connection, once there is one."""
        while True:
            if self._closing:
                raise Unavailable("the provider is shutting down")
            conn = self._conn
            if conn is not None:
                return conn
            await self._connected.wait()

    def _password(self) -> Secret:
        """The password: the password file read afresh (a rotated Secret), else the one given."""
        path = self.settings.password_file
        if path is None:
            return self.settings.password
        try:
            return read_password(path)
        except ConfigError:
            _log.warning("cannot read the password file; using the one read at start")
            return self.settings.password

    # The supervisor.

    def _connect(self, generation: int) -> Connection:
        settings = self.settings
        address = settings.address
        si = SmartConnect(
            host=address.host,
            port=address.port,
            path=address.path,
            user=settings.username,
            pwd=self._password().reveal(),
            sslContext=_ssl_context(settings),
            httpConnectionTimeout=settings.http_timeout_seconds,
            connectionPoolTimeout=max(settings.keepalive_seconds * 2, 60),
        )
        # pyVmomi keeps 5 HTTP connections by default and closes the others after each call:
        # with more threads than that, calls would keep making new TLS connections.
        stub = getattr(si, "_stub", None)
        if stub is not None and hasattr(stub, "poolSize"):
            stub.poolSize = settings.workers + 2  # the workers, the watch, one to spare
        try:
            inventory = resolve(si, settings)
        except BaseException:
            _disconnect(si)
            raise
        return Connection(si=si, generation=generation, inventory=inventory)

    async def _attempt(self) -> bool:
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(self._pool, self._connect, self._generation + 1)
        except InventoryError as exc:
            self._set_state(False, "InventoryNotFound", str(exc))
            return False
        except Exception as exc:
            error = faults.to_provider_error(exc, "connect")
            refused = isinstance(exc, vim.fault.InvalidLogin)
            self._set_state(
                False, "InvalidLogin" if refused else "VCenterUnreachable", error.message
            )
            return False
        if self._closing:
            await loop.run_in_executor(self._pool, _disconnect, conn.si)
            return False
        self._generation = conn.generation
        self._conn = conn
        self._connected.set()
        inv = conn.inventory
        self._set_state(
            True,
            "Connected",
            f"logged in to {inv.product} at {self.settings.address.url} as "
            f"{self.settings.username}",
        )
        return True

    async def _sleep(self, seconds: float) -> None:
        """Waits `seconds` or until woken (a lost connection, shutdown)."""
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            return
        self._wake.clear()

    async def run(self) -> None:
        """Connects, keeps the session alive and reconnects, until `close`."""
        backoff = 0.5
        while not self._closing:
            if self._conn is None:
                if await self._attempt():
                    backoff = 0.5
                    continue
                # A refused login is retried slowly, lest the directory lock the account.
                refused = self._state.reason == "InvalidLogin"
                await self._sleep(max(backoff, LOGIN_RETRY_SECONDS) if refused else backoff)
                backoff = min(backoff * 2, self.settings.reconnect_max_seconds)
                continue
            await self._sleep(self.settings.keepalive_seconds)
            if self._closing or self._conn is None:
                continue
            try:
                await self.ping()
            except ProviderError as exc:
                _log.warning("vcenter keep-alive failed", extra={"error": exc.message})

    async def close(self) -> None:
        """Stops the supervisor's loop and logs out."""
        self._closing = True
        self._wake.set()
        self._connected.set()
        conn, self._conn = self._conn, None
        if conn is not None:
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(
                    loop.run_in_executor(self._pool, _disconnect, conn.si), timeout=5
                )
            except (TimeoutError, Exception):
                _log.info("logout from vCenter did not finish")


def _disconnect(si: Any) -> None:
    try:
        Disconnect(si)
    except Exception:  # logging out of a vCenter that went away is not worth a complaint
        _log.debug("logout failed", exc_info=True)
