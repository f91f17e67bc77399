"""``python -m vmlet_localenv.openstack up --state-dir DIR``: an OpenStack in the foreground.

Prints one JSON line with the connection facts on stdout once the env is ready, then runs until
SIGTERM or SIGINT (or until one of its services dies, which exits non-zero), and tears every
process down on the way out. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from types import FrameType

from ._install import OpenStackNotInstalled, installed
from .env import DEFAULT_COMPUTE_HOSTS, OpenStackEnv


def _progress(msg: str) -> None:
    print(f"[openstack] {msg}", file=sys.stderr, flush=True)


def _up(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            return
        stop.set()
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    hosts = tuple(args.compute_host) if args.compute_host else DEFAULT_COMPUTE_HOSTS
    env = OpenStackEnv(args.state_dir, compute_hosts=hosts, progress=_progress)
    try:
        env.start(timeout=args.timeout)
        print(json.dumps(env.facts()), flush=True)
        while not stop.wait(2):
            env.check_alive()
        return 0
    except KeyboardInterrupt:
        return 0
    except OpenStackNotInstalled as e:
        _progress(str(e))
        return 3
    except Exception as e:
        _progress(f"error: {e}")
        return 1
    finally:
        # A second signal during teardown must not cut it short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        t = time.monotonic()
        env.stop()
        _progress(f"stopped in {time.monotonic() - t:.1f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmlet_localenv.openstack", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start an OpenStack and keep it running until SIGTERM")
    up.add_argument("--state-dir", help="where configs, databases and logs go (default: a temp "
                    "dir removed at exit; a given dir is kept)")
    up.add_argument("--compute-host", action="append",
                    help="a nova-compute host name; repeat for more (default: "
                    + ", ".join(DEFAULT_COMPUTE_HOSTS) + ")")
    up.add_argument("--timeout", type=float, default=600, help="seconds allowed for start")
    sub.add_parser("check", help="exit 0 when the OpenStack virtualenv is installed")
    sub.add_parser("prepare", help="migrate the database schemas into the install's template "
                   "now, so that the first start is as fast as the next (install.sh runs it)")
    args = parser.parse_args(argv)
    if args.cmd == "check":
        why = installed()
        _progress(why or "installed")
        return 0 if why is None else 3
    if args.cmd == "prepare":
        try:
            _progress(f"schema template at {OpenStackEnv(progress=_progress).prepare()}")
        except OpenStackNotInstalled as e:
            _progress(str(e))
            return 3
        return 0
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
