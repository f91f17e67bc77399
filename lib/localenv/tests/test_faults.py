"""The fault-injection harness's own parts, on plain local processes: restarts keep argv and
log, an ignored SIGTERM is followed by SIGKILL and counted, the TCP front forwards and comes back,
and quantities convert."""

from __future__ import annotations

import signal
import socket
import socketserver
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmlet_localenv.faults.invariants import mebibytes
from vmlet_localenv.faults.peers import Peer, PeerController
from vmlet_localenv.processes import Process, free_port, wait_for

_SLEEPER = "import os, signal, sys, time\n" \
           "if 'stubborn' in sys.argv: signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" \
           "print('started', os.getpid(), sys.argv[1:], flush=True)\n" \
           "time.sleep(120)\n"


def _sleeper(tmp_path: Path, *args: str) -> Process:
    return Process("sleeper", [sys.executable, "-c", _SLEEPER, *args], log_dir=tmp_path).start()


def _starts(proc: Process) -> int:
    return proc.log_path.read_text().count("started")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_hit_restarts_as_started(tmp_path: Path, sig: signal.Signals) -> None:
    proc = _sleeper(tmp_path, "--flag", "x")
    wait_for(lambda: _starts(proc) == 1, timeout=10, what="first start")
    first = proc.pid
    controller = PeerController({"s": Peer("s", lambda: proc, lambda: _starts(proc) == 2)})
    try:
        controller.hit("s", sig, down_for=0.1)
        assert proc.running() and proc.pid != first
        lines = proc.log_path.read_text().splitlines()
        assert lines[0].endswith("['--flag', 'x']") and lines[1].endswith("['--flag', 'x']")
        assert controller.counts() == {"s": {sig.name: 1, **{
            s.name: 0 for s in (signal.SIGKILL, signal.SIGTERM) if s != sig}}}
        assert not controller.ignored_sigterm
    finally:
        proc.stop()


def test_ignored_sigterm_is_followed_by_sigkill(tmp_path: Path) -> None:
    proc = _sleeper(tmp_path, "stubborn")
    wait_for(lambda: _starts(proc) == 1, timeout=10, what="first start")
    controller = PeerController({"s": Peer("s", lambda: proc, lambda: _starts(proc) == 2)},
                                sigterm_grace=1.0)
    try:
        controller.hit("s", signal.SIGTERM, down_for=0.0)
        assert controller.ignored_sigterm == {"s": 1}
        assert proc.running()
    finally:
        proc.stop(timeout=1)


def test_restart_refuses_a_running_process(tmp_path: Path) -> None:
    proc = _sleeper(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="still running"):
            proc.restart()
    finally:
        proc.stop()


class _Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


@pytest.fixture
def echo() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _ask(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"ping\n")
        return conn.makefile("rb").readline()


def test_tcp_front_forwards_and_comes_back(tmp_path: Path, echo: int) -> None:
    port = free_port()
    front = Process("front", [sys.executable, "-m", "vmlet_localenv.faults.tcpfront",
                              "--listen", f"127.0.0.1:{port}", "--target", f"127.0.0.1:{echo}"],
                    log_dir=tmp_path).start()
    try:
        wait_for(lambda: _ask(port) == b"ping\n", timeout=20, what="the front forwarding")
        front.kill()
        with pytest.raises(OSError):
            _ask(port)
        front.restart()
        wait_for(lambda: _ask(port) == b"ping\n", timeout=20, what="the front back")
    finally:
        front.stop()


def test_mebibytes() -> None:
    assert [mebibytes(q) for q in ("256Mi", "1Gi", "1.5Gi", 2**30, "524288Ki")] == [
        256, 1024, 1536, 1024, 512]
