"""Session fixtures that start the real peers once per test run, on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.vcsim import VcSim


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    cp = ControlPlane().start()
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def vcsim() -> Iterator[VcSim]:
    sim = VcSim().start()
    try:
        yield sim
    finally:
        sim.stop()
