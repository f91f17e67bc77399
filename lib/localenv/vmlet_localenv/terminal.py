"""kubectl as a user runs it from a shell: plainly, or under a pseudo-terminal for `exec -it`.

Tests drive logs, exec, attach and port-forward through the real kubectl. `SPDY` and
`WEBSOCKET` are the environments that pick kubectl's streaming transport, so a test can run the
same command over both. `kubectl_pty` gives kubectl a terminal of a chosen size, as an
interactive shell would; `set_size` resizes it (the caller then signals SIGWINCH, as a terminal
emulator does) and `read_until` reads what kubectl wrote to it.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time

from vmlet_localenv.controlplane import ControlPlane

__all__ = ["SPDY", "WEBSOCKET", "kubectl", "kubectl_pty", "read_until", "set_size"]

SPDY = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false", "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}
WEBSOCKET = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "true", "KUBECTL_PORT_FORWARD_WEBSOCKETS": "true"}


def kubectl(cp: ControlPlane, *args: str, env: dict[str, str] | None = None,
            input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run kubectl against ``cp`` with ``env`` added to ours; a failure is a result, not raised."""
    return subprocess.run(["kubectl", f"--kubeconfig={cp.kubeconfig}", *args],
                          input=input, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def set_size(fd: int, rows: int, cols: int) -> None:
    """Set the window size of the terminal ``fd`` is a side of."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def kubectl_pty(cp: ControlPlane, args: list[str], env: dict[str, str] | None = None, *,
                rows: int = 24, cols: int = 80) -> tuple[subprocess.Popen[bytes], int]:
    """Start kubectl on a new ``rows`` x ``cols`` pseudo-terminal, in a session of its own.

    Returns the process and the terminal's master side, which the caller closes.
    """
    master, slave = pty.openpty()
    set_size(slave, rows, cols)
    proc = subprocess.Popen(["kubectl", f"--kubeconfig={cp.kubeconfig}", *args], stdin=slave,
                            stdout=slave, stderr=slave, env={**os.environ, **(env or {})},
                            start_new_session=True)
    os.close(slave)
    return proc, master


def read_until(master: int, wanted: bytes, timeout: float = 30) -> bytes:
    """Read from ``master`` until ``wanted`` shows up, the terminal closes or ``timeout``
    passes; return all that was read."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                seen += os.read(master, 4096)
            except OSError:
                break
    return seen
