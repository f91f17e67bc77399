"""podfields: every field of a pod spec vmlet does not honour is named, and only those."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from vmlet_facade.podfields import (
    FIELDS_NOT_HONOURED,
    GUIDE,
    MAX_MESSAGE,
    MAX_NAMED,
    unhonoured,
    warning_message,
)
from vmlet_facade.vmapi import vm_pod

_TOKEN = "kube-api-access-x7k2p"
_SA_MOUNT = {"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "name": _TOKEN,
             "readOnly": True}


def _pod() -> dict[str, Any]:
    """A VM pod as the apiserver (1.34) returns it: with everything it defaults and injects."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "db", "namespace": "ns", "uid": "u-1",
                     "annotations": {"vmlet.io/networks": "pod-network"}},
        "spec": {
            "containers": [{
                "name": "vm", "image": "vsphere:template/debian-12",
                "imagePullPolicy": "IfNotPresent",
                "resources": {"requests": {"cpu": "2", "memory": "4Gi"},
                              "limits": {"cpu": "2", "memory": "4Gi"}},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "volumeMounts": [_SA_MOUNT],
            }],
            "dnsPolicy": "ClusterFirst", "enableServiceLinks": True, "nodeName": "esx-1",
            "preemptionPolicy": "PreemptLowerPriority", "priority": 0,
            "restartPolicy": "Always", "schedulerName": "default-scheduler",
            "securityContext": {}, "serviceAccount": "default", "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 30,
            "tolerations": [
                {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready",
                 "operator": "Exists", "tolerationSeconds": 300},
                {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable",
                 "operator": "Exists", "tolerationSeconds": 300}],
            "volumes": [{"name": _TOKEN, "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt",
                               "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                    "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]}}],
        },
        "status": {"phase": "Pending", "qosClass": "Guaranteed"},
    }


def _with(**spec: Any) -> dict[str, Any]:
    pod = _pod()
    pod["spec"].update(spec)
    return pod


def _with_container(**fields: Any) -> dict[str, Any]:
    pod = _pod()
    pod["spec"]["containers"][0].update(fields)
    return pod


def test_a_pod_as_the_apiserver_returns_it_sets_nothing_unhonoured() -> None:
    assert unhonoured(_pod()) == []
    assert unhonoured({"metadata": {"name": "x"}}) == []  # no spec at all


def test_what_vmlet_honours_is_not_named() -> None:
    pod = _pod()
    vm = pod["spec"]["containers"][0]
    vm.update({
        "command": ["/bin/sh", "-c"], "args": ["echo hi"],
        "env": [{"name": "A", "value": "1"},
                {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                {"name": "C", "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                                         "fieldPath": "status.podIP"}}},
                {"name": "D", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu",
                                                                 "divisor": "0"}}},
                {"name": "E", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}],
        "envFrom": [{"configMapRef": {"name": "c"}, "prefix": "C_"},
                    {"secretRef": {"name": "s", "optional": True}}],
        "ports": [{"containerPort": 22, "name": "ssh", "protocol": "TCP"}],
        "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"},
                         {"resourceName": "memory", "restartPolicy": "NotRequired"}],
        "imagePullPolicy": "Always",
        "stdin": False, "tty": False,
        "volumeMounts": [_SA_MOUNT, {"name": "data", "mountPath": "/data", "readOnly": True}],
    })
    pod["spec"].update({
        "nodeSelector": {"vmlet.io/provider": "vsphere"},
        "affinity": {"nodeAffinity": {}}, "priorityClassName": "high", "priority": 1000,
        "topologySpreadConstraints": [{"maxSkew": 1}], "schedulerName": "my-scheduler",
        "preemptionPolicy": "Never", "automountServiceAccountToken": False,
        "enableServiceLinks": False, "imagePullSecrets": [{"name": "regcred"}],
        "hostNetwork": False, "hostUsers": True,
    })
    pod["spec"]["volumes"] += [
        {"name": "data", "persistentVolumeClaim": {"claimName": "data", "readOnly": False}},
    ]
    assert unhonoured(pod) == []


