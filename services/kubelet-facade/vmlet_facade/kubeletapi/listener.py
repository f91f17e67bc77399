"""The listening socket of the kubelet API, optionally inside a network namespace.

The apiserver refuses to proxy nodes/proxy to loopback and link-local node addresses, so a
facade whose nodes must be reachable through ``kubectl get --raw .../nodes/<n>/proxy/...`` needs
a routable address. ``netns`` lets the listener live in another network namespace of the host
(``/run/netns/NAME`` or a path), for instance one a test made with ``ip netns add`` and a veth
pair, while the facade itself stays in its own: the socket is created by a short-lived thread
that enters the namespace with setns(2) (which needs CAP_SYS_ADMIN), and sockets keep the
namespace they were created in.

The backlog is the kernel's largest (somaxconn): the accept loop refuses what is over the
connection caps itself, cheaply, rather than leaving a flood in the kernel's queue. And since a
Python process keeps the soft RLIMIT_NOFILE it was given (Go raises it to the hard limit by
itself), `raise_nofile` does what Go does, so the connection cap rather than EMFILE decides.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import socket
import threading
from pathlib import Path

__all__ = ["listen", "raise_nofile"]

log = logging.getLogger(__name__)

_CLONE_NEWNET = 0x40000000
_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
_SPARE_FILES = 256  # descriptors the rest of the facade needs beside the kubelet API


def raise_nofile(connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now. Warns when it
    leaves too few descriptors for ``connections`` connections beside the rest."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as err:
            log.warning("cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, hard, err)
    if soft != resource.RLIM_INFINITY and soft < connections + _SPARE_FILES:
        log.warning("RLIMIT_NOFILE %d leaves too few descriptors for %d kubelet API "
                    "connections; raise it or lower --kubelet-max-connections", soft,
                    connections)
    return soft


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def listen(host: str, port: int, netns: str | None = None) -> socket.socket:
    """A non-blocking listening TCP socket on ``host:port`` (in ``netns`` when given)."""
    if not netns:
        return _bind(host, port)
    path = Path(netns) if "/" in netns else Path("/run/netns") / netns
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def inside() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            try:
                target = os.open(path, os.O_RDONLY)
                try:
                    _setns(target)
                    try:
                        made.append(_bind(host, port))
                    finally:
                        _setns(own)
                finally:
                    os.close(target)
            finally:
                os.close(own)
        except BaseException as err:  # handed to the caller's thread
            failed.append(err)

    thread = threading.Thread(target=inside, name="kubelet-listen-netns")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]
