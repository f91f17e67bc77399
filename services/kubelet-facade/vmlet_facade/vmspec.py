"""What makes a VirtualMachine's spec one the controller can act on.

The CRD refuses what it can at admission (OpenAPI schema and CEL rules in
k8s/base/crds/virtualmachines.yaml). This module checks the same limits again in the controller,
for objects stored before a rule existed or written past it, and names the first field that is
wrong. A spec the apiserver refuses later (the VM pod it asks for, a 422) is reported the same way
through `InvalidSpec`.
"""

from __future__ import annotations

import re
from typing import Any

from vmlet_facade.kube.objects import VirtualMachine, VirtualMachineSpec
from vmlet_facade.quantity import cpu_millis, memory_bytes

__all__ = [
    "MAX_CPU_MILLIS",
    "MAX_MEMORY_BYTES",
    "MAX_NAME_LENGTH",
    "MIN_MEMORY_BYTES",
    "InvalidSpec",
    "spec_problem",
]


#: A VM's name is the value of its pods' vmlet.io/vm label and the base of their names.
MAX_NAME_LENGTH = 63
MAX_CPU_MILLIS = 256_000
MIN_MEMORY_BYTES = 64 * 2**20
#: The largest VM vSphere 8 runs (24 TiB); no host of any provider holds more.
MAX_MEMORY_BYTES = 24 * 2**40

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_AFFINITY_KINDS = ("nodeAffinity", "podAffinity", "podAntiAffinity")
_CROSS_NAMESPACE = ("namespaces", "namespaceSelector")


class InvalidSpec(Exception):
    """The spec cannot be carried out as written; ``message`` names the field."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _name_problem(name: str) -> str | None:
    if len(name) > MAX_NAME_LENGTH:
        return (f"metadata.name: {len(name)} characters; a VirtualMachine's name is at most "
                f"{MAX_NAME_LENGTH} (it labels the VM's pods)")
    if not _DNS_LABEL.match(name):
        return (f"metadata.name: {name!r} is not a DNS label (lower-case letters, digits and "
                f"'-', starting and ending with a letter or digit)")
    return None


def _size_problem(spec: VirtualMachineSpec) -> str | None:
    try:
        cpu = cpu_millis(spec["cpu"])
    except (KeyError, ValueError, TypeError):
        return f"spec.cpu: {spec.get('cpu')!r} is not a quantity"
    if not 1 <= cpu <= MAX_CPU_MILLIS:
        return f"spec.cpu: {spec['cpu']} is outside 1m..256"
    try:
        memory = memory_bytes(spec["memory"])
    except (KeyError, ValueError, TypeError):
        return f"spec.memory: {spec.get('memory')!r} is not a quantity"
    if not MIN_MEMORY_BYTES <= memory <= MAX_MEMORY_BYTES:
        return f"spec.memory: {spec['memory']} is outside 64Mi..24Ti"
    return None


def _affinity_problem(affinity: Any) -> str | None:
    where = "spec.placement.affinity"
    if not isinstance(affinity, dict):
        return f"{where}: must be an object, not {type(affinity).__name__}"
    for key, value in affinity.items():
        if key not in _AFFINITY_KINDS:
            return f"{where}.{key}: unknown field (takes {', '.join(_AFFINITY_KINDS)})"
        if not isinstance(value, dict):
            return f"{where}.{key}: must be an object"
        if key == "nodeAffinity":
            continue
        required = value.get("requiredDuringSchedulingIgnoredDuringExecution") or []
        preferred = value.get("preferredDuringSchedulingIgnoredDuringExecution") or []
        if not isinstance(required, list) or not isinstance(preferred, list):
            return f"{where}.{key}: its terms must be lists"
        terms = [*required, *(p.get("podAffinityTerm") if isinstance(p, dict) else p
                              for p in preferred)]
        for term in terms:
            if not isinstance(term, dict):
                return f"{where}.{key}: each term must be an object"
            named = [f for f in _CROSS_NAMESPACE if f in term]
            if named:
                return (f"{where}.{key}: {named[0]} is not allowed; a VM's affinity stays "
                        f"within its namespace")
    return None


def spec_problem(vm: VirtualMachine) -> str | None:
    """The first thing wrong with ``vm`` as the controller would act on it, or None."""
    problem = _name_problem(str(vm["metadata"].get("name", "")))
    if problem:
        return problem
    spec = vm.get("spec")
    if not isinstance(spec, dict):
        return "spec: missing"
    if not spec.get("provider") or not spec.get("image"):
        return "spec.provider and spec.image are required"
    problem = _size_problem(spec)
    if problem:
        return problem
    placement = spec.get("placement") or {}
    if not isinstance(placement, dict):
        return "spec.placement: must be an object"
    selector = placement.get("nodeSelector") or {}
    if not isinstance(selector, dict) or not all(isinstance(v, str) for v in selector.values()):
        return "spec.placement.nodeSelector: must map label names to strings"
    if "affinity" in placement:
        return _affinity_problem(placement["affinity"])
    return None
