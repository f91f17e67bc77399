"""Session fixtures that start the real peers once per test run, on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.providers import openstack_facts
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


@pytest.fixture(scope="session")
def openstack_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The facts of the run's one OpenStack (each pytest-xdist worker's own), started when a test
    first needs it: its set-up takes 40-50 s. Modules leave it as they found it: their servers,
    volumes and images carry identities of their own, and nova-api is continued after a module
    that froze it."""
    with openstack_facts(tmp_path_factory) as facts:
        yield facts


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
