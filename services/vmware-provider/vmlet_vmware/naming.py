"""Names: of nodes (from ESXi hosts), of VMs (from pods), and label values.

Node name: "<prefix>-<host name>", lower-cased, every run of characters outside [a-z0-9.-]
turned into one "-", so "DC0_C0_H0" becomes "vsphere-dc0-c0-h0" and "esx01.lab.example" becomes
"vsphere-esx01.lab.example". It is a DNS-1123 subdomain, depends only on the host's name, and so
stays the same across provider restarts and vCenter restarts.

VM name: "<namespace>-<pod name>-<8 hex digits of sha256(identity)>", sanitized the same way
(without dots) and cut to vSphere's 80 characters before the hash. The hash makes the name unique
per identity, and deterministic: two creates of the same identity ask for the same name, so even
two provider processes cannot both clone it into the VM folder (vSphere refuses the second with
DuplicateName).
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

__all__ = ["label_value", "node_name", "vm_name"]

_NODE_BAD = re.compile(r"[^a-z0-9.-]+")
_VM_BAD = re.compile(r"[^a-z0-9-]+")
_LABEL_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_DASHES = re.compile(r"-{2,}")

VM_NAME_MAX: Final = 80
NODE_NAME_MAX: Final = 253


def _digest(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _clean(text: str, bad: re.Pattern[str]) -> str:
    out = _DASHES.sub("-", bad.sub("-", text.lower()))
    # Each dot-separated label must start and end with an alphanumeric character.
    parts = [p.strip("-") for p in out.split(".")]
    return ".".join(p for p in parts if p)


def node_name(prefix: str, host_name: str) -> str:
    """The node name of the ESXi host called `host_name`."""
    base = _clean(f"{prefix}-{host_name}", _NODE_BAD) or f"{prefix}-host"
    if len(base) <= NODE_NAME_MAX:
        return base
    return f"{base[: NODE_NAME_MAX - 9].rstrip('.-')}-{_digest(host_name)}"


def vm_name(namespace: str, pod: str, identity: str) -> str:
    """The VM name for a pod of `identity`; see the module docstring."""
    suffix = _digest(identity)
    base = _clean(f"{namespace}-{pod}", _VM_BAD) or "vm"
    base = base[: VM_NAME_MAX - len(suffix) - 1].rstrip("-")
    return f"{base}-{suffix}"


def label_value(text: str) -> str:
    """`text` made a valid Kubernetes label value (at most 63 characters)."""
    out = _LABEL_BAD.sub("-", text)[:63]
    return out.strip("-_.")
