"""API paths from validated parts only: hostile names never reach the apiserver."""

from __future__ import annotations

import pytest

from vmlet_facade.kube import ApiError, KubeClient, KubeConfig
from vmlet_facade.kube.paths import (
    InvalidName,
    InvalidPath,
    api_path,
    check_path,
    name_problem,
    valid_label,
    valid_name,
)

HOSTILE = [
    "../x", "..", ".", "a/b", "../../victim/secrets/topsecret", "%2e%2e", "%2e%2e%2fvictim",
    "x%2fy", "a" * 254, "sécret", "\uff53ecret", "name\u200b", "A", "a b", "a\nb", "a?b", "a#b",
    "a\\b", "-a", "a-", "", ".a", "a..b", "a;b",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_name_is_refused_with_a_clear_message(name: str) -> None:
    with pytest.raises(InvalidName, match="is not a valid name"):
        valid_name(name, "Secret")
    with pytest.raises(InvalidName):
        api_path("secrets", name, namespace="ns")
    with pytest.raises(InvalidName):
        api_path("secrets", "ok", namespace=name)


def test_the_message_of_a_long_name_is_bounded() -> None:
    with pytest.raises(InvalidName) as err:
        valid_name("a" * 100_000, "Secret")
    assert len(str(err.value)) < 300
    assert "at most 253" in str(err.value)


def test_valid_names_make_paths() -> None:
    assert valid_name("a" * 253, "x") == "a" * 253
    assert valid_name("my-secret.v2", "x") == "my-secret.v2"
    assert valid_label("team-a", "namespace") == "team-a"
    assert name_problem("a" * 64, label=True) == "must be at most 63 characters"
    assert name_problem("a.b", label=True) is not None
    assert api_path("secrets", "s", namespace="ns") == "/api/v1/namespaces/ns/secrets/s"
    assert api_path("persistentvolumes") == "/api/v1/persistentvolumes"
    assert api_path("jobs", namespace="ns", group="batch") == "/apis/batch/v1/namespaces/ns/jobs"
    assert (api_path("persistentvolumeclaims", "c", namespace="ns", sub="status")
            == "/api/v1/namespaces/ns/persistentvolumeclaims/c/status")
    assert (api_path("virtualmachines", "vm", namespace="ns", group="vmlet.io",
                     version="v1alpha1")
            == "/apis/vmlet.io/v1alpha1/namespaces/ns/virtualmachines/vm")


@pytest.mark.parametrize("part", ["../x", "a/b", "%2e", ""])
def test_fixed_parts_are_checked_too(part: str) -> None:
    with pytest.raises(InvalidPath):
        api_path(part)
    with pytest.raises(InvalidPath):
        api_path("pods", "p", namespace="ns", sub=part)


@pytest.mark.parametrize("path", [
    "/api/v1/namespaces/ns/secrets/../../victim/secrets/topsecret",
    "/api/v1/namespaces/ns/secrets/%2e%2e/x", "/api/v1/namespaces/ns/secrets/a%2Fb",
    "/api/v1//secrets", "/api/v1/namespaces/ns/secrets/./x", "api/v1/pods",
    "/api/v1/pods?watch=1", "/api/v1/pods#x", "/api/v1/pods/sécret", "/api/v1/pods/a b",
    "/api/v1/pods/a\\b", "/api/v1/pods/",
])
def test_the_client_refuses_a_path_with_a_segment_that_is_no_name(path: str) -> None:
    with pytest.raises(InvalidPath, match="refusing to request"):
        check_path(path)


async def test_the_client_sends_nothing_for_a_hostile_path() -> None:
    # The server address is unroutable: a request that were sent would fail otherwise.
    client = KubeClient(KubeConfig(server="https://127.0.0.1:9"))
    try:
        with pytest.raises(ApiError) as err:
            await client.get("/api/v1/namespaces/ns/secrets/../../victim/secrets/topsecret")
        assert err.value.status == 400 and err.value.reason == "InvalidPath"
        with pytest.raises(ApiError):
            async for _ in client.stream_watch("/api/v1/namespaces/%2e%2e/pods", {}):
                pass
    finally:
        await client.close()
    assert check_path("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n-1")
