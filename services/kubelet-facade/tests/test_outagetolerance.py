"""Pods on vmlet nodes tolerate their node's outage for ever (vmlet_facade.outagetolerance)."""

from __future__ import annotations

from typing import Any

from vmlet_facade.outagetolerance import OUTAGE_TAINTS, tolerations_for_outages

Obj = dict[str, Any]
PROVIDER = {"key": "vmlet.io/provider", "operator": "Equal", "value": "mem",
            "effect": "NoSchedule"}
FOR_EVER = [{"key": taint, "operator": "Exists", "effect": "NoExecute"} for taint in OUTAGE_TAINTS]


def _pod(*tolerations: Obj) -> Obj:
    return {"metadata": {"name": "p", "namespace": "ns"},
            "spec": {"tolerations": list(tolerations)}}


def test_the_default_toleration_seconds_are_dropped_and_nothing_else_changes() -> None:
    """What DefaultTolerationSeconds adds to every pod: 300 s, after which the taint manager
    evicts it. The apiserver lets tolerationSeconds of an existing toleration change."""
    defaulted = [{**t, "tolerationSeconds": 300} for t in FOR_EVER]
    assert tolerations_for_outages(_pod(PROVIDER, *defaulted)) == [PROVIDER, *FOR_EVER]


def test_missing_tolerations_are_added() -> None:
    assert tolerations_for_outages(_pod()) == FOR_EVER
    assert tolerations_for_outages({"metadata": {}, "spec": {}}) == FOR_EVER
    short = {**FOR_EVER[0], "tolerationSeconds": 0}
    assert tolerations_for_outages(_pod(short)) == FOR_EVER


def test_a_pod_that_tolerates_for_ever_is_left_alone() -> None:
    assert tolerations_for_outages(_pod(PROVIDER, *FOR_EVER)) is None
    assert tolerations_for_outages(_pod({"operator": "Exists"})) is None  # every taint
    blanket = {"operator": "Exists", "effect": "NoExecute"}
    assert tolerations_for_outages(_pod(blanket)) is None
    # Tolerating the taint only for NoSchedule is not tolerating its eviction.
    no_schedule = {"key": OUTAGE_TAINTS[0], "operator": "Exists", "effect": "NoSchedule"}
    assert tolerations_for_outages(_pod(no_schedule, FOR_EVER[1])) == [
        no_schedule, FOR_EVER[1], FOR_EVER[0]]
