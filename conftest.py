"""Root pytest configuration: SIGTERM ends a run the way Ctrl-C does, so fixtures tear down."""

from __future__ import annotations

import signal
from types import FrameType


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


signal.signal(signal.SIGTERM, _terminate)