@pytest.mark.parametrize(("spec", "named"), [
    ({"hostNetwork": True}, "spec.hostNetwork"),
    ({"hostPID": True}, "spec.hostPID"),
    ({"hostIPC": True}, "spec.hostIPC"),
    ({"hostUsers": False}, "spec.hostUsers"),
    ({"shareProcessNamespace": True}, "spec.shareProcessNamespace"),
    ({"setHostnameAsFQDN": True}, "spec.setHostnameAsFQDN"),
    ({"securityContext": {"runAsNonRoot": True}}, "spec.securityContext"),
    ({"dnsConfig": {"nameservers": ["1.1.1.1"]}}, "spec.dnsConfig"),
    ({"hostAliases": [{"ip": "10.0.0.1", "hostnames": ["a"]}]}, "spec.hostAliases"),
    ({"hostname": "db"}, "spec.hostname"),
    ({"hostnameOverride": "db"}, "spec.hostnameOverride"),
    ({"subdomain": "svc"}, "spec.subdomain"),
    ({"activeDeadlineSeconds": 600}, "spec.activeDeadlineSeconds"),
    ({"readinessGates": [{"conditionType": "x.io/ok"}]}, "spec.readinessGates"),
    ({"runtimeClassName": "kata"}, "spec.runtimeClassName"),
    ({"overhead": {"cpu": "250m"}}, "spec.overhead"),
    ({"os": {"name": "linux"}}, "spec.os"),
    ({"resources": {"limits": {"cpu": "2"}}}, "spec.resources"),
    ({"resourceClaims": [{"name": "gpu", "resourceClaimName": "gpu"}]}, "spec.resourceClaims"),
    ({"ephemeralContainers": [{"name": "debug", "image": "busybox"}]},
     "spec.ephemeralContainers"),
])
def test_each_ignored_pod_field_is_named(spec: dict[str, Any], named: str) -> None:
    assert unhonoured(_with(**spec)) == [named]


def test_readiness_and_startup_probes_are_honoured() -> None:
    probe = {"initialDelaySeconds": 5, "periodSeconds": 2, "timeoutSeconds": 1,
             "successThreshold": 1, "failureThreshold": 3}
    pod = _with_container(
        readinessProbe={"httpGet": {"port": "http", "path": "/ok", "scheme": "HTTPS",
                                    "httpHeaders": [{"name": "X", "value": "y"}]}, **probe},
        startupProbe={"tcpSocket": {"port": 22}, **probe})
    assert unhonoured(pod) == []
    assert unhonoured(_with_container(readinessProbe={"exec": {"command": ["true"]}})) == []


