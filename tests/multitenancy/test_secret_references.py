"""Secret references into the victim's namespace, with path traversal: the VM's user data, pod
annotations, env and volumes, and the SSH Secret of exec."""

from __future__ import annotations

import json

import pytest

from tests.multitenancy.tenancy import (
    MISSING,
    Obj,
    Secrets,
    Tenant,
    VictimVM,
    attempts,
    bare_pod,
    compare,
    leaked_into_iaas,
    normalised,
    pod_decided,
    running_vm,
    stays_untouched,
    told,
    undecided_report,
    vm_decided,
    vm_manifest,
    wait_decided,
    warnings_about,
)
from vmlet_localenv.stack import Stack

pytestmark = pytest.mark.controlplane


def test_user_data_secret_name_stays_in_the_namespace(stack: Stack, victim: Tenant,
                                                     attacker: Tenant, secrets: Secrets,
                                                     crown: VictimVM) -> None:
    """spec.userData.secretName with path traversal: refused or failed, never the victim's
    bytes in the attacker's VM, and the same answer whether the Secret exists or not."""
    made: dict[str, tuple[str, str]] = {}
    refused: dict[str, tuple[str, str]] = {}
    for label, ref, miss in attempts(victim.ns, secrets.topsecret):
        names = (f"ud{label}-a", f"ud{label}-b")
        answers = []
        for name, secret in zip(names, (ref, miss), strict=True):
            out = attacker.apply(vm_manifest(name, userData={"secretName": secret}))
            answers.append(normalised(out.stderr, name, victim.ns, secrets.topsecret, MISSING))
            if out.returncode == 0:
                made[name] = (label, secret)
        refused[label] = (answers[0], answers[1])
    admission_leaks = [f"{k}: {a!r} vs {b!r}" for k, (a, b) in refused.items() if a != b]

    pending = wait_decided(lambda: {v["metadata"]["name"]: v
                                    for v in attacker.get("vm")["items"]},
                           list(made), vm_decided, timeout=60)
    results: dict[str, tuple[set[str], set[str]]] = {}
    for label, _, _ in attempts(victim.ns, secrets.topsecret):
        pair = []
        for suffix in ("a", "b"):
            name = f"ud{label}-{suffix}"
            obj = attacker.get("vm", name) if name in made else None
            pair.append(told(attacker, name, obj, victim.ns, secrets.topsecret, MISSING)
                        if obj else {"refused at admission"})
        results[label] = (pair[0], pair[1])
    running = [n for n in made if (attacker.get("vm", n).get("status") or {})
               .get("state") == "Running"]
    assert not leaked_into_iaas(stack, secrets.marker, prefix="ud"), \
        f"the victim's Secret reached the IaaS (VMs that ran: {running}; " \
        f"{undecided_report(pending)})"
    assert not leaked_into_iaas(stack, secrets.own_marker, owner_ns=victim.ns)
    assert not admission_leaks, admission_leaks
    assert not compare(results), compare(results)
    for event in warnings_about(attacker, "ud"):
        assert secrets.marker.decode() not in json.dumps(event)
    stays_untouched(stack, victim, crown, seconds=2)
    assert not pending, undecided_report(pending)


def run_pod_attacks(stack: Stack, attacker: Tenant, pods: dict[str, Obj], *names: str
                    ) -> tuple[dict[str, set[str]], dict[str, str], dict[str, Obj]]:
    """Create ``pods`` as the attacker; wait until vmlet decided each; return what the attacker
    was told about each, how the apiserver answered the ones it refused, and the pods vmlet
    left undecided."""
    refused: dict[str, str] = {}
    for name, pod in pods.items():
        out = attacker.create(pod)
        if out.returncode != 0:
            refused[name] = normalised(out.stderr, name, *names)

    pending = wait_decided(lambda: {p["metadata"]["name"]: p
                                    for p in attacker.get("pods")["items"]},
                           [n for n in pods if n not in refused], pod_decided)
    items = {p["metadata"]["name"]: p for p in attacker.get("pods")["items"]}
    return ({n: told(attacker, n, items[n], *names) for n in pods if n not in refused},
            refused, pending)


def pair_up(told_: dict[str, set[str]], refused: dict[str, str],
            labels: list[str], prefix: str) -> dict[str, tuple[set[str], set[str]]]:
    def answer(name: str) -> set[str]:
        return told_.get(name) or {f"refused: {refused.get(name, '')}"}
    return {label: (answer(f"{prefix}{label}-a"), answer(f"{prefix}{label}-b"))
            for label in labels}


def test_user_data_annotation_stays_in_the_namespace(stack: Stack, victim: Tenant,
                                                    attacker: Tenant, secrets: Secrets,
                                                    crown: VictimVM) -> None:
    """A bare pod's vmlet.io/user-data-secret annotation with path traversal."""
    pods: dict[str, Obj] = {}
    labels = []
    for label, ref, miss in attempts(victim.ns, secrets.topsecret):
        labels.append(label)
        for suffix, secret in (("a", ref), ("b", miss)):
            name = f"ua{label}-{suffix}"
            pods[name] = bare_pod(stack, name, annotations={
                "vmlet.io/user-data-secret": secret, "vmlet.io/user-data-key": "userdata"})
    told_, refused, pending = run_pod_attacks(stack, attacker, pods, victim.ns,
                                              secrets.topsecret, MISSING)
    assert not leaked_into_iaas(stack, secrets.marker, prefix="ua"), \
        f"the victim's Secret reached the IaaS ({undecided_report(pending)})"
    results = pair_up(told_, refused, labels, "ua")
    assert not compare(results), compare(results)
    stays_untouched(stack, victim, crown, seconds=2)
    assert not pending, undecided_report(pending)


