"""Child processes of the OpenStack env that cannot outlive it.

Every OpenStack service runs in its own session with a parent-death signal. Linux delivers that
signal when the *thread* that forked the child ends, not the process, so long-lived services are
forked from one spawner thread that lives exactly as long as the env; short commands run to
completion on whichever thread asked for them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from vmlet_localenv.private import open_private_log

__all__ = [
    "CommandError", "Service", "Spawner", "free_ports", "run_command", "tail", "wait_until",
]

_PR_SET_PDEATHSIG = 1


# setpriv (util-linux) sets the parent-death signal and execs, so no Python runs in a forked
# child: a test process holding gRPC channels aborts children forked with a preexec_fn.
_SETPRIV = shutil.which("setpriv")


def _with_pdeathsig(argv: Sequence[str]) -> list[str]:
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv] if _SETPRIV else list(argv)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died between fork and prctl: then nobody would ever signal us.
    if os.getppid() == 1:
        os._exit(1)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct TCP ports on ``host`` that are free right now."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    try:
        data = path.read_bytes()[-64 * 1024 :]
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


class CommandError(RuntimeError):
    """A set-up command (db sync, bootstrap) exited non-zero."""


def run_command(
    name: str, argv: Sequence[str], *, log_dir: Path, env: Mapping[str, str],
    timeout: float = 300, stdin: str | None = None,
) -> str:
    """Run a set-up command to completion with its output in ``log_dir/name.log``; return stdout."""
    log_path = log_dir / f"{name}.log"
    t0 = time.monotonic()
    with open_private_log(log_path) as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            _with_pdeathsig(argv), stdout=subprocess.PIPE, stderr=log,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            env=dict(env), start_new_session=True,
            preexec_fn=None if _SETPRIV else _die_with_parent,
        )
        try:
            data = stdin.encode() if stdin is not None else None
            out, _ = proc.communicate(data, timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        log.write(out)
        log.write(f"# exit {proc.returncode} after {time.monotonic() - t0:.1f}s\n".encode())
    if proc.returncode != 0:
        raise CommandError(
            f"{name} exited {proc.returncode}; last lines of {log_path}:\n{tail(log_path)}"
        )
    return out.decode(errors="replace")


class Spawner:
    """The one thread that forks long-lived services, alive until :meth:`close`."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="openstack-spawn")

    def popen(
        self, argv: Sequence[str], *, log_path: Path, env: Mapping[str, str], cwd: Path | None,
    ) -> subprocess.Popen[bytes]:
        def spawn() -> subprocess.Popen[bytes]:
            with open_private_log(log_path) as log:
                return subprocess.Popen(
                    _with_pdeathsig(argv), stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=dict(env), cwd=cwd, start_new_session=True,
                    preexec_fn=None if _SETPRIV else _die_with_parent,
                )

        return self._pool.submit(spawn).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class Service:
    """A long-lived OpenStack (or RabbitMQ) process with its output in a log file."""

    def __init__(
        self, name: str, argv: Sequence[str], *, log_dir: Path, env: Mapping[str, str],
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._env = dict(env)
        self._cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self, spawner: Spawner) -> Service:
        self._popen = spawner.popen(self.argv, log_path=self.log_path, env=self._env, cwd=self._cwd)
        return self

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def check_alive(self) -> None:
        """Raise, with the end of its log, when the service has exited."""
        if self._popen is not None and self._popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self._popen.returncode}; "
                f"last lines of {self.log_path}:\n{tail(self.log_path)}"
            )

    def terminate(self) -> None:
        """Send SIGTERM to the service's whole process group (it leads its own session)."""
        if self._popen is not None and self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._popen.pid, signal.SIGTERM)

    def wait_gone(self, timeout: float) -> None:
        """Wait for the process group to end; SIGKILL whatever is left after ``timeout``."""
        if self._popen is None:
            return
        pgid = self._popen.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._popen.poll()
            if not _group_alive(pgid):
                break
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout=10)
        end = time.monotonic() + 10
        while _group_alive(pgid) and time.monotonic() < end:
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is still in process group ``pgid``."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def wait_until(
    check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.5,
    alive: Callable[[], None] | None = None,
) -> None:
    """Poll ``check`` until it is true; raise TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        if alive is not None:
            alive()
        try:
            if check():
                return
        except Exception as e:  # a peer that is still coming up answers with errors
            last = e
        if time.monotonic() > deadline:
            detail = f" (last error: {last})" if last else ""
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s{detail}")
        time.sleep(interval)
