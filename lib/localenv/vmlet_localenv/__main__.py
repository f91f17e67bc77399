"""`vmlet-localenv up|down|status`: the local environment in the background, for `make up`."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from vmlet_localenv.environment import DEFAULT_IAAS, IAAS_CHOICES, Environment

__all__ = ["main"]


def _pid_file(directory: Path) -> Path:
    return directory / "localenv.pid"


def _running_pid(directory: Path) -> int | None:
    try:
        pid = int(_pid_file(directory).read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _serve(directory: Path, iaas: str) -> int:
    """Start everything, say ready, and hold it until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    directory.mkdir(parents=True, exist_ok=True)
    env = Environment(directory=directory, iaas=iaas)
    (directory / "ready").unlink(missing_ok=True)
    try:
        env.start()
        (directory / "ready").write_text(str(os.getpid()))
        print(f"vmlet local environment ready (IAAS={iaas}); source {directory / 'env'}",
              flush=True)
        stop.wait()
    finally:
        (directory / "ready").unlink(missing_ok=True)
        env.stop()
    return 0


def _up(directory: Path, iaas: str, timeout: float) -> int:
    if (pid := _running_pid(directory)) is not None:
        print(f"already up (pid {pid}); `make down` first", file=sys.stderr)
        return 1
    directory.mkdir(parents=True, exist_ok=True)
    log = (directory / "localenv.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmlet_localenv", "serve", "--dir", str(directory),
         "--iaas", iaas],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    _pid_file(directory).write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while not (directory / "ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.terminate()
            print((directory / "localenv.log").read_text(errors="replace")[-4000:],
                  file=sys.stderr)
            print("vmlet local environment failed to start", file=sys.stderr)
            return 1
        time.sleep(0.2)
    names = [line.split("=", 1)[0].removeprefix("export ")
             for line in (directory / "env").read_text().splitlines()]
    print(f"vmlet local environment up (IAAS={iaas}, pid {proc.pid}); "
          f"`source {directory / 'env'}` sets {', '.join(names)}")
    return 0


def _down(directory: Path) -> int:
    pid = _running_pid(directory)
    if pid is None:
        print("not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    for _ in range(300):
        if _running_pid(directory) is None:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    _pid_file(directory).unlink(missing_ok=True)
    print("vmlet local environment stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmlet-localenv", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "serve", "status"])
    parser.add_argument("--dir", type=Path, default=Path(".vmlet"))
    parser.add_argument("--iaas", choices=IAAS_CHOICES,
                        default=os.environ.get("IAAS") or DEFAULT_IAAS)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    directory = args.dir.resolve()
    if args.command == "serve":
        return _serve(directory, args.iaas)
    if args.command == "up":
        return _up(directory, args.iaas, args.timeout)
    if args.command == "down":
        return _down(directory)
    pid = _running_pid(directory)
    print(f"up (pid {pid})" if pid else "down")
    return 0 if pid else 3


if __name__ == "__main__":
    sys.exit(main())
