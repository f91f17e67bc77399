"""Idle connections held open against a port: the stranger of the kubelet API's limit tests.

`Flood` opens many TCP connections from chosen loopback source addresses (anything in
127.0.0.0/8 is this host), optionally completes a TLS handshake on each, and then sends nothing.
Everything is non-blocking and bounded by a deadline; the connections stay open until `close`.
A connection the server refused or dropped shows up as refused or as gone, never as an error.
"""

from __future__ import annotations

import errno
import http.client
import resource
import selectors
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Flood", "FloodCount", "loopback_sources", "raise_nofile", "rss_kib", "timed_get"]

_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (at most the hard limit);
    the limit in effect afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    """``field_name`` (VmRSS, VmHWM...) of process ``pid``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise LookupError(f"{field_name} not in /proc/{pid}/status")


def loopback_sources(count: int, prefix: str = "127.77") -> list[str]:
    """``count`` distinct loopback addresses under ``prefix`` (a /16)."""
    return [f"{prefix}.{i // 250}.{i % 250 + 1}" for i in range(count)]


@dataclass
class FloodCount:
    """What became of the connections one `Flood.open` call tried."""

    tried: int = 0
    connected: int = 0  # TCP established
    handshaken: int = 0  # TLS done (when asked for)
    refused: int = 0  # reset, refused or closed by the server before we were done
    unfinished: int = 0  # still connecting or handshaking at the deadline (closed)
    seconds: float = 0.0


@dataclass
class _Pending:
    sock: socket.socket | ssl.SSLSocket
    tls: bool = False


@dataclass
class Flood:
    """Idle connections to ``host:port``; `close` (or leaving the ``with``) ends them all."""

    host: str
    port: int
    held: list[socket.socket | ssl.SSLSocket] = field(default_factory=list)

    def __enter__(self) -> Flood:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def open(self, count: int, sources: list[str], *, handshake: bool = False,
             deadline: float = 30.0, batch: int = 512, rate: float = 0.0) -> FloodCount:
        """Open ``count`` connections spread over ``sources``; with ``handshake``, complete a
        TLS handshake on each (the server's certificate is not checked). At most ``batch`` are
        in progress at once, and with ``rate`` at most that many are started per second;
        whatever is unfinished after ``deadline`` seconds is closed."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        result = FloodCount(tried=count)
        started = time.monotonic()
        end = started + deadline
        sel = selectors.DefaultSelector()
        next_index = 0
        try:
            while (next_index < count or sel.get_map()) and time.monotonic() < end:
                allowed = count if not rate else \
                    min(count, int((time.monotonic() - started) * rate) + 1)
                while next_index < allowed and len(sel.get_map()) < batch:
                    sock = self._connect(sources[next_index % len(sources)])
                    next_index += 1
                    if sock is None:
                        result.refused += 1
                    else:
                        sel.register(sock, selectors.EVENT_WRITE, _Pending(sock))
                for key, _mask in sel.select(timeout=0.05):
                    self._advance(sel, key, ctx, handshake, result)
        finally:
            for key in list(sel.get_map().values()):
                sel.unregister(key.fileobj)
                key.data.sock.close()
                result.unfinished += 1
            sel.close()
        result.unfinished += count - next_index
        result.seconds = time.monotonic() - started
        return result

    def _connect(self, source: str) -> socket.socket | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            code = sock.connect_ex((self.host, self.port))
        except OSError:
            sock.close()
            return None
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            return None
        return sock

    def _advance(self, sel: selectors.BaseSelector, key: selectors.SelectorKey,
                 ctx: ssl.SSLContext, handshake: bool, result: FloodCount) -> None:
        pending: _Pending = key.data
        sock = pending.sock
        if not pending.tls:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                self._drop(sel, sock, result)
                return
            result.connected += 1
            if not handshake:
                sel.unregister(sock)
                self.held.append(sock)
                return
            sel.unregister(sock)
            wrapped = ctx.wrap_socket(sock, do_handshake_on_connect=False)
            pending = _Pending(wrapped, tls=True)
            sel.register(wrapped, selectors.EVENT_WRITE | selectors.EVENT_READ, pending)
            sock = wrapped
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            sel.modify(sock, selectors.EVENT_READ, pending)
            return
        except ssl.SSLWantWriteError:
            sel.modify(sock, selectors.EVENT_WRITE, pending)
            return
        except (ssl.SSLError, OSError):
            self._drop(sel, sock, result)
            return
        sel.unregister(sock)
        result.handshaken += 1
        self.held.append(sock)

    @staticmethod
    def _drop(sel: selectors.BaseSelector, sock: socket.socket, result: FloodCount) -> None:
        sel.unregister(sock)
        sock.close()
        result.refused += 1

    def alive(self) -> int:
        """How many held connections the server has not closed."""
        sel = selectors.DefaultSelector()
        try:
            for sock in self.held:
                sel.register(sock, selectors.EVENT_READ)
            readable = [key.fileobj for key, _ in sel.select(timeout=0)]
        finally:
            sel.close()
        gone = 0
        for obj in readable:
            if not isinstance(obj, socket.socket):
                continue
            sock = obj
            try:
                # TLS: reads what the server sent after the handshake (session tickets), and
                # notices its close; plain: peeks.
                data = sock.recv(1) if isinstance(sock, ssl.SSLSocket) \
                    else sock.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
            except OSError:
                gone += 1
                continue
            if not data:
                gone += 1
        return len(self.held) - gone

    def close(self) -> None:
        for sock in self.held:
            try:
                sock.close()
            except OSError:
                pass
        self.held.clear()


def timed_get(host: str, port: int, path: str, *, ca: Path, cert: tuple[Path, Path],
              timeout: float = 30.0) -> tuple[int, float]:
    """GET ``path`` over a fresh HTTPS connection with client certificate ``cert``; the
    status and the seconds from connecting to the end of the body."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    started = time.monotonic()
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.monotonic() - started
    finally:
        conn.close()
