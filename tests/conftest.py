"""Session fixtures that start the real peers once per test run, on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.guests import GuestStandIn
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


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VcSim]:
    """A vcsim of the module's own, with one host: for modules that give its VMs guests, which
    must not touch the session's."""
    own = VcSim(hosts=1, state_dir=tmp_path_factory.mktemp("vcsim")).start()
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture(scope="module")
def guests(sim: VcSim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestStandIn]:
    """A guest for every powered-on VM of the module's vcsim (`sim`), looked for twice a second."""
    stand_in = GuestStandIn(sim, tmp_path_factory.mktemp("guests") / "guests",
                            interval=0.5).start()
    try:
        yield stand_in
    finally:
        stand_in.stop()
