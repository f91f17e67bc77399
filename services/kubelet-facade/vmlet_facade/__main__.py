"""`vmlet-facade`: the kubelet facade, configured by flags and env as virtual-kubelet's CLI."""

from __future__ import annotations

import argparse
import asyncio
import asyncio.sslproto
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path

from vmlet_facade.app import FacadeConfig, run
from vmlet_facade.grpcprovider import ProviderTls
from vmlet_facade.kubeletapi import ConnectionLimits, KubeletApiConfig
from vmlet_facade.nodes import NodeSettings, Taint
from vmlet_facade.providerfile import read_providers_file

__all__ = ["main"]


def _providers(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            name, sep, address = item.partition("=")
            if not sep or not name or not address:
                raise argparse.ArgumentTypeError(
                    f"--provider takes NAME=HOST:PORT, not {item!r}")
            out[name] = address
    return out


def _taint(value: str) -> Taint:
    key, _, rest = value.partition("=")
    val, _, effect = rest.partition(":")
    if not key or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise argparse.ArgumentTypeError(f"--taint takes KEY=VALUE:EFFECT, not {value!r}")
    return Taint(key, val, effect)


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"a positive whole number, not {value!r}")
    return number


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"a positive number of seconds, not {value!r}")
    return number


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"a network such as 10.8.0.0/28, not {value!r}: "
                                         f"{err}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="vmlet-facade", description=__doc__)
    p.add_argument("--provider", action="append", default=[],
                   help="NAME=HOST:PORT of a provider (repeat or comma-separate); "
                        "env VMLET_PROVIDERS")
    p.add_argument("--providers-file", type=Path, default=env("VMLET_PROVIDERS_FILE"),
                   help="a file of NAME=HOST:PORT lines, added to --provider and re-read while "
                        "running: a changed address repoints that provider (env "
                        "VMLET_PROVIDERS_FILE)")
    p.add_argument("--kubeconfig", default=env("KUBECONFIG"),
                   help="kubeconfig file; in-cluster config when unset inside a pod")
    p.add_argument("--taint", type=_taint, default=None,
                   help="the taint on every node, KEY=VALUE:EFFECT "
                        "(default virtual-kubelet.io/provider=<provider>:NoSchedule)")
    p.add_argument("--disable-taint", action="store_true",
                   default=env("VMLET_DISABLE_TAINT") == "1",
                   help="register nodes without the provider taint")
    p.add_argument("--kubelet-port", type=int, default=int(env("VMLET_KUBELET_PORT", "10250")),
                   help="the port advertised in the nodes' daemonEndpoints and served by the "
                        "kubelet API; 0 serves no kubelet API")
    p.add_argument("--kubelet-address", default=env("VMLET_KUBELET_ADDRESS", "0.0.0.0"),
                   help="the address the kubelet API listens on")
    p.add_argument("--node-ip", default=env("VMLET_NODE_IP"),
                   help="the nodes' InternalIP, where the apiserver reaches this facade's "
                        "kubelet API (default: the address the provider reports); with "
                        "--node-ip-pool, the address of nodes the pool has none left for")
    p.add_argument("--node-ip-pool", type=_network, default=env("VMLET_NODE_IP_POOL"),
                   help="a network (CIDR) of this facade's addresses: each node advertises one "
                        "of its own as InternalIP (kept across restarts), so the kubelet API "
                        "knows a node by the address it is dialed at (metrics-server); the "
                        "kubelet API must be reachable at all of them")
    p.add_argument("--kubelet-cert", type=Path, default=env("VMLET_KUBELET_CERT"),
                   help="serving certificate of the kubelet API (PEM, leaf first); without "
                        "it one is requested with a kubelet-serving CSR")
    p.add_argument("--kubelet-key", type=Path, default=env("VMLET_KUBELET_KEY"))
    p.add_argument("--kubelet-cert-dir", type=Path, default=env("VMLET_KUBELET_CERT_DIR"),
                   help="where a CSR-issued serving certificate is kept across restarts")
    p.add_argument("--client-ca-file", type=Path, default=env("VMLET_CLIENT_CA_FILE"),
                   help="CA of the client certificates the kubelet API accepts (the "
                        "apiserver's kubelet client certificate); default: the cluster CA "
                        "of the kubeconfig")
    p.add_argument("--kubelet-netns", default=env("VMLET_KUBELET_NETNS"),
                   help="network namespace (a name under /run/netns, or a path) to open the "
                        "kubelet API's listener in")
    limits = ConnectionLimits()
    p.add_argument("--kubelet-max-connections", type=_positive_int,
                   default=env("VMLET_KUBELET_MAX_CONNECTIONS", str(limits.max_connections)),
                   help="open kubelet API connections in all; past it the oldest one not yet "
                        "authorized is closed for a newcomer, or the newcomer refused")
    p.add_argument("--kubelet-max-connections-per-client", type=_positive_int,
                   default=env("VMLET_KUBELET_MAX_CONNECTIONS_PER_CLIENT",
                               str(limits.max_connections_per_client)),
                   help="kubelet API connections not yet authorized from one client address")
    p.add_argument("--kubelet-handshake-timeout-seconds", type=_positive_float,
                   default=env("VMLET_KUBELET_HANDSHAKE_TIMEOUT_SECONDS",
                               str(limits.handshake_timeout)),
                   help="from accepting a kubelet API connection to the end of its TLS "
                        "handshake")
    p.add_argument("--kubelet-first-request-timeout-seconds", type=_positive_float,
                   default=env("VMLET_KUBELET_FIRST_REQUEST_TIMEOUT_SECONDS",
                               str(limits.first_request_timeout)),
                   help="for a connection not yet authorized to send a whole request, after "
                        "the handshake and after each answer")
    p.add_argument("--kubelet-idle-timeout-seconds", type=_positive_float,
                   default=env("VMLET_KUBELET_IDLE_TIMEOUT_SECONDS", str(limits.idle_timeout)),
                   help="an authorized kubelet API connection's wait for its next request "
                        "(streams in progress are never idle)")
    p.add_argument("--kubelet-max-header-bytes", type=_positive_int,
                   default=env("VMLET_KUBELET_MAX_HEADER_BYTES", str(limits.max_header_bytes)),
                   help="the largest kubelet API request head (answered 431 past it)")
    p.add_argument("--lease-seconds", type=float, default=10.0,
                   help="how often node Leases are renewed")
    p.add_argument("--node-status-seconds", type=float, default=60.0,
                   help="how often node status is written when nothing changed")
    p.add_argument("--ping-seconds", type=float, default=5.0,
                   help="how often providers are pinged")
    p.add_argument("--metrics-addr", default=env("VMLET_METRICS_ADDR"),
                   help="HOST:PORT to serve Prometheus metrics on")
    p.add_argument("--provider-ca", type=Path, default=env("VMLET_PROVIDER_CA"),
                   help="CA of the providers' serving certs: mutual TLS towards providers, "
                        "with --provider-cert/--provider-key (re-read when they change)")
    p.add_argument("--provider-cert", type=Path, default=env("VMLET_PROVIDER_CERT"),
                   help="the facade's client certificate towards providers (names "
                        "vmlet-facade)")
    p.add_argument("--provider-key", type=Path, default=env("VMLET_PROVIDER_KEY"))
    p.add_argument("--provider-insecure-plaintext", action="store_true",
                   help="call providers in plaintext, unauthenticated (tests and debugging "
                        "only; a flag, never a variable); warns at start")
    p.add_argument("--pod-sync-workers", type=int, default=64)
    p.add_argument("--disable-cluster-controllers", action="store_true",
                   help="do not run the VirtualMachine controllers (another facade does)")
    p.add_argument("--leader-election-namespace",
                   default=env("VMLET_LEADER_ELECTION_NAMESPACE", "kube-system"),
                   help="where the cluster controllers' leader Lease lives")
    p.add_argument("--shard-nodes", action="store_true",
                   default=env("VMLET_SHARD_NODES", "") == "true",
                   help="share the virtual nodes with the other facade replicas: each node is "
                        "served by one replica at a time, through a Lease per node in the "
                        "leader-election namespace (env VMLET_SHARD_NODES=true)")
    p.add_argument("--log-level", default=env("VMLET_LOG_LEVEL", "info"))
    args = p.parse_args(argv)
    args.providers = _providers(args.provider or [env("VMLET_PROVIDERS", "")])
    if args.providers_file:
        try:
            args.providers.update(read_providers_file(args.providers_file))
        except (OSError, ValueError) as err:
            p.error(f"--providers-file: {err}")
    if not args.providers:
        p.error("at least one --provider NAME=HOST:PORT is needed")
    if bool(args.kubelet_cert) != bool(args.kubelet_key):
        p.error("--kubelet-cert and --kubelet-key go together")
    try:
        args.kubelet_limits = ConnectionLimits(
            max_connections=args.kubelet_max_connections,
            max_connections_per_client=args.kubelet_max_connections_per_client,
            handshake_timeout=args.kubelet_handshake_timeout_seconds,
            first_request_timeout=args.kubelet_first_request_timeout_seconds,
            idle_timeout=args.kubelet_idle_timeout_seconds,
            max_header_bytes=args.kubelet_max_header_bytes)
    except ValueError as err:
        p.error(str(err))
    tls = [f for f, v in (("--provider-ca", args.provider_ca), ("--provider-cert",
           args.provider_cert), ("--provider-key", args.provider_key)) if v]
    if args.provider_insecure_plaintext and tls:
        p.error(f"--provider-insecure-plaintext contradicts {', '.join(tls)}")
    if not args.provider_insecure_plaintext and len(tls) < 3:
        p.error("providers are called over mutual TLS: --provider-ca, --provider-cert and "
                "--provider-key are needed (or, for tests only, --provider-insecure-plaintext)")
    return args


