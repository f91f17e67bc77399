"""The kubelet API tests' peers, started once for the package: a test host in a network
namespace, the stack (memory provider, facade with its kubelet listener there), a namespace and
a running VM pod."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kubelet_api.support import PROVIDER, running
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.netns import Netns, NetnsUnavailable, namespaces
from vmlet_localenv.stack import KUBELET_PORT, Stack, eventually, kubelet_api_args


@pytest.fixture(scope="package")
def test_host() -> Iterator[Netns]:
    try:
        with namespaces("vmlet-kapi") as (host,):
            yield host
    except NetnsUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="package")
def stack(control_plane: ControlPlane, test_host: Netns,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(control_plane, tmp_path_factory.mktemp("kubeletapi"),
              {PROVIDER: ["--nodes", "2"]},
              facade_args=kubelet_api_args(control_plane, test_host, KUBELET_PORT)).start()
    try:
        eventually(lambda: len(s.ready_nodes(PROVIDER)) == 2, what="nodes Ready")
        s.wait_kubelet_api(test_host.ip, KUBELET_PORT)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="package")
def ns(control_plane: ControlPlane) -> str:
    name = f"kapi-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    return name


@pytest.fixture(scope="package")
def vm(stack: Stack, control_plane: ControlPlane, ns: str) -> dict[str, Any]:
    control_plane.kubectl("apply", "-n", ns, "-f", "-",
                          input=json.dumps(stack.vm_pod("vm", PROVIDER)))
    pod = eventually(lambda: running(stack, ns, "vm"), what="pod Running")
    assert pod is not None
    return pod