@pytest.mark.parametrize(("fields", "named"), [
    ({"livenessProbe": {"grpc": {"port": 9000}}}, "livenessProbe.grpc"),
    # Readiness and startup probes are run, but not over gRPC nor at another host.
    ({"readinessProbe": {"grpc": {"port": 9000}}}, "readinessProbe.grpc"),
    ({"startupProbe": {"httpGet": {"port": 80, "host": "10.0.0.1"}}}, "startupProbe.httpGet.host"),
    # Hooks run (exec, httpGet, sleep), but tcpSocket is no hook a kubelet runs either.
    ({"lifecycle": {"preStop": {"tcpSocket": {"port": 22}}}}, "lifecycle.preStop.tcpSocket"),
    ({"lifecycle": {"postStart": {"httpGet": {"port": 80, "host": "10.0.0.1"}}}},
     "lifecycle.postStart.httpGet.host"),
    ({"lifecycle": {"stopSignal": "SIGUSR1"}}, "lifecycle.stopSignal"),
    ({"securityContext": {"privileged": True}}, "securityContext"),
    ({"workingDir": "/srv"}, "workingDir"),
    ({"stdin": True}, "stdin"),
    ({"stdinOnce": True}, "stdinOnce"),
    ({"tty": True}, "tty"),
    ({"volumeDevices": [{"name": "raw", "devicePath": "/dev/xvdb"}]}, "volumeDevices"),
    ({"restartPolicyRules": [{"action": "Restart"}]}, "restartPolicyRules"),
    ({"terminationMessagePath": "/tmp/msg"}, "terminationMessagePath"),
    ({"terminationMessagePolicy": "FallbackToLogsOnError"}, "terminationMessagePolicy"),
    ({"resizePolicy": [{"resourceName": "memory", "restartPolicy": "RestartContainer"}]},
     "resizePolicy[memory].restartPolicy"),
    ({"ports": [{"containerPort": 80, "hostPort": 8080}]}, "ports[80].hostPort"),
    ({"resources": {"limits": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "1Gi"}}},
     "resources.limits[ephemeral-storage]"),
    ({"resources": {"requests": {"cpu": "2", "nvidia.com/gpu": "1"}}},
     "resources.requests[nvidia.com/gpu]"),
    ({"resources": {"claims": [{"name": "gpu"}]}}, "resources.claims"),
    ({"env": [{"name": "F", "valueFrom": {"fileKeyRef": {"path": "f", "key": "k"}}}]},
     "env[F].valueFrom.fileKeyRef"),
    ({"volumeMounts": [_SA_MOUNT, {"name": "cfg", "mountPath": "/c", "subPath": "a"}]},
     "volumeMounts[cfg].subPath"),
    ({"volumeMounts": [{"name": "d", "mountPath": "/d", "mountPropagation": "Bidirectional"}]},
     "volumeMounts[d].mountPropagation"),
])
def test_each_ignored_container_field_is_named(fields: dict[str, Any], named: str) -> None:
    assert unhonoured(_with_container(**fields)) == [f"spec.containers[vm].{named}"]


@pytest.mark.parametrize(("volume", "named"), [
    ({"name": "h", "hostPath": {"path": "/var/lib"}}, "spec.volumes[h].hostPath"),
    ({"name": "n", "nfs": {"server": "nas", "path": "/x"}}, "spec.volumes[n].nfs"),
    ({"name": "c", "csi": {"driver": "x"}}, "spec.volumes[c].csi"),
    ({"name": "e", "ephemeral": {"volumeClaimTemplate": {}}}, "spec.volumes[e].ephemeral"),
    ({"name": "i", "image": {"reference": "busybox"}}, "spec.volumes[i].image"),
    # Resolved and sent, but put into the guest by no provider yet: named, even when empty.
    ({"name": "r", "persistentVolumeClaim": {"claimName": "r", "readOnly": True}},
     "spec.volumes[r].persistentVolumeClaim.readOnly"),
    ({"name": "m", "emptyDir": {}}, "spec.volumes[m].emptyDir"),
    ({"name": "m", "emptyDir": {"sizeLimit": "1Gi", "medium": "Memory"}},
     "spec.volumes[m].emptyDir"),
    ({"name": "s", "secret": {"secretName": "s", "defaultMode": 420}}, "spec.volumes[s].secret"),
    ({"name": "c", "configMap": {"name": "app", "items": [{"key": "a", "path": "a.conf"}]}},
     "spec.volumes[c].configMap"),
    ({"name": "d", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {
        "fieldPath": "metadata.labels"}}]}}, "spec.volumes[d].downwardAPI"),
    ({"name": "p", "projected": {"sources": [{"secret": {"name": "s"}}]}},
     "spec.volumes[p].projected"),
    # Named like the injected token volume, but not one: judged as any other.
    ({"name": "kube-api-access-evil", "hostPath": {"path": "/"}},
     "spec.volumes[kube-api-access-evil].hostPath"),
])
def test_each_ignored_volume_is_named(volume: dict[str, Any], named: str) -> None:
    pod = _pod()
    pod["spec"]["volumes"].append(volume)
    assert unhonoured(pod) == [named]


