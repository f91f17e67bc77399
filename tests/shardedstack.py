"""What the sharded-facade tests share: a stack whose facade shares its nodes with other replicas
(--shard-nodes), more replicas of that facade, and who holds which node's shard Lease."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vmlet_facade.shards import MEMBER_LABEL, NODE_ANNOTATION, SHARD_LABEL
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.services import FacadeProcess, facade_kubeconfig
from vmlet_localenv.stack import Stack


def shard_args(lease_namespace: str) -> list[str]:
    """The facade arguments of a replica whose Leases live in ``lease_namespace``."""
    return ["--shard-nodes", f"--leader-election-namespace={lease_namespace}"]


@contextmanager
def sharded_stack(cp: ControlPlane, directory: Path, provider: str, nodes: int,
                  lease_namespace: str, facade_args: list[str]) -> Iterator[Stack]:
    """A started stack of one memory provider of ``nodes`` nodes and one facade replica run with
    ``facade_args``; stopped (its logs printed) on the way out."""
    cp.kubectl("create", "namespace", lease_namespace, check=False)
    stack = Stack(cp, directory, {provider: ["--nodes", str(nodes)]}, facade_args=facade_args)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        stack.print_logs(40)


def start_replica(stack: Stack, directory: Path, args: list[str]) -> FacadeProcess:
    """Another facade replica of ``stack``'s providers, run with ``args``."""
    return FacadeProcess({n: p.address for n, p in stack.providers.items()},
                         facade_kubeconfig(stack.cp), directory, args=args,
                         pki=stack.pki).start()


def holders(stack: Stack, lease_namespace: str) -> dict[str, str]:
    """Node -> the replica holding its shard Lease ("" when free)."""
    items = stack.kubectl_json("get", "leases", "-n", lease_namespace, "-l", SHARD_LABEL)["items"]
    return {i["metadata"]["annotations"][NODE_ANNOTATION]: i["spec"].get("holderIdentity", "")
            for i in items}


def members(stack: Stack, lease_namespace: str) -> set[str]:
    """The replicas in the membership Leases (a stopped one leaves)."""
    items = stack.kubectl_json("get", "leases", "-n", lease_namespace, "-l",
                               MEMBER_LABEL)["items"]
    return {i["spec"].get("holderIdentity", "") for i in items} - {""}
