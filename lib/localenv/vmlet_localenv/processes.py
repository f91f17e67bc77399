"""Child processes that cannot outlive their parent.

Every peer vmlet starts (etcd, the Kubernetes components, vcsim, providers, the facade) runs in
its own session with a parent-death signal, so a test run that fails, is interrupted or is killed
leaves nothing behind, and ``stop`` ends the whole process group.
"""

from __future__ import annotations

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

__all__ = ["Process", "free_port", "stop_process", "wait_for"]

# setpriv (util-linux) sets the parent-death signal and execs: no preexec_fn, so subprocess
# need not fork() a process that may hold gRPC channels (whose fork handlers can abort a child).
_SETPRIV = shutil.which("setpriv")


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM ``process`` and wait ``grace`` seconds for it, then SIGKILL it."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for(
    check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.2,
    alive: Callable[[], None] | None = None,
) -> None:
    """Poll ``check`` until it is true; raise TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(interval)


class Process:
    """A peer process with its output in a log file."""

    def __init__(
        self, name: str, argv: Sequence[str], *, log_dir: Path,
        env: Mapping[str, str] | None = None, cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._env = dict(os.environ if env is None else env)
        self._cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self) -> Process:
        log = open_private_log(self.log_path)  # a peer may print a secret: owner-only
        argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *self.argv] if _SETPRIV else self.argv
        self._popen = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self._env, cwd=self._cwd, start_new_session=True,
            preexec_fn=None if _SETPRIV else _die_with_parent,
        )
        log.close()
        return self

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def check_alive(self) -> None:
        """Raise RuntimeError with the log's tail when the process has exited."""
        if self._popen is not None and self._popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self._popen.returncode}; last lines of "
                f"{self.log_path}:\n{self.tail()}"
            )

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.running():
            assert self._popen is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout``, and reap it."""
        if self._popen is None:
            return
        if self._popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self._popen.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._popen.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the process group at once, as a crash would."""
        if self._popen is not None:
            self.signal(signal.SIGKILL)
            self._popen.wait(5)

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the process to exit; True when it has."""
        if self._popen is None:
            return True
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def restart(self) -> Process:
        """Start the process again exactly as it was started (argv, environment, working
        directory; its log is appended to). The previous run must have exited."""
        if self.running():
            raise RuntimeError(f"{self.name} is still running (pid {self.pid})")
        if self._popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._popen.pid, signal.SIGKILL)  # what the group left behind
        return self.start()
