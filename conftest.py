"""Root pytest configuration.

- SIGTERM ends a run the way Ctrl-C does, so fixtures tear down.
- `make test` sets VMLET_NO_SKIP=1: there a skipped test is a failure, since the project's own
  set-up installs every peer the tests need and a skip would hide a test that never ran.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

import pytest


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


signal.signal(signal.SIGTERM, _terminate)


def _skipped(config: pytest.Config) -> list[Any]:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return list(reporter.stats.get("skipped", [])) if reporter is not None else []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("VMLET_NO_SKIP") == "1" and _skipped(session.config) and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    skipped = _skipped(config)
    if os.environ.get("VMLET_NO_SKIP") == "1" and skipped:
        terminalreporter.write_line(
            f"{len(skipped)} skipped: a failure under make test (VMLET_NO_SKIP=1), since its "
            "set-up installs every peer the tests need",
            red=True,
        )
