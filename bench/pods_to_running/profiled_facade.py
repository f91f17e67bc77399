"""The facade under a profiler that run.py switches on and off by signal, so only the measured
window is profiled (not start-up, not shutdown). The facade's code is not touched.

    VMLET_BENCH_PROFILE=cprofile:OUT     SIGUSR1 starts cProfile, SIGUSR2 writes OUT (pstats)
    VMLET_BENCH_PROFILE=tracemalloc:OUT  traces from start (10 frames); SIGUSR2 writes a
                                         snapshot to OUT (tracemalloc.Snapshot.load)

    python profiled_facade.py <vmlet-facade arguments>
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
import tracemalloc
from types import FrameType

from vmlet_facade.__main__ import main


def _install(mode: str, out: str) -> None:
    if mode == "cprofile":
        profiler = cProfile.Profile()

        def start(signum: int, frame: FrameType | None) -> None:
            profiler.enable()

        def dump(signum: int, frame: FrameType | None) -> None:
            profiler.disable()
            profiler.dump_stats(out)

        signal.signal(signal.SIGUSR1, start)
        signal.signal(signal.SIGUSR2, dump)
    elif mode == "tracemalloc":
        tracemalloc.start(10)

        def snapshot(signum: int, frame: FrameType | None) -> None:
            tracemalloc.take_snapshot().dump(out)

        signal.signal(signal.SIGUSR1, lambda signum, frame: None)
        signal.signal(signal.SIGUSR2, snapshot)
    else:
        raise SystemExit(f"VMLET_BENCH_PROFILE mode {mode!r} is not cprofile or tracemalloc")


if __name__ == "__main__":
    mode, _, out = os.environ.get("VMLET_BENCH_PROFILE", "").partition(":")
    if mode:
        _install(mode, out)
    sys.exit(main(sys.argv[1:]))
