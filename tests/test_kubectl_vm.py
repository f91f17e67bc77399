"""`kubectl vm` on the real control plane, against the facade's VirtualMachine controllers and the
in-memory provider.

The plugin runs as a user runs it: `kubectl vm ...` as a subprocess, kubectl finding
`kubectl-vm` on PATH (the virtualenv's bin), the cluster chosen by KUBECONFIG or the plugin's
own --kubeconfig/--context/-n. Every step is checked in the resources it edits or creates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.services import REPO
from vmlet_localenv.stack import Stack, eventually

pytestmark = pytest.mark.controlplane

PROVIDER = "vmctl"
NODES = [f"{PROVIDER}-0", f"{PROVIDER}-1"]
CRDS = ["virtualmachines", "virtualmachinebackups", "virtualmachinerestores",
        "virtualmachinemigrations"]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    control_plane.kubectl("apply", "-f", str(REPO / "k8s/base/crds"))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          *[f"crd/{name}.vmlet.io" for name in CRDS])
    # A leader Lease of this module's own, so no facade of an earlier module can hold it.
    lease_ns = f"kvm-lease-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", lease_ns)
    s = Stack(control_plane, tmp_path_factory.mktemp("kubectl-vm"), {PROVIDER: ["--nodes", "2"]},
              facade_args=[f"--leader-election-namespace={lease_ns}"]).start()
    try:
        eventually(lambda: len(s.ready_nodes(PROVIDER)) == 2, what="nodes Ready")
        yield s
    finally:
        s.stop()


@pytest.fixture
def ns(control_plane: ControlPlane) -> str:
    name = f"kvm-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    return name


def kubectl_vm(cp: ControlPlane, *args: str, kubeconfig: Path | None = None,
               timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`kubectl vm ARGS`, as a user's shell runs it."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "KUBECONFIG": str(kubeconfig or cp.kubeconfig)}
    return subprocess.run(["kubectl", "vm", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def ok(cp: ControlPlane, *args: str) -> str:
    done = kubectl_vm(cp, *args)
    assert done.returncode == 0, f"kubectl vm {' '.join(args)}: {done.stderr}{done.stdout}"
    return done.stdout


def get(cp: ControlPlane, ns: str, resource: str, name: str) -> dict[str, Any]:
    return dict(json.loads(cp.kubectl("get", resource, name, "-n", ns, "-o", "json").stdout))


def make_vm(cp: ControlPlane, ns: str, name: str, *, replicas: int = 1,
            placement: dict[str, Any] | None = None) -> None:
    vm: dict[str, Any] = {
        "apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas, "provider": PROVIDER, "image": "debian-12", "cpu": 1,
                 "memory": "1Gi"},
    }
    if placement:
        vm["spec"]["placement"] = placement
    cp.kubectl("apply", "-f", "-", input=json.dumps(vm))


def vm_status(cp: ControlPlane, ns: str, name: str) -> dict[str, Any]:
    return dict(get(cp, ns, "virtualmachines.vmlet.io", name).get("status") or {})


def vm_pods(cp: ControlPlane, ns: str, name: str) -> list[dict[str, Any]]:
    items = json.loads(cp.kubectl("get", "pods", "-n", ns, "-l", f"vmlet.io/vm={name}",
                                  "-o", "json").stdout)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def running_vm(cp: ControlPlane, ns: str, name: str) -> dict[str, Any]:
    ok(cp, "start", name, "-n", ns, "--wait", "--timeout", "2m")
    status = vm_status(cp, ns, name)
    assert status["state"] == "Running"
    return status


def test_plugin_is_installed_and_explains_itself(control_plane: ControlPlane) -> None:
    assert shutil.which("kubectl-vm", path=str(BIN)), "the venv installs the kubectl-vm script"
    done = kubectl_vm(control_plane, "--help")
    assert done.returncode == 0, done.stderr
    for verb in ("start", "stop", "restart", "resize", "migrate", "backup", "restore", "status"):
        assert verb in done.stdout
    assert "--wait" in kubectl_vm(control_plane, "stop", "--help").stdout

    bad = kubectl_vm(control_plane, "resize", "web", "--memory", "lots")
    assert bad.returncode == 2
    assert "invalid quantity 'lots'" in bad.stderr
    assert kubectl_vm(control_plane, "resize", "web").returncode == 2
    assert kubectl_vm(control_plane, "start").returncode == 2
    assert kubectl_vm(control_plane, "fly", "web").returncode == 2


def test_missing_vm_is_a_clear_error(stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    for args in (["status", "nope"], ["start", "nope", "--wait"], ["stop", "nope"],
                 ["resize", "nope", "--cpu", "2"], ["migrate", "nope"], ["backup", "nope"],
                 ["restore", "nope", "--backup", "b"]):
        done = kubectl_vm(control_plane, *args, "-n", ns)
        assert done.returncode == 1, (args, done.stdout)
        assert f'VirtualMachine "nope" not found in namespace "{ns}"' in done.stderr, args
        assert "Traceback" not in done.stderr


def test_stop_start_restart(stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    cp = control_plane
    make_vm(cp, ns, "web")
    first = running_vm(cp, ns, "web")
    assert first["nodeName"] in NODES and first["addresses"]
    machine = first["providerID"]  # the IaaS VM

    out = ok(cp, "stop", "web", "-n", ns, "--wait")
    assert "virtualmachine.vmlet.io/web is Stopped" in out
    vm = get(cp, ns, "virtualmachines.vmlet.io", "web")
    assert vm["spec"]["replicas"] == 0
    assert vm["status"]["state"] == "Stopped"
    assert vm["status"]["observedGeneration"] == vm["metadata"]["generation"]
    assert vm_pods(cp, ns, "web") == []
    assert "already Stopped" in ok(cp, "stop", "web", "-n", ns)

    out = ok(cp, "-n", ns, "start", "web", "--wait")  # flags before the verb work too
    status = vm_status(cp, ns, "web")
    assert status["state"] == "Running" and status["addresses"]
    assert f"is Running on {status['nodeName']}" in out
    assert status["providerID"] == machine, "the same VM, powered on again"
    pod = vm_pods(cp, ns, "web")[0]["metadata"]["uid"]

    out = ok(cp, "restart", "web", "--namespace", ns, "--wait", "--timeout", "2m")
    assert "Stopped" in out and "is Running" in out
    status = vm_status(cp, ns, "web")
    assert status["state"] == "Running" and status["providerID"] == machine
    pods = vm_pods(cp, ns, "web")
    assert len(pods) == 1 and pods[0]["metadata"]["uid"] != pod, "restart made a new VM pod"

    # Without --wait: the switch is flipped and the command returns.
    out = ok(cp, "stop", "web", "-n", ns)
    assert "stopping (spec.replicas=0)" in out
    assert get(cp, ns, "virtualmachines.vmlet.io", "web")["spec"]["replicas"] == 0
    eventually(lambda: vm_status(cp, ns, "web")["state"] == "Stopped", what="Stopped")


def test_resize(stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    cp = control_plane
    make_vm(cp, ns, "big")
    running_vm(cp, ns, "big")
    out = ok(cp, "resize", "big", "-n", ns, "--cpu", "2", "--memory", "3Gi", "--wait")
    assert "resized to 2 CPU, 3Gi memory" in out
    vm = get(cp, ns, "virtualmachines.vmlet.io", "big")
    assert (vm["spec"]["cpu"], vm["spec"]["memory"]) == (2, "3Gi")
    status = vm["status"]
    assert status["state"] == "Running"
    assert (str(status["cpu"]), status["memory"]) == ("2", "3Gi")
    pod = vm_pods(cp, ns, "big")[0]
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "3Gi"}

    # Memory alone, on a stopped VM: the spec changes, the VM stays Stopped.
    ok(cp, "stop", "big", "-n", ns, "--wait")
    ok(cp, "resize", "big", "-n", ns, "--memory", "2Gi", "--wait")
    vm = get(cp, ns, "virtualmachines.vmlet.io", "big")
    assert (vm["spec"]["cpu"], vm["spec"]["memory"]) == (2, "2Gi")
    assert vm["status"]["state"] == "Stopped" and vm["status"]["memory"] == "2Gi"

    refused = kubectl_vm(cp, "resize", "big", "-n", ns, "--memory", "1Mi")
    assert refused.returncode == 1
    assert "memory must be at least 64Mi" in refused.stderr


def test_migrate(stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    cp = control_plane
    make_vm(cp, ns, "mover")
    source = running_vm(cp, ns, "mover")["nodeName"]
    target = next(n for n in NODES if n != source)

    same = kubectl_vm(cp, "migrate", "mover", "-n", ns, "--to", source)
    assert same.returncode == 1 and f"already runs on {source}" in same.stderr
    nowhere = kubectl_vm(cp, "migrate", "mover", "-n", ns, "--to", "no-such-node")
    assert nowhere.returncode == 1 and 'node "no-such-node" not found' in nowhere.stderr

    out = ok(cp, "migrate", "mover", "-n", ns, "--to", target, "--wait")
    assert f"migrated from {source} to {target}" in out
    migrations = json.loads(cp.kubectl("get", "virtualmachinemigrations.vmlet.io", "-n", ns,
                                       "-o", "json").stdout)["items"]
    assert len(migrations) == 1
    mig = migrations[0]
    assert mig["metadata"]["name"].startswith("mover-")
    assert mig["spec"] == {"vmName": "mover", "targetNode": target}
    assert mig["status"]["state"] == "Succeeded"
    assert (mig["status"]["sourceNode"], mig["status"]["targetNode"]) == (source, target)
    status = vm_status(cp, ns, "mover")
    assert status["state"] == "Running" and status["nodeName"] == target

    # Without --to: anywhere else, which with two nodes is back where it was.
    out = ok(cp, "migrate", "mover", "-n", ns, "--wait")
    assert f"migrated from {target} to {source}" in out
    assert vm_status(cp, ns, "mover")["nodeName"] == source

    ok(cp, "stop", "mover", "-n", ns, "--wait")
    stopped = kubectl_vm(cp, "migrate", "mover", "-n", ns)
    assert stopped.returncode == 1 and "is stopped" in stopped.stderr


def test_backup_restore_and_status(stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    cp = control_plane
    make_vm(cp, ns, "db")
    running_vm(cp, ns, "db")

    out = ok(cp, "backup", "db", "-n", ns, "--name", "db-one", "--wait")
    assert "virtualmachinebackup.vmlet.io/db-one created" in out
    backup = get(cp, ns, "virtualmachinebackups.vmlet.io", "db-one")
    assert backup["spec"] == {"vmName": "db"}
    assert backup["status"]["state"] == "Succeeded"
    snapshot = backup["status"]["snapshotID"]
    assert snapshot and backup["status"]["completionTime"]
    assert f"Succeeded: snapshot {snapshot}" in out

    out = ok(cp, "backup", "db", "-n", ns)  # a generated name, not waited for
    generated = out.split("virtualmachinebackup.vmlet.io/", 1)[1].split()[0]
    assert generated.startswith("db-")
    eventually(lambda: get(cp, ns, "virtualmachinebackups.vmlet.io", generated)
               .get("status", {}).get("state") == "Succeeded", what="second backup Succeeded")

    out = ok(cp, "restore", "db", "-n", ns, "--backup", "db-one", "--wait")
    assert "restored from backup db-one" in out
    restores = json.loads(cp.kubectl("get", "virtualmachinerestores.vmlet.io", "-n", ns,
                                     "-o", "json").stdout)["items"]
    assert len(restores) == 1
    restore = restores[0]
    assert restore["spec"] == {"backupName": "db-one"}
    assert restore["status"]["state"] == "Succeeded" and restore["status"]["completionTime"]
    assert restore["status"]["vmName"] == "db"

    missing = kubectl_vm(cp, "restore", "db", "-n", ns, "--backup", "nope")
    assert missing.returncode == 1
    assert 'VirtualMachineBackup "nope" not found' in missing.stderr
    make_vm(cp, ns, "other", replicas=0)
    wrong = kubectl_vm(cp, "restore", "other", "-n", ns, "--backup", "db-one")
    assert wrong.returncode == 1 and 'a backup of "db", not of "other"' in wrong.stderr

    out = ok(cp, "status", "db", "-n", ns)
    status = vm_status(cp, ns, "db")
    lines = out.splitlines()
    assert "Name:" in lines[0] and lines[0].endswith("db")
    assert any(line.startswith("State:") and line.endswith("Running") for line in lines)
    assert any(line.startswith("Node:") and line.endswith(status["nodeName"]) for line in lines)
    assert any(line.startswith("Addresses:") and status["addresses"][0] in line
               for line in lines)
    assert "Conditions:" in out and "Ready" in out
    backups = out.split("Backups:", 1)[1].split("Events", 1)[0]
    assert "db-one" in backups and snapshot in backups and generated in backups
    assert "Restores:" in out
    events = out.split("Events", 1)[1]
    assert "Running" in events and "Restored" in events


def test_context_namespace_and_flags(stack: Stack, control_plane: ControlPlane, ns: str,
                                     tmp_path: Path) -> None:
    cp = control_plane
    make_vm(cp, ns, "ctx", replicas=0)
    eventually(lambda: vm_status(cp, ns, "ctx").get("state") == "Stopped", what="Stopped")
    # A kubeconfig whose current context defaults to the VM's namespace.
    kubeconfig = tmp_path / "kubeconfig"
    shutil.copy(cp.kubeconfig, kubeconfig)
    cp.kubectl("config", "set-context", "--current", f"--namespace={ns}",
               kubeconfig=kubeconfig)
    done = kubectl_vm(cp, "status", "ctx", kubeconfig=kubeconfig)
    assert done.returncode == 0, done.stderr
    assert f"Namespace:   {ns}" in done.stdout
    missing = kubectl_vm(cp, "status", "nope", kubeconfig=kubeconfig)
    assert f'VirtualMachine "nope" not found in namespace "{ns}"' in missing.stderr
    # --kubeconfig and --context given to the plugin win over KUBECONFIG.
    context = cp.kubectl("config", "current-context", kubeconfig=kubeconfig).stdout.strip()
    done = kubectl_vm(cp, "status", "ctx", f"--kubeconfig={kubeconfig}", "--context", context,
                      kubeconfig=tmp_path / "missing")
    assert done.returncode == 0, done.stderr
    gone = kubectl_vm(cp, "status", "ctx", "--context", "nope", kubeconfig=kubeconfig)
    assert gone.returncode == 1 and "nope" in gone.stderr


def test_wait_times_out_with_the_last_state(stack: Stack, control_plane: ControlPlane,
                                            ns: str) -> None:
    cp = control_plane
    make_vm(cp, ns, "stuck", replicas=0, placement={"nodeName": "no-such-host"})
    done = kubectl_vm(cp, "start", "stuck", "-n", ns, "--wait", "--timeout", "4s")
    assert done.returncode == 1
    assert ("timed out after 4s waiting for virtualmachine.vmlet.io/stuck to be Running; "
            "last seen: Provisioning") in done.stderr
    assert get(cp, ns, "virtualmachines.vmlet.io", "stuck")["spec"]["replicas"] == 1
