"""Providers as their own processes, for tests that call them over gRPC as the facade does
(tests/test_conformance.py and the provider tests): start one with mutual TLS on loopback
(and kill it and start it again: `RunningProvider`), and the OpenStack to run the OpenStack
provider on."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from vmlet.provider.v1 import node_provider_service_pb2 as npb
from vmlet.provider.v1 import node_provider_service_pb2_grpc as npb_grpc
from vmlet_localenv.openstack import OpenStackEnv, installed
from vmlet_localenv.processes import Process, wait_for
from vmlet_localenv.providerpki import default_pki
from vmlet_localenv.vcsim import VcSim

__all__ = ["MEMORY_NETWORK", "RunningProvider", "eventually", "first_node", "memory_argv",
           "openstack_facts", "openstack_provider", "openstack_run", "provider_process",
           "provider_run", "vsphere_provider", "vsphere_run"]

#: The one network the memory provider's IaaS has in these tests (its --networks).
MEMORY_NETWORK = "pod-network"


def eventually(check: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except grpc.RpcError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen in {timeout:.0f}s (last: {last!r})")


@dataclass
class RunningProvider:
    """A provider process (`provider_run`) and a channel to it, which a test may kill and start
    again on the same state (its flags, its state file, its IaaS)."""

    name: str
    process: Process
    port_file: Path
    channel: grpc.Channel

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown hook runs, nothing is flushed."""
        self.process.kill()
        self.channel.close()

    def restart(self) -> grpc.Channel:
        """Starts the process again as it was started; returns the channel to the new one."""
        self.port_file.unlink(missing_ok=True)
        self.process.restart()
        self.channel = _connect(self.name, self.process, self.port_file)
        return self.channel


def _connect(name: str, process: Process, port_file: Path) -> grpc.Channel:
    """A channel to the provider once it has written its port and answers Ping."""
    wait_for(port_file.exists, timeout=60, what=name, alive=process.check_alive)
    channel = default_pki().channel(f"127.0.0.1:{int(port_file.read_text())}")
    nodes = npb_grpc.NodeProviderServiceStub(channel)
    eventually(lambda: nodes.Ping(npb.PingRequest(), timeout=10), timeout=60, what="ping")
    return channel


@contextlib.contextmanager
def provider_run(name: str, argv: list[str], workdir: Path, env: dict[str, str]
                 ) -> Iterator[RunningProvider]:
    """Runs a provider (argv without --listen/--port-file/TLS) until the block ends."""
    port_file = workdir / "port"
    full = [sys.executable, "-m", *argv, "--listen", "127.0.0.1:0", "--port-file", str(port_file),
            "--log-format", "text", *default_pki().provider_args()]
    process = Process(name, full, log_dir=workdir, env=env).start()
    try:
        running = RunningProvider(name, process, port_file,
                                  _connect(name, process, port_file))
        try:
            yield running
        finally:
            running.channel.close()
    finally:
        process.stop(timeout=15)


@contextlib.contextmanager
def provider_process(name: str, argv: list[str], workdir: Path, env: dict[str, str]
                     ) -> Iterator[grpc.Channel]:
    """Runs a provider (argv without --listen/--port-file/TLS) and yields a channel to it."""
    with provider_run(name, argv, workdir, env) as running:
        yield running.channel


def first_node(channel: grpc.Channel) -> str:
    nodes = npb_grpc.NodeProviderServiceStub(channel)
    listed = eventually(lambda: nodes.ListNodes(npb.ListNodesRequest(), timeout=60).nodes,
                        timeout=120, what="nodes listed")
    return str(sorted(n.name for n in listed)[0])


def memory_argv(workdir: Path, nodes: int = 1, images: tuple[str, ...] = ("debian-12",)
                ) -> list[str]:
    """The memory provider's flags: ``nodes`` nodes, state in ``workdir``, the IaaS holding
    ``images`` (so another image is missing, as on a real IaaS)."""
    return ["vmlet_memory", "--nodes", str(nodes), "--state-file", str(workdir / "state.json"),
            "--images", ",".join(images), "--networks", MEMORY_NETWORK]


@contextlib.contextmanager
def vsphere_run(vcsim: VcSim, workdir: Path, *extra: str) -> Iterator[RunningProvider]:
    """The vSphere provider on ``vcsim``, its templates in vmlet-templates."""
    argv = ["vmlet_vmware", "--template-folder", "vmlet-templates", "--network", "VM Network",
            *extra]
    with provider_run("vmware-provider", argv, workdir, {**os.environ, **vcsim.env()}
                      ) as running:
        yield running


@contextlib.contextmanager
def vsphere_provider(vcsim: VcSim, workdir: Path, *extra: str) -> Iterator[grpc.Channel]:
    """The vSphere provider on ``vcsim`` (see `vsphere_run`), as a channel."""
    with vsphere_run(vcsim, workdir, *extra) as running:
        yield running.channel


@contextlib.contextmanager
def openstack_facts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The facts of the OpenStack of VMLET_OPENSTACK_FACTS (see tests/test_openstack_provider.py),
    or of one started here and stopped afterwards."""
    env: OpenStackEnv | None = None
    facts_file = os.environ.get("VMLET_OPENSTACK_FACTS")
    if facts_file:
        facts = json.loads(Path(facts_file).read_text())
    else:
        why = installed()
        if why is not None:
            pytest.skip(f"{why}: run hack/openstack/install.sh")
        env = OpenStackEnv(tmp_path_factory.mktemp("openstack"))
        env.start()
        facts = env.facts()
    try:
        yield facts
    finally:
        if env is not None:
            env.stop()


@contextlib.contextmanager
def openstack_run(facts: dict[str, Any], workdir: Path, *extra: str
                  ) -> Iterator[RunningProvider]:
    """The OpenStack provider on the OpenStack of ``facts``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    environ.update(OS_CLIENT_CONFIG_FILE=str(facts["clouds_yaml"]), OS_CLOUD="vmlet")
    argv = ["vmlet_openstack", "--poll-seconds", "1", "--fast-poll-seconds", "0.5",
            "--operation-timeout-seconds", "300", *extra]
    with provider_run("openstack-provider", argv, workdir, environ) as running:
        yield running


@contextlib.contextmanager
def openstack_provider(facts: dict[str, Any], workdir: Path, *extra: str
                       ) -> Iterator[grpc.Channel]:
    """The OpenStack provider on the OpenStack of ``facts`` (see `openstack_run`), as a
    channel."""
    with openstack_run(facts, workdir, *extra) as running:
        yield running.channel