def test_pod_secret_references_stay_in_the_namespace(stack: Stack, victim: Tenant,
                                                    attacker: Tenant, secrets: Secrets) -> None:
    """The same traversal in a pod's own Secret references (env, envFrom, volumes), which the
    facade resolves itself: refused by the apiserver or resolved in the pod's namespace only."""
    pods: dict[str, Obj] = {}
    labels = []
    for label, ref, miss in attempts(victim.ns, secrets.topsecret)[:4]:
        for kind in ("env", "envfrom", "vol"):
            labels.append(f"{kind}{label}")
            for suffix, secret in (("a", ref), ("b", miss)):
                name = f"ps{kind}{label}-{suffix}"
                pod = bare_pod(stack, name)
                container = pod["spec"]["containers"][0]
                if kind == "env":
                    container["env"] = [{"name": "STOLEN", "valueFrom": {"secretKeyRef": {
                        "name": secret, "key": "password"}}}]
                elif kind == "envfrom":
                    container["envFrom"] = [{"secretRef": {"name": secret}}]
                else:
                    pod["spec"]["volumes"] = [{"name": "s", "secret": {"secretName": secret}}]
                pods[name] = pod
    told_, refused, pending = run_pod_attacks(stack, attacker, pods, victim.ns,
                                              secrets.topsecret, MISSING)
    assert not leaked_into_iaas(stack, secrets.marker, prefix="ps"), \
        f"the victim's Secret reached the IaaS ({undecided_report(pending)})"
    results = pair_up(told_, refused, labels, "ps")
    assert not compare(results), compare(results)
    assert not pending, undecided_report(pending)


def exec_answer(t: Tenant, pod: str) -> tuple[int, str, str]:
    out = t.kubectl("exec", "-n", t.ns, pod, "--", "echo", "in")
    return out.returncode, out.stdout, out.stderr


def test_ssh_secret_annotation_stays_in_the_namespace(stack: Stack, victim: Tenant,
                                                     attacker: Tenant, secrets: Secrets) -> None:
    """A pod's vmlet.io/ssh-secret (read at exec time) with path traversal: exec into one's own
    pod answers the same whether the victim's Secret exists or not, and never with its bytes."""
    pods: dict[str, Obj] = {}
    labels = []
    for label, ref, miss in attempts(victim.ns, secrets.topsecret):
        labels.append(label)
        for suffix, secret in (("a", ref), ("b", miss)):
            name = f"ssh{label}-{suffix}"
            pods[name] = bare_pod(stack, name, annotations={"vmlet.io/ssh-secret": secret})
    _, refused, pending = run_pod_attacks(stack, attacker, pods, victim.ns, secrets.topsecret,
                                          MISSING)
    assert not pending, undecided_report(pending)  # exec needs them Running
    results: dict[str, tuple[set[str], set[str]]] = {}
    names = (victim.ns, secrets.topsecret, MISSING)
    for label in labels:
        pair = []
        for suffix in ("a", "b"):
            name = f"ssh{label}-{suffix}"
            if name in refused:
                pair.append({f"refused: {refused[name]}"})
                continue
            code, out, err = exec_answer(attacker, name)
            assert secrets.marker.decode() not in out + err
            pair.append({f"exit {code}", normalised(out, name, *names),
                         normalised(err, name, *names)})
        results[label] = (pair[0], pair[1])
    assert not compare(results), compare(results)


def test_ssh_secret_name_of_a_vm_stays_in_the_namespace(stack: Stack, victim: Tenant,
                                                       attacker: Tenant,
                                                       secrets: Secrets) -> None:
    """spec.access.sshSecretName with path traversal: refused, or exec answers alike."""
    results: dict[str, tuple[set[str], set[str]]] = {}
    names = (victim.ns, secrets.topsecret, MISSING)
    made = []
    chosen = attempts(victim.ns, secrets.topsecret)[:3]
    for label, ref, miss in chosen:
        for suffix, secret in (("a", ref), ("b", miss)):
            name = f"sshvm{label}-{suffix}"
            out = attacker.apply(vm_manifest(name, access={"sshSecretName": secret}))
            if out.returncode == 0:
                made.append(name)
            else:
                results.setdefault(label, (set(), set()))[0 if suffix == "a" else 1].add(
                    normalised(out.stderr, name, *names))
    for name in made:
        running_vm(attacker, name, timeout=90)
    for label, _, _ in chosen:
        for index, suffix in enumerate(("a", "b")):
            name = f"sshvm{label}-{suffix}"
            if name not in made:
                continue
            pod = attacker.get("vm", name)["status"]["podName"]
            code, said, err = exec_answer(attacker, pod)
            assert secrets.marker.decode() not in said + err
            results.setdefault(label, (set(), set()))[index].update(
                {f"exit {code}", normalised(said, pod, name, *names),
                 normalised(err, pod, name, *names)})
    assert not compare(results), compare(results)
