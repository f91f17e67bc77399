"""Wiring: providers, node controllers, the pod controller and metrics, in one process.

Kept apart from the controllers (as virtual-kubelet's nodeutil): controllers know a provider only
through the small interfaces of `provider`; this module picks the implementation (`Provider`, all
of them).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import start_http_server

from vmlet_facade.cluster import run_cluster_controllers
from vmlet_facade.events import EventRecorder
from vmlet_facade.grpcprovider import GrpcProvider, ProviderTls, follow_certificates
from vmlet_facade.kube import KubeClient, KubeConfig
from vmlet_facade.kubeletapi import (
    AddressPool,
    KubeletApi,
    KubeletApiConfig,
    advertise,
    cluster_addresses,
)
from vmlet_facade.kubeletapi.guestexec import run_in_guest
from vmlet_facade.leasing import LeaseKeeper
from vmlet_facade.nodes import NodeController, NodeSettings
from vmlet_facade.pods import PodController, Route
from vmlet_facade.provider import Provider
from vmlet_facade.providerfile import follow_providers_file
from vmlet_facade.references import Resolver
from vmlet_facade.shards import ShardKeeper, replica_group

__all__ = ["FacadeConfig", "run"]

log = logging.getLogger(__name__)


@dataclass
class FacadeConfig:
    """Everything the facade is told on its command line."""

    providers: dict[str, str]  # provider name -> gRPC address
    kubeconfig: str | None = None
    node_settings: NodeSettings = field(default_factory=NodeSettings)
    lease_interval: float = 10.0
    metrics_address: str | None = None
    provider_tls: ProviderTls | None = None
    pod_workers: int = 64
    status_workers: int = 32
    cluster_controllers: bool = True
    leader_election_namespace: str = "kube-system"  # and the node shards' Leases
    shard_nodes: bool = False  # share the nodes with other replicas (shards.py)
    kubelet: KubeletApiConfig | None = None  # the kubelet HTTPS API; None: not served
    providers_file: Path | None = None  # re-read while running: a changed address repoints


async def _node_loop(nc: NodeController[Provider], pods: PodController[Provider],
                     sharded: bool = False) -> None:
    """Register ``nc``'s nodes and keep the pod controller routing to them: to each node as the
    node controller comes to know it (``NodeController.added``). ``sharded``: each node as this
    replica takes it (its pods adopted then) and until it gives it back."""
    if sharded:
        nc.added.append(lambda name: pods.add_node(
            name, Route(nc.provider, functools.partial(nc.address, name)), adopt=True))
        nc.removed.append(pods.remove_node)
        await nc.run()
        return
    runner = asyncio.create_task(nc.run())
    registered = asyncio.create_task(nc.registered.wait())
    await asyncio.wait({runner, registered}, return_when=asyncio.FIRST_COMPLETED)
    if not nc.registered.is_set():  # the controller ended first: end the facade with it
        registered.cancel()
        await runner
        raise RuntimeError(f"the node controller of {nc.provider.name} ended unregistered")
    await pods.adopt(nc.provider)

    def route(name: str) -> None:
        pods.add_node(name, Route(nc.provider, functools.partial(nc.address, name)))

    for name in list(nc.nodes):
        route(name)
    nc.added.append(route)  # the later ones (nothing awaited since the loop above: none missed)
    await runner


def _address_pool(kubelet: KubeletApiConfig | None, client: KubeClient,
                  events: EventRecorder) -> AddressPool | None:
    """The pool the nodes' addresses come from (--node-ip-pool), if any."""
    if kubelet is None or not kubelet.node_ip_pool:
        return None

    async def exhausted(node: str, message: str) -> None:
        await events.emit({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}},
                          "NodeAddressPoolExhausted", message, warning=True)

    return AddressPool(kubelet.node_ip_pool, functools.partial(cluster_addresses, client),
                       fallback=kubelet.node_ip, on_exhausted=exhausted)


def _shards(client: KubeClient, config: FacadeConfig,
            controllers: list[NodeController[Provider]]) -> ShardKeeper:
    """This replica's share of the nodes all ``controllers`` know (``--shard-nodes``)."""
    def owner(node: str) -> NodeController[Provider]:
        return next(nc for nc in controllers if node in nc.known)

    async def release(node: str) -> None:
        owner(node).release(node)

    return ShardKeeper(client, config.leader_election_namespace,
                       f"{socket.gethostname()}-{os.getpid()}",
                       lambda: [n for nc in controllers for n in nc.known],
                       lambda node: owner(node).serve(node), release,
                       group=replica_group(list(config.providers)))


async def run(config: FacadeConfig, stop: asyncio.Event) -> None:
    """Run the facade until ``stop`` is set."""
    if config.metrics_address:
        host, _, port = config.metrics_address.rpartition(":")
        start_http_server(int(port), addr=host or "127.0.0.1")
    client = KubeClient(KubeConfig.load(config.kubeconfig))
    events = EventRecorder(client)
    providers: list[Provider] = [GrpcProvider(name, address, tls=config.provider_tls)
                                 for name, address in config.providers.items()]
    node_ip = config.kubelet.node_ip if config.kubelet else None
    pool = _address_pool(config.kubelet, client, events)
    pods: PodController[Provider] = PodController(
        client, Resolver(client), events, concurrency=config.pod_workers,
        status_concurrency=config.status_workers,
        guest_exec=functools.partial(run_in_guest, client))
    controllers = [NodeController(advertise(p, node_ip, pool), client, config.node_settings,
                                  events, on_outage=functools.partial(pods.set_outage, p.name),
                                  sharded=config.shard_nodes)
                   for p in providers]

    def leased() -> dict[str, str]:
        return {name: uid for nc in controllers for name, uid in nc.uids.items()}

    tasks = [asyncio.create_task(_node_loop(nc, pods, config.shard_nodes),
                                 name=f"nodes:{nc.provider.name}") for nc in controllers]
    if config.shard_nodes:
        tasks.append(asyncio.create_task(_shards(client, config, controllers).run(),
                                         name="node-shards"))
    tasks.append(asyncio.create_task(
        LeaseKeeper(client, leased, interval=config.lease_interval).run(), name="leases"))
    if config.cluster_controllers:
        tasks.append(asyncio.create_task(run_cluster_controllers(
            client, {p.name: p for p in providers}, events, config.leader_election_namespace),
            name="cluster-controllers"))
    if config.kubelet and config.kubelet.port:
        tasks.append(asyncio.create_task(
            KubeletApi(config.kubelet, client, pods, controllers).run(), name="kubelet-api"))
    if config.provider_tls is not None:
        tasks.append(asyncio.create_task(follow_certificates(
            [p for p in providers if isinstance(p, GrpcProvider)]), name="provider-certificates"))
    if config.providers_file:
        async def repoint(name: str, address: str) -> None:
            for p in providers:
                if p.name == name and isinstance(p, GrpcProvider):
                    await p.repoint(address)
            for nc in controllers:  # the nodes' vmlet.io/provider-address annotation
                if nc.provider.name == name:
                    for node in list(nc.nodes.values()):
                        await nc.register(node)

        tasks.append(asyncio.create_task(follow_providers_file(
            config.providers_file, dict(config.providers), repoint), name="providers-file"))
    log.info("facade running for providers %s", ", ".join(config.providers))
    stopper: asyncio.Task[object] = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await pods.stop()
    for p in providers:
        if isinstance(p, GrpcProvider):
            await p.close()
    await client.close()
    for finished in done:
        error = None if finished is stopper or finished.cancelled() else finished.exception()
        if error is not None:
            raise error
