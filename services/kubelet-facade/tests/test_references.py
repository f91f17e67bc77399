from __future__ import annotations

import pytest

from vmlet_facade.references import MissingReference, _expand, field_value, resource_value

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


def test_expand() -> None:
    pairs = [("A", "x"), ("B", "y")]
    assert _expand("$(A)-$(B)-$(C)-$$(A)", pairs) == "x-y-$(C)-$(A)"