_TLS_READ_BUFFER = 64 * 1024


def _small_tls_read_buffers() -> None:
    """asyncio gives every TLS connection a 256 KiB read buffer, touched at once; the facade
    holds one connection per node watch and per request in flight to the apiserver, plus the
    kubelet API's, so at 100 nodes those buffers alone come to ~35 MB. A TLS record is at most
    16 KiB: 64 KiB still takes several records per read."""
    asyncio.sslproto.SSLProtocol.max_size = _TLS_READ_BUFFER


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format='{"time":"%(asctime)s","level":"%(levelname)s",'
                               '"logger":"%(name)s","msg":"%(message)s"}')
    if args.provider_insecure_plaintext:
        logging.getLogger("vmlet_facade").warning(
            "calling providers in PLAINTEXT without authentication "
            "(--provider-insecure-plaintext): pods, user data and VM operations cross the "
            "network readable and forgeable")
    config = FacadeConfig(
        providers=args.providers, kubeconfig=args.kubeconfig,
        node_settings=NodeSettings(kubelet_port=args.kubelet_port, taint=args.taint,
                                   no_taint=args.disable_taint,
                                   status_interval=args.node_status_seconds,
                                   ping_interval=args.ping_seconds),
        lease_interval=args.lease_seconds, metrics_address=args.metrics_addr,
        provider_tls=None if args.provider_insecure_plaintext
        else ProviderTls(args.provider_ca, args.provider_cert, args.provider_key),
        pod_workers=args.pod_sync_workers,
        cluster_controllers=not args.disable_cluster_controllers,
        leader_election_namespace=args.leader_election_namespace,
        shard_nodes=args.shard_nodes,
        kubelet=KubeletApiConfig(
            port=args.kubelet_port, address=args.kubelet_address, netns=args.kubelet_netns,
            node_ip=args.node_ip, node_ip_pool=args.node_ip_pool, cert_file=args.kubelet_cert,
            key_file=args.kubelet_key,
            client_ca_file=args.client_ca_file, cert_dir=args.kubelet_cert_dir,
            limits=args.kubelet_limits),
        providers_file=args.providers_file,
    )

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(config, stop)

    from vmlet_facade.kube.config import KubeConfigError

    _small_tls_read_buffers()
    try:
        asyncio.run(amain())
    except KubeConfigError as err:  # one line, not a stack trace
        logging.getLogger("vmlet_facade").error("cannot reach the apiserver: %s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
