"""What the VirtualMachine controller refuses to act on, and how it says so."""

from __future__ import annotations

from typing import Any

import pytest

from vmlet_facade.vmspec import spec_problem

Obj = dict[str, Any]


def vm(name: str = "web", **spec: Any) -> Obj:
    return {"metadata": {"name": name},
            "spec": {"provider": "p", "image": "debian-12", "cpu": 2, "memory": "4Gi", **spec}}


def test_a_good_spec_passes() -> None:
    assert spec_problem(vm()) is None
    assert spec_problem(vm("a" * 63, cpu="500m", memory="24Ti", placement={"affinity": {
        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname",
             "labelSelector": {"matchLabels": {"app": "db"}}}]}}})) is None


@pytest.mark.parametrize(("bad", "field"), [
    (vm("a" * 64), "metadata.name"),
    (vm("Web.1"), "metadata.name"),
    (vm(cpu="0"), "spec.cpu"),
    (vm(cpu="257"), "spec.cpu"),
    (vm(cpu="lots"), "spec.cpu"),
    (vm(memory="1Ei"), "spec.memory"),
    (vm(memory="1Mi"), "spec.memory"),
    (vm(memory=[1]), "spec.memory"),
    (vm(placement={"affinity": "garbage"}), "spec.placement.affinity"),
    (vm(placement={"affinity": {"garbage": {}}}), "spec.placement.affinity.garbage"),
    (vm(placement={"affinity": {"nodeAffinity": 5}}), "spec.placement.affinity.nodeAffinity"),
    (vm(placement={"affinity": {"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": "x"}}}),
     "spec.placement.affinity.podAffinity"),
    (vm(placement={"affinity": {"podAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "podAffinityTerm": {
            "topologyKey": "k", "namespaces": ["other"]}}]}}}),
     "spec.placement.affinity.podAffinity"),
    (vm(placement={"nodeSelector": {"a": 1}}), "spec.placement.nodeSelector"),
])
def test_each_problem_names_its_field(bad: Obj, field: str) -> None:
    problem = spec_problem(bad)
    assert problem is not None and problem.startswith(field + ":"), problem
