"""`kubectl vm`: the command line.

kubectl hands a plugin its arguments untouched and keeps none of its own flags for it, so the
connection flags (-n/--namespace, --kubeconfig, --context) are parsed here, accepted before or
after the verb, and honoured as kubectl honours them when connecting (``cluster``). Parsing
yields an :class:`Invocation`; the verbs themselves live in ``commands``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TypeVar

from vmlet_kubectl.api import KubectlError
from vmlet_kubectl.commands import COMMANDS
from vmlet_kubectl.invocation import DEFAULT_TIMEOUT, Invocation
from vmlet_kubectl.session import Failure, Session
from vmlet_kubectl.units import cpu_value, memory_value, parse_duration

__all__ = ["build_parser", "main", "parse"]

T = TypeVar("T")

_DESCRIPTION = """\
Power, resize, migrate, back up and restore vmlet VirtualMachines (vmlet.io/v1alpha1).

Each verb edits the VirtualMachine or creates a VirtualMachineBackup, -Restore or -Migration,
and returns at once; with --wait it follows the resources until the VM gets there."""

_EPILOG = """\
examples:
  kubectl vm status web
  kubectl vm stop web --wait
  kubectl vm start web --wait --timeout 10m
  kubectl vm restart web -n prod --wait
  kubectl vm resize web --cpu 4 --memory 8Gi --wait
  kubectl vm migrate web --to esx-02 --wait
  kubectl vm backup web --name web-before-upgrade --wait
  kubectl vm restore web --backup web-before-upgrade --wait

exit status: 0 done, 1 failed (not found, refused, the operation failed, or --wait timed out),
2 bad usage."""


def _connection_flags() -> argparse.ArgumentParser:
    # SUPPRESS: a flag given before the verb is not overwritten by the verb's default.
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("connection (as for kubectl)")
    group.add_argument("-n", "--namespace", default=argparse.SUPPRESS,
                       help="the namespace (default: the current context's)")
    group.add_argument("--kubeconfig", default=argparse.SUPPRESS,
                       help="the kubeconfig file to use")
    group.add_argument("--context", default=argparse.SUPPRESS,
                       help="the kubeconfig context to use")
    return flags


def _checked(convert: Callable[[str], T]) -> Callable[[str], T]:
    """``convert`` as an argparse type: its ValueError becomes a usage error with its message."""
    def check(text: str) -> T:
        try:
            return convert(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return check


def _add_wait(p: argparse.ArgumentParser, until: str) -> None:
    p.add_argument("--wait", action="store_true", help=f"wait until {until}")
    p.add_argument("--timeout", type=_checked(parse_duration), default=None,
                   metavar="DURATION",
                   help="how long --wait waits, e.g. 90s, 5m, 1h (default 5m); implies --wait")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, as `kubectl vm --help` shows it."""
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    flags = _connection_flags()
    subparsers: dict[str, argparse.ArgumentParser] = {}
    try:
        own_version = version("vmlet-kubectl")
    except PackageNotFoundError:
        own_version = "unknown"
    parser = argparse.ArgumentParser(
        prog="kubectl vm", usage="kubectl vm COMMAND NAME [options]", description=_DESCRIPTION,
        epilog=_EPILOG, parents=[flags], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"kubectl-vm {own_version}")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)

    def verb(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=summary, description=description, parents=[flags],
                             prog=f"kubectl vm {name}", usage=f"kubectl vm {name} NAME [options]")
        subparsers[name] = p
        p.add_argument("name", metavar="NAME", help="the VirtualMachine")
        return p

    _add_wait(verb("start", "power the VM on", "Power the VM on (spec.replicas=1)."),
              "it is Running")
    _add_wait(verb("stop", "power the VM off, keeping its disks",
                   "Power the VM off, keeping its disks (spec.replicas=0)."), "it is Stopped")
    _add_wait(verb("restart", "stop, then start the VM",
                   "Stop the VM, wait until it is Stopped (--wait or not, up to --timeout), and "
                   "start it again."),
              "it is Running again")
    p = verb("resize", "change the VM's CPUs and memory",
             "Change the VM's CPUs and/or memory (spec.cpu, spec.memory); a running VM is "
             "resized in place.")
    p.add_argument("--cpu", type=_checked(cpu_value), metavar="N",
                   help="virtual CPUs, as a quantity (2, 500m)")
    p.add_argument("--memory", type=_checked(memory_value),
                   metavar="QUANTITY", help="memory, as a quantity (4Gi, 512Mi)")
    _add_wait(p, "the new size shows in the VM's status and pod, and it is Running again")
    p = verb("migrate", "move the VM to another node",
             "Move a running VM to another node (host), keeping its identity: creates a "
             "VirtualMachineMigration named NAME-<random>.")
    p.add_argument("--to", dest="target_node", metavar="NODE",
                   help="the node to move to (default: any other eligible node)")
    _add_wait(p, "the migration has Succeeded")
    p = verb("backup", "back the VM up",
             "Back the VM up, as a snapshot or image as its provider makes them: creates a "
             "VirtualMachineBackup.")
    p.add_argument("--name", dest="resource_name", metavar="BACKUP",
                   help="the VirtualMachineBackup's name (default: NAME-<random>)")
    _add_wait(p, "the backup has Succeeded")
    p = verb("restore", "put the VM back to a backup",
             "Put the VM back to one of its backups: creates a VirtualMachineRestore. With "
             "--wait, a backup still in progress is waited for first.")
    p.add_argument("--backup", required=True, metavar="BACKUP",
                   help="the VirtualMachineBackup to restore")
    p.add_argument("--name", dest="resource_name", metavar="RESTORE",
                   help="the VirtualMachineRestore's name (default: NAME-<random>)")
    _add_wait(p, "the restore has Succeeded")
    verb("status", "show the VM's state, node, addresses and history",
         "Show the VM's state, node, addresses, size, conditions, backups, restores, "
         "migrations and latest events.")
    return parser, subparsers


def parse(argv: Sequence[str]) -> Invocation:
    """Parse ``argv`` (without the program name); exits 2 with a message on bad usage."""
    parser, subparsers = _build()
    args = parser.parse_args(list(argv))
    if args.verb == "resize" and args.cpu is None and args.memory is None:
        subparsers["resize"].error("resize needs --cpu, --memory or both")
    timeout = getattr(args, "timeout", None)
    return Invocation(
        verb=args.verb, name=args.name,
        wait=bool(getattr(args, "wait", False)) or timeout is not None,
        timeout=DEFAULT_TIMEOUT if timeout is None else float(timeout),
        cpu=getattr(args, "cpu", None), memory=getattr(args, "memory", None),
        target_node=getattr(args, "target_node", None), backup=getattr(args, "backup", None),
        resource_name=getattr(args, "resource_name", None),
        namespace=getattr(args, "namespace", None), kubeconfig=getattr(args, "kubeconfig", None),
        context=getattr(args, "context", None))


def main(argv: Sequence[str] | None = None) -> int:
    """The ``kubectl-vm`` console script."""
    inv = parse(sys.argv[1:] if argv is None else argv)
    from vmlet_kubectl.cluster import Cluster  # the client's import is slow: not for --help

    try:
        cluster = Cluster.connect(kubeconfig=inv.kubeconfig, context=inv.context,
                                  namespace_flag=inv.namespace)
        COMMANDS[inv.verb](Session(api=cluster, out=sys.stdout), inv)
    except (Failure, KubectlError) as err:
        sys.stdout.flush()
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
