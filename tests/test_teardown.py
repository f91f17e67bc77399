"""Stopping the control plane leaves no process behind."""

from __future__ import annotations

import os

from vmlet_localenv.controlplane import ControlPlane


def test_stop_leaves_no_process() -> None:
    cp = ControlPlane().start()
    pids = [p.pid for p in cp.processes]
    assert len(pids) == 4 and all(pids)
    state = cp.dir
    cp.stop()
    for pid in pids:
        assert pid is not None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"process {pid} survived teardown")
    assert not state.exists()
