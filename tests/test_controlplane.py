"""The local control plane is the real thing: apiserver, controller-manager, scheduler, RBAC."""

from __future__ import annotations

import ipaddress
import json
import os
import time
import uuid
from pathlib import Path

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.tools import K8S_VERSION


def _wait(check, timeout: float = 60.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def _ns(cp: ControlPlane) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cp.kubectl("create", "namespace", name)
    return name


def test_readyz_and_server_version(control_plane: ControlPlane) -> None:
    assert control_plane.get("/readyz") == "ok"
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == K8S_VERSION


def test_authorization_mode_and_admission(control_plane: ControlPlane) -> None:
    argv = next(p.argv for p in control_plane.processes if p.name == "kube-apiserver")
    assert "--authorization-mode=Node,RBAC" in argv
    assert "--enable-admission-plugins=NodeRestriction" in argv
    # Every socket the control plane listens on is on loopback.
    addresses = [a for p in control_plane.processes if p.pid for a in _listening(p.pid)]
    assert len(addresses) >= 4
    assert all(a == "127.0.0.1" for a in addresses), addresses


def test_deployment_gets_replicaset_and_pods(control_plane: ControlPlane) -> None:
    ns = _ns(control_plane)
    control_plane.kubectl("create", "deployment", "web", "--image=nginx", "--replicas=2", "-n", ns)

    def pods() -> list[dict]:  # type: ignore[type-arg]
        out = control_plane.kubectl("get", "pods", "-n", ns, "-l", "app=web", "-o", "json").stdout
        return list(json.loads(out)["items"])

    items = _wait(lambda: len(pods()) == 2 and pods(), what="2 pods from the deployment")
    rs = json.loads(control_plane.kubectl("get", "rs", "-n", ns, "-o", "json").stdout)["items"]
    assert len(rs) == 1 and rs[0]["metadata"]["ownerReferences"][0]["name"] == "web"
    owners = {p["metadata"]["ownerReferences"][0]["name"] for p in items}
    assert owners == {rs[0]["metadata"]["name"]}


def test_scheduler_binds_pod_to_a_ready_node(control_plane: ControlPlane) -> None:
    ns = _ns(control_plane)
    node = f"bare-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "labels": {"vmlet.io/test": node}},
    }))
    status = {"status": {
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "10"},
        "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "test node", "lastHeartbeatTime": _now(),
                        "lastTransitionTime": _now()}],
    }}
    control_plane.kubectl("patch", "node", node, "--subresource=status", "--type=merge",
                          "-p", json.dumps(status))
    # The node lifecycle controller may taint the new node not-ready for a moment: tolerate it.
    control_plane.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"nodeSelector": {"vmlet.io/test": node},
                 "tolerations": [{"operator": "Exists"}],
                 "containers": [{"name": "c", "image": "busybox"}]},
    }))
    bound = _wait(lambda: control_plane.kubectl(
        "get", "pod", "p", "-n", ns, "-o", "jsonpath={.spec.nodeName}").stdout,
        what="binding by kube-scheduler")
    assert bound == node
    events = control_plane.kubectl("get", "events", "-n", ns, "-o", "json").stdout
    assert any(e["reason"] == "Scheduled" and e.get("reportingComponent", e["source"].get(
        "component")) in ("default-scheduler", "kube-scheduler")
        for e in json.loads(events)["items"])
    control_plane.kubectl("delete", "node", node)


def test_rbac_denies_unprivileged_service_account(control_plane: ControlPlane) -> None:
    ns = _ns(control_plane)
    control_plane.kubectl("create", "serviceaccount", "nobody", "-n", ns)
    token = control_plane.kubectl("create", "token", "nobody", "-n", ns).stdout.strip()
    kubeconfig = _token_kubeconfig(control_plane, token)
    denied = control_plane.kubectl("get", "pods", "-n", "kube-system", check=False,
                                   kubeconfig=kubeconfig)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    assert f"system:serviceaccount:{ns}:nobody" in denied.stderr
    # The same token is authenticated: whoami works, so the denial is RBAC's.
    who = control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig)
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == \
        f"system:serviceaccount:{ns}:nobody"


def _token_kubeconfig(cp: ControlPlane, token: str):  # type: ignore[no-untyped-def]
    from vmlet_localenv.kubeconfig import write_kubeconfig

    return write_kubeconfig(cp.dir / f"token-{uuid.uuid4().hex[:6]}.kubeconfig",
                            server=cp.server, ca=cp.pki.ca.cert, token=token)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _listening(pid: int) -> list[str]:
    """The IPv4/IPv6 addresses process ``pid`` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(_decode(fields[1].split(":")[0]))
    return found


def _decode(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return ".".join(str(b) for b in reversed(raw))
    return str(ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))
