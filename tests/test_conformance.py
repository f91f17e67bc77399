"""The provider conformance suite (`vmlet_conformance`) against every provider of the project,
each as its own process over mutual TLS, as the facade calls it.

- memory: `python -m vmlet_memory` with two nodes;
- vsphere: `python -m vmlet_vmware` on vcsim (the session's), template debian-12;
- openstack: `python -m vmlet_openstack` on Nova with the fake driver (the OpenStack of
  VMLET_OPENSTACK_FACTS, or one started for this module: one start per module).
Each check of `vmlet_conformance.CHECKS` runs once per provider; the checks talk to the address
only, so what passes here passes for `python -m vmlet_conformance --address ...`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.providers import (
    memory_argv,
    openstack_facts,
    openstack_provider,
    provider_process,
    vsphere_provider,
)
from vmlet_conformance import CHECKS, Check, Subject
from vmlet_localenv.providerpki import default_pki
from vmlet_localenv.vcsim import VcSim


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Subject]:
    workdir = tmp_path_factory.mktemp("memory-conformance")
    with provider_process("memory-provider", memory_argv(workdir, nodes=2), workdir,
                          dict(os.environ)) as channel:
        yield Subject(channel, "memory:debian-12", namespace="conformance", timeout=120)


@pytest.fixture(scope="module")
def vsphere(vcsim: VcSim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Subject]:
    with vsphere_provider(vcsim, tmp_path_factory.mktemp("vsphere-conformance")) as channel:
        yield Subject(channel, "vsphere:template/debian-12", namespace="conformance", timeout=300)


@pytest.fixture(scope="module")
def openstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Subject]:
    with openstack_facts(tmp_path_factory) as facts, openstack_provider(
            facts, tmp_path_factory.mktemp("openstack-conformance")) as channel:
        yield Subject(channel, f"openstack:image/{facts['image']['name']}",
                      namespace="conformance", timeout=300)


@pytest.fixture(scope="module", params=[
    "memory",
    pytest.param("vsphere", marks=pytest.mark.vcsim),
    pytest.param("openstack", marks=pytest.mark.openstack),
])
def subject(request: pytest.FixtureRequest) -> Subject:
    found: Subject = request.getfixturevalue(request.param)
    return found


@pytest.mark.parametrize("conformance_check", CHECKS, ids=[c.name for c in CHECKS])
def test_conformance(subject: Subject, conformance_check: Check) -> None:
    conformance_check.run(subject)


def test_the_command_line_checks_a_provider_at_an_address(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """`python -m vmlet_conformance`, as a provider author runs it: mutual TLS with the facade's
    certificate, against a memory provider; it passes, and a check that fails fails the run."""
    workdir = tmp_path_factory.mktemp("memory-cli")
    with provider_process("memory-provider", memory_argv(workdir, nodes=2), workdir,
                          dict(os.environ)):
        address = f"127.0.0.1:{int((workdir / 'port').read_text())}"
        pki = default_pki()
        argv = [sys.executable, "-m", "vmlet_conformance", "--address", address,
                "--tls-ca", str(pki.ca), "--tls-cert", str(pki.facade.cert),
                "--tls-key", str(pki.facade.key), "--image", "memory:debian-12"]
        passed = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        assert passed.returncode == 0, passed.stdout[-3000:]
        assert f"{len(CHECKS)} passed" in passed.stdout
        # A node the provider does not serve: the pods are refused, so the run fails.
        failed = subprocess.run([*argv, "--node", "no-such-node", "--", "-k", "create_twice"],
                                capture_output=True, text=True, timeout=600)
        assert failed.returncode == 1 and "1 failed" in failed.stdout, failed.stdout[-3000:]