@pytest.mark.parametrize(("spec", "named"), [
    ({"dnsPolicy": "None"}, "spec.dnsPolicy"),
    ({"serviceAccountName": "builder", "serviceAccount": "builder"},
     "spec.serviceAccount"),  # and serviceAccountName, below
])
def test_a_default_changed_is_named(spec: dict[str, Any], named: str) -> None:
    assert named in unhonoured(_with(**spec))


@pytest.mark.parametrize("policy", ["Always", "OnFailure", "Never"])
def test_every_restart_policy_is_honoured(policy: str) -> None:
    assert unhonoured(_with(restartPolicy=policy)) == []


def test_defaults_are_compared_by_value_and_type() -> None:
    assert unhonoured(_with(serviceAccountName="builder")) == ["spec.serviceAccountName"]
    assert unhonoured(_with(hostNetwork=0)) == ["spec.hostNetwork"]  # 0 is no false
    assert unhonoured(_with(terminationGracePeriodSeconds=120)) == []  # a delete's grace


def test_init_containers_run_their_commands_and_nothing_else() -> None:
    pod = _pod()
    pod["spec"]["containers"][0]["volumeMounts"].append({"name": "data", "mountPath": "/data"})
    pod["spec"]["volumes"].append({"name": "data", "persistentVolumeClaim": {"claimName": "d"}})
    pod["spec"]["initContainers"] = [
        {"name": "setup", "image": "vsphere:template/debian-12", "command": ["sh", "-c"],
         "args": ["mkfs /dev/sdb"], "env": [{"name": "A", "value": "1"}],
         "envFrom": [{"secretRef": {"name": "s"}}], "imagePullPolicy": "IfNotPresent",
         "terminationMessagePath": "/dev/termination-log",
         "terminationMessagePolicy": "File", "resources": {},
         "volumeMounts": [{"name": "data", "mountPath": "/data"}, _SA_MOUNT]},
    ]
    assert unhonoured(pod) == []  # its image is the VM's, its mount one the VM has
    pod["spec"]["initContainers"].append({
        "name": "fetch", "image": "busybox:1.36", "command": ["wget", "x"],
        "resources": {"requests": {"cpu": "100m"}},
        "lifecycle": {"postStart": {"exec": {"command": ["x"]}}},
        "livenessProbe": {"exec": {"command": ["true"]}},
        "ports": [{"containerPort": 80}], "restartPolicy": "Always", "workingDir": "/w",
        "volumeMounts": [{"name": "data", "mountPath": "/elsewhere"}],
    })
    assert unhonoured(pod) == [
        "spec.initContainers[fetch].image",
        "spec.initContainers[fetch].lifecycle",
        "spec.initContainers[fetch].livenessProbe",
        "spec.initContainers[fetch].ports",
        "spec.initContainers[fetch].resources",
        "spec.initContainers[fetch].restartPolicy",
        "spec.initContainers[fetch].volumeMounts[data]",
        "spec.initContainers[fetch].workingDir",
    ]


def test_fields_vmlet_does_not_know_are_named() -> None:
    pod = _with(schedulingFoo={"x": 1})
    pod["spec"]["containers"][0]["sandboxHint"] = "x"
    pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["x"] = 1  # skipped
    pod["spec"]["volumes"].append({"name": "v", "emptyDir": {}, "futureOption": True})
    assert unhonoured(pod) == ["spec.containers[vm].sandboxHint", "spec.schedulingFoo",
                               "spec.volumes[v].emptyDir", "spec.volumes[v].futureOption"]


def test_unset_values_are_not_named_and_odd_shapes_do_not_raise() -> None:
    assert unhonoured(_with(hostname="", dnsConfig=None, hostAliases=[], os={})) == []
    assert unhonoured({"spec": "nonsense"}) == ["spec"]
    assert unhonoured(_with(volumes=[{"name": "x", "hostPath": "not an object"}])) == [
        "spec.volumes[x].hostPath"]
    assert unhonoured(_with(containers=[{"name": "vm", "image": "x", "ports": {"a": 1}}])) == [
        "spec.containers[vm].ports"]


