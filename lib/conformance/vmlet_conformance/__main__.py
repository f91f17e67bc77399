"""`python -m vmlet_conformance --address HOST:PORT`: the conformance suite against a provider.

Runs pytest on this package's `suite` with a `Subject` made from the flags; pytest's own options
follow ``--`` (``-- -k disks -x``). Exits with pytest's code: 0 when every check passed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from vmlet_contract.tls import channel_credentials

from .subject import SUBJECT_KEY, Subject


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="vmlet-conformance",
        description="Check a vmlet provider against the provider contract over gRPC.")
    parser.add_argument("--address", required=True, help="the provider's gRPC HOST:PORT")
    parser.add_argument("--image", required=True,
                        help="what a VM pod boots from, in the provider's form "
                             "(e.g. vsphere:template/debian-12)")
    parser.add_argument("--missing-image",
                        help="an image of the provider's form that names nothing (default: "
                             "--image with a random suffix)")
    parser.add_argument("--network",
                        help="a network the IaaS has, that a pod may join (the networks check "
                             "joins it before one that does not exist)")
    parser.add_argument("--tls-ca", help="CA of the provider's serving certificate (PEM)")
    parser.add_argument("--tls-cert", help="client certificate to present (PEM), as the facade")
    parser.add_argument("--tls-key", help="its private key (PEM)")
    parser.add_argument("--tls-server-name", help="the name to check the provider's "
                                                  "certificate against, when not the address")
    parser.add_argument("--insecure-plaintext", action="store_true",
                        help="call the provider without TLS")
    parser.add_argument("--node", action="append", default=[],
                        help="a node to place pods on (repeat; default: every listed node)")
    parser.add_argument("--namespace", default="conformance",
                        help="namespace of the suite's pods; <namespace>-other plays another "
                             "tenant")
    parser.add_argument("--annotation", action="append", default=[], metavar="KEY=VALUE",
                        help="an annotation every pod carries (repeat)")
    parser.add_argument("--cpu-millis", type=int, default=500)
    parser.add_argument("--memory-bytes", type=int, default=256 * 2**20)
    parser.add_argument("--timeout-seconds", type=float, default=300.0,
                        help="how long a create, a delete or reaching Running may take")
    parser.add_argument("--log-poll-seconds", type=float, default=2.0,
                        help="how often the provider reads its IaaS's log for a follow (the "
                             "follow check waits a few of these for lines sent twice)")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    args = parser.parse_args(argv)
    if not args.insecure_plaintext and not args.tls_ca and not args.tls_cert:
        parser.error("give --tls-ca (and --tls-cert/--tls-key), or --insecure-plaintext")
    return args, extra


def channel_from_args(args: argparse.Namespace) -> grpc.Channel:
    if args.insecure_plaintext:
        return grpc.insecure_channel(args.address)
    credentials = channel_credentials(ca_file=args.tls_ca, cert_file=args.tls_cert,
                                      key_file=args.tls_key)
    options = ([("grpc.ssl_target_name_override", args.tls_server_name)]
               if args.tls_server_name else [])
    return grpc.secure_channel(args.address, credentials, options=options)


class _SubjectPlugin:
    """Hands the subject to the suite's `subject` fixture."""

    def __init__(self, subject: Subject) -> None:
        self.given = subject

    def pytest_configure(self, config: pytest.Config) -> None:
        config.stash[SUBJECT_KEY] = self.given


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = parse_args(argv)
    annotations = dict(a.split("=", 1) for a in args.annotation)
    subject = Subject(channel_from_args(args), args.image, nodes=tuple(args.node),
                      namespace=args.namespace, annotations=annotations,
                      cpu_millis=args.cpu_millis, memory_bytes=args.memory_bytes,
                      timeout=args.timeout_seconds, missing_image=args.missing_image or "",
                      log_poll_seconds=args.log_poll_seconds, network=args.network or "")
    suite = Path(__file__).with_name("suite.py")
    # Our own rootdir and no ini file: the suite runs the same from any directory.
    pytest_args = [str(suite), "--rootdir", str(suite.parent), "-c", str(suite.parent /
                   "pytest.ini"), "-p", "no:cacheprovider", "-p", "no:asyncio", "-q", *extra]
    return int(pytest.main(pytest_args, plugins=[_SubjectPlugin(subject)]))


if __name__ == "__main__":
    sys.exit(main())
