"""The names agree with the CRDs the cluster is given (k8s/base/crds/), and stay unique."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmlet_api import names

REPO = Path(__file__).resolve().parents[3]
CRDS = REPO / "k8s" / "base" / "crds"


def _crds() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        out[crd["spec"]["names"]["kind"]] = crd
    return out


def test_every_crd_is_a_kind_and_every_kind_a_crd() -> None:
    assert sorted(_crds()) == sorted(k.kind for k in names.KINDS)


@pytest.mark.parametrize("kind", names.KINDS, ids=lambda k: k.kind)
def test_kind_names_match_the_crd(kind: names.Kind) -> None:
    crd = _crds()[kind.kind]
    spec = crd["spec"]
    assert spec["group"] == names.GROUP
    assert crd["metadata"]["name"] == kind.qualified
    assert spec["names"]["plural"] == kind.plural
    assert spec["names"]["singular"] == kind.singular
    assert [v["name"] for v in spec["versions"]] == [names.VERSION]


@pytest.mark.parametrize("kind", names.KINDS, ids=lambda k: k.kind)
def test_states_are_the_crd_enum(kind: names.Kind) -> None:
    version = _crds()[kind.kind]["spec"]["versions"][0]
    state = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["state"]
    expected = names.VM_STATES if kind is names.VIRTUAL_MACHINE else names.OPERATION_STATES
    assert tuple(state["enum"]) == expected


def _values(prefix: str, suffix: str = "") -> dict[str, str]:
    return {k: v for k, v in vars(names).items()
            if k.startswith(prefix) and k.endswith(suffix) and isinstance(v, str)}


def test_labels_and_annotations_are_distinct_and_in_the_group() -> None:
    keys = {**_values("", "_LABEL"), **_values("", "_ANNOTATION"),
            "DESTROY_VM_FINALIZER": names.DESTROY_VM_FINALIZER}
    assert len(keys) > 15
    assert len(set(keys.values())) == len(keys), "two names share a value"
    assert all(v.startswith(names.PREFIX) for v in keys.values()), keys


# What each package may import besides the standard library, itself and vmlet_api: vmlet_api
# nothing (it installs without any third-party package); kubectl-vm the official client and the
# two packages of it that it uses itself, all named in its pyproject.toml.
_THIRD_PARTY = {"lib/api/vmlet_api": set(),
                "tools/kubectl-vm/vmlet_kubectl": {"kubernetes", "urllib3", "yaml"}}


@pytest.mark.parametrize("package", sorted(_THIRD_PARTY))
def test_imports_the_standard_library_vmlet_api_and_declared_packages_only(package: str) -> None:
    """vmlet_api imports nothing third-party; kubectl-vm only what its pyproject names."""
    root = REPO / package
    own = root.name
    found: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    assert found - sys.stdlib_module_names - {own, "vmlet_api"} == _THIRD_PARTY[package]
    assert found, "no imports found: the path is wrong"