def test_order_is_stable_whatever_the_order_of_the_json() -> None:
    pod = _with(hostPID=True, hostNetwork=True, runtimeClassName="kata")
    pod["spec"]["containers"][0].update(tty=True, lifecycle={"preStop": {"tcpSocket": {"port": 1}}})
    pod["spec"]["containers"].append({"name": "second", "image": "x", "workingDir": "/"})
    expected = ["spec.containers[vm].lifecycle.preStop.tcpSocket", "spec.containers[vm].tty",
                "spec.containers[second].workingDir", "spec.hostNetwork", "spec.hostPID",
                "spec.runtimeClassName"]
    assert unhonoured(pod) == expected

    def reversed_keys(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: reversed_keys(value[k]) for k in reversed(list(value))}
        if isinstance(value, list):
            return [reversed_keys(v) for v in value]
        return value

    assert unhonoured(reversed_keys(copy.deepcopy(pod))) == expected
    assert unhonoured(json.loads(json.dumps(pod))) == expected


def test_a_field_is_named_once() -> None:
    pod = _with_container(volumeMounts=[{"name": "c", "mountPath": "/a", "subPath": "a"},
                                        {"name": "c", "mountPath": "/b", "subPath": "b"}])
    assert unhonoured(pod) == ["spec.containers[vm].volumeMounts[c].subPath"]


def test_vmlets_own_vm_pod_sets_nothing_unhonoured() -> None:
    """The pod the VirtualMachine controller makes; its terminationGracePeriodSeconds (60) is
    the time its guest has to shut down when the pod is deleted."""
    vm = {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine",
          "metadata": {"name": "db", "namespace": "ns", "uid": "vm-uid",
                       "labels": {"app": "db"}},
          "spec": {"provider": "vsphere", "image": "vsphere:template/debian-12", "cpu": 2,
                   "memory": "4Gi", "disks": [{"name": "data", "claimName": "db-data"}],
                   "networks": [{"name": "pod-network"}],
                   "placement": {"nodeSelector": {"zone": "a"}}},
          "status": {"nodeName": "esx-1"}}
    pod: dict[str, Any] = dict(vm_pod(vm))  # type: ignore[arg-type]
    assert unhonoured(pod) == []


def test_the_message_names_every_field_and_points_at_the_guide() -> None:
    fields = ["spec.hostNetwork", "spec.containers[vm].livenessProbe"]
    message = warning_message(fields)
    assert FIELDS_NOT_HONOURED == "FieldsNotHonoured"
    assert message.startswith("vmlet does not honour 2 fields this pod sets: ")
    assert "spec.hostNetwork, spec.containers[vm].livenessProbe." in message
    assert GUIDE in message and "more" not in message
    assert warning_message(["spec.hostPID"]).startswith("vmlet does not honour 1 field this")


def test_the_message_names_ten_and_counts_the_rest() -> None:
    fields = [f"spec.containers[vm].field{i}" for i in range(14)]
    message = warning_message(fields)
    assert sum(f in message for f in fields) == MAX_NAMED == 10
    assert "spec.containers[vm].field9 and 4 more." in message
    assert GUIDE in message
    exactly = warning_message(fields[:10])
    assert "more" not in exactly and "field9." in exactly


def test_the_message_stays_short_with_long_names() -> None:
    name = "x" * 63
    fields = [f"spec.volumes[{name}{i:02}].projected.sources[{i}].{'z' * 90}" for i in range(12)]
    message = warning_message(fields)
    assert len(message) <= MAX_MESSAGE
    assert message.endswith(f'more. See {GUIDE}, "What of a pod spec vmlet honours".')
    named = sum(f in message for f in fields)
    assert 1 <= named < 10 and f"and {12 - named} more" in message
    huge = warning_message(["spec." + "y" * 5000])
    assert len(huge) <= MAX_MESSAGE and "..." in huge
