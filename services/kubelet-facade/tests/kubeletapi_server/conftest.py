"""Fixtures of the kubelet API server tests: a CA per test module, a server per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubeletapi_server.server_env import (
    Env,
    FakeProvider,
    Nodes,
    Pods,
    Reviews,
    Route,
)
from vmlet.provider.v1 import node_pb2
from vmlet_facade.kubeletapi import KubeletApi, KubeletApiConfig
from vmlet_localenv.pki import CertificateAuthority


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CertificateAuthority, Path]]:
    directory = tmp_path_factory.mktemp("pki")
    yield CertificateAuthority(directory, "ca"), directory


@pytest.fixture
async def env(pki: tuple[CertificateAuthority, Path]) -> AsyncIterator[Env]:
    ca, _ = pki
    serving = ca.issue("serving", common_name="system:node:n1", ips=("127.0.0.1",),
                       server=True)
    apiserver = ca.issue("apiserver-client", common_name="kube-apiserver-kubelet-client",
                         client=True)
    provider = FakeProvider()
    node = node_pb2.Node(name="n1")
    node.addresses.add(type="InternalIP", address="127.0.0.1")
    pods = Pods(pods={"u": {"metadata": {"namespace": "ns", "name": "vm", "uid": "u"},
                            "spec": {"nodeName": "n1", "containers": [{"name": "vm"}]}}},
                routes={"n1": Route(provider)})
    api = KubeletApi(KubeletApiConfig(port=0, address="127.0.0.1", cert_file=serving.cert,
                                      key_file=serving.key, client_ca_file=ca.cert_path),
                     None, pods, [Nodes(provider, {"n1": node})],  # type: ignore[arg-type]
                     reviews=Reviews())
    task = asyncio.create_task(api.run())
    await asyncio.wait_for(api.listening.wait(), 10)
    try:
        yield Env(api, provider, api.port, ca, apiserver)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
