from __future__ import annotations

import pytest

from vmlet_facade.expansion import expand
from vmlet_facade.kube import ApiError
from vmlet_facade.references import (
    INVALID_REFERENCE,
    USER_DATA_ANNOTATION,
    MissingReference,
    Resolver,
    field_value,
    resource_value,
)

POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"a": "1"}},
       "spec": {"nodeName": "n", "containers": [{"name": "c", "resources": {
           "requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1500m"}}}]},
       "status": {"podIP": "10.1.1.1", "hostIP": "127.0.0.1"}}


def test_field_values() -> None:
    assert field_value(POD, "metadata.name") == "p"
    assert field_value(POD, "status.podIP") == "10.1.1.1"
    assert field_value(POD, "status.hostIP") == "127.0.0.1"
    assert field_value(POD, "metadata.labels['a']") == "1"
    with pytest.raises(MissingReference):
        field_value(POD, "spec.nope")


def test_resource_values_round_up_like_the_kubelet() -> None:
    c = POD["spec"]["containers"][0]  # type: ignore[index]
    assert resource_value(POD, c, {"resource": "limits.cpu", "divisor": "0"}) == "2"
    assert resource_value(POD, c, {"resource": "requests.cpu", "divisor": "1m"}) == "250"
    assert resource_value(POD, c, {"resource": "requests.memory", "divisor": "1Mi"}) == "64"


def test_env_values_expand_the_variables_defined_before_them() -> None:
    pairs = [("A", "x"), ("B", "y")]
    assert expand("$(A)-$(B)-$(C)-$$(A)", dict(pairs)) == "x-y-$(C)-$(A)"


class Api:
    """An apiserver with some Secrets in namespace ``ns``; forbids reading ``forbidden``."""

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.secrets = {"/api/v1/namespaces/ns/secrets/cloud-init": {
            "kind": "Secret", "data": {"userdata": "I2Nsb3VkLWNvbmZpZw=="}}}

    async def get(self, path: str, **params: str) -> dict[str, object]:
        self.reads.append(path)
        if path.endswith("/forbidden"):
            raise ApiError(403, "Forbidden", "secrets \"forbidden\" is forbidden")
        if path not in self.secrets:
            raise ApiError(404, "NotFound", "not found")
        return self.secrets[path]


def _pod(annotations: dict[str, str], ns: str = "ns") -> dict[str, object]:
    return {"metadata": {"name": "p", "namespace": ns, "uid": "u", "annotations": annotations},
            "spec": {"containers": [{"name": "c"}]}}


@pytest.mark.parametrize("name", [
    "../../victim/secrets/topsecret", "../x", "a/b", "%2e%2e", "a" * 254, "sécret", "",
])
async def test_a_hostile_user_data_reference_reads_nothing(name: str) -> None:
    api = Api()
    with pytest.raises(MissingReference) as err:
        await Resolver(api).resolve(_pod({USER_DATA_ANNOTATION: name or " "}))  # type: ignore[arg-type]
    assert err.value.reason == INVALID_REFERENCE
    assert "is not a valid name" in err.value.message
    assert api.reads == []


@pytest.mark.parametrize("kind", ["secret", "configMap"])
async def test_a_hostile_volume_or_env_reference_reads_nothing(kind: str) -> None:
    api = Api()
    pod = _pod({})
    pod["spec"] = {"containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {
        f"{kind}KeyRef": {"name": "../other", "key": "k"}}}]}]}
    with pytest.raises(MissingReference) as err:
        await Resolver(api).resolve(pod)  # type: ignore[arg-type]
    assert err.value.reason == INVALID_REFERENCE and api.reads == []
    pod["spec"] = {"containers": [{"name": "c"}], "volumes": [
        {"name": "v", "persistentVolumeClaim": {"claimName": "../../victim/pvc"}}]}
    with pytest.raises(MissingReference):
        await Resolver(api).resolve(pod)  # type: ignore[arg-type]
    assert api.reads == []


async def test_a_hostile_key_reads_nothing() -> None:
    api = Api()
    with pytest.raises(MissingReference) as err:
        await Resolver(api).resolve(_pod({  # type: ignore[arg-type]
            USER_DATA_ANNOTATION: "cloud-init", "vmlet.io/user-data-key": "../userdata"}))
    assert err.value.reason == INVALID_REFERENCE and api.reads == []


async def test_a_forbidden_secret_fails_like_a_missing_one() -> None:
    answers = []
    for name in ("forbidden", "missing"):
        with pytest.raises(MissingReference) as err:
            await Resolver(Api()).resolve(_pod({USER_DATA_ANNOTATION: name}))  # type: ignore[arg-type]
        answers.append((err.value.reason, err.value.message.replace(name, "NAME")))
    assert answers[0] == answers[1] == ("MandatorySecretNotFound", 'secret "NAME" not found')


async def test_a_valid_reference_is_read_in_the_pods_namespace_only() -> None:
    api = Api()
    out = await Resolver(api).resolve(_pod({USER_DATA_ANNOTATION: "cloud-init"}))  # type: ignore[arg-type]
    assert out.user_data == "#cloud-config"
    assert api.reads == ["/api/v1/namespaces/ns/secrets/cloud-init"]


def _claim_pod() -> dict[str, object]:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [{"name": "c"}],
                     "volumes": [{"name": "data",
                                  "persistentVolumeClaim": {"claimName": "mine"}}]}}


def _claim_api(phase: str, claim_ref: dict[str, str]) -> Api:
    api = Api()
    api.secrets["/api/v1/namespaces/ns/persistentvolumeclaims/mine"] = {
        "metadata": {"name": "mine", "namespace": "ns", "uid": "claim-uid"},
        "spec": {"volumeName": "pv-1"}, "status": {"phase": phase}}
    api.secrets["/api/v1/persistentvolumes/pv-1"] = {
        "spec": {"csi": {"volumeHandle": "disk-1"}, "claimRef": claim_ref}}
    return api


async def test_a_bound_claim_gives_its_disk() -> None:
    api = _claim_api("Bound", {"namespace": "ns", "name": "mine", "uid": "claim-uid"})
    resolved = await Resolver(api).resolve(_claim_pod())  # type: ignore[arg-type]
    assert resolved.disks == {"data": "disk-1"}


@pytest.mark.parametrize(("phase", "claim_ref"), [
    # A claim that names another namespace's volume in spec.volumeName stays Pending.
    ("Pending", {"namespace": "victim", "name": "theirs", "uid": "victim-uid"}),
    # Even a claim that says Bound gets nothing from a volume bound to another claim.
    ("Bound", {"namespace": "victim", "name": "theirs", "uid": "victim-uid"}),
    ("Bound", {"namespace": "ns", "name": "mine", "uid": "an-older-claim"}),
])
async def test_a_claim_gets_no_volume_bound_elsewhere(
        phase: str, claim_ref: dict[str, str]) -> None:
    api = _claim_api(phase, claim_ref)
    with pytest.raises(MissingReference) as err:
        await Resolver(api).resolve(_claim_pod())  # type: ignore[arg-type]
    assert err.value.message == 'persistentvolumeclaim "mine" is not bound'


async def test_the_injected_token_volume_is_not_read_nor_sent() -> None:
    """Issue 19's profile: 80-150 GET configmaps per 1000 pods, for kube-root-ca.crt of the
    service-account volume the apiserver injects into every pod, which no VM is given. It is not
    read; a projected volume of the pod's own, even named like it, still is."""
    api = Api()
    token = {"name": "kube-api-access-x7k2p", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt",
                                                              "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
            "fieldPath": "metadata.namespace"}}]}}]}}
    pod = _pod({})
    pod["spec"] = {"containers": [{"name": "c"}], "volumes": [token]}
    resolved = await Resolver(api).resolve(pod)  # type: ignore[arg-type]
    assert api.reads == [] and resolved.files == {}
    own = {"name": "kube-api-access-mine", "projected": {"sources": [
        {"configMap": {"name": "settings", "optional": True}}]}}
    pod["spec"] = {"containers": [{"name": "c"}], "volumes": [own]}
    resolved = await Resolver(api).resolve(pod)  # type: ignore[arg-type]
    assert api.reads == ["/api/v1/namespaces/ns/configmaps/settings"]
    assert resolved.files == {"kube-api-access-mine": {}}
