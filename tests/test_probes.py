"""Startup, readiness and liveness probes and lifecycle hooks of VM pods, run by the facade as a
kubelet runs them (issue 18).

The pods are bare VM pods on a vSphere provider against vcsim; `GuestStandIn` gives each VM a
real guest: an sshd in a network namespace of its own, at an address of 198.18.0.0/15 the VM
reports as its guest IP (the pod IP). What a probe reaches is made to answer or not by starting
a server in that namespace (`GuestServer`), and an exec probe runs in the guest over SSH, with
the login of the pod's vmlet.io/ssh-secret Secret, on this machine's filesystem.

What is checked is what a kubelet does: a pod is Ready only once the provider says so and its
readiness probe passed; while a startup probe has not passed the container is not started and
readiness is not run; a failing probe posts one Warning Event ``Unhealthy``; EndpointSlices
follow the Ready condition (the real endpointslice controller); a probe ``host`` other than the
pod's IP fails; a passing liveness probe kills nothing (a failing one: tests/test_pod_restarts.py);
postStart runs before the container is started and a failing one kills the VM; a delete runs
preStop and then shuts the guest down within the pod's grace period.

The facade serves no kubelet API here (--kubelet-port=0): probes do not go through it. Needs
root, iproute2, unshare, /usr/sbin/sshd (hack/install-test-deps.sh), vcsim and the control
plane.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmlet_api.names import SSH_SECRET_ANNOTATION
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.guests import SECRET_NAME, GuestStandIn
from vmlet_localenv.processes import stop_process
from vmlet_localenv.stack import Stack, eventually
from vmlet_localenv.tools import binary
from vmlet_localenv.vcsim import VcSim

pytestmark = [pytest.mark.vcsim, pytest.mark.controlplane]

Obj = dict[str, Any]

PROVIDER = "probed"
UNREADY = "containers with unready status: [vm]"
#: How long a VM pod may take to run with its guest's IP (clone, power on, guest start).
RUNNING_TIMEOUT = 180.0
#: How long a probe's verdict may take to show in the pod's status (periods of 1s).
PROBE_TIMEOUT = 45.0


class Clock:
    """Prints what a test reached and when, for the captured output of a slow or failed run."""

    def __init__(self, test: str) -> None:
        self.test = test
        self.start = time.monotonic()

    def __call__(self, what: str) -> None:
        print(f"[{self.test} +{time.monotonic() - self.start:6.1f}s] {what}", flush=True)


# -- vcsim, the guests, the provider and the facade ---------------------------------------------


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, sim: VcSim,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started = time.monotonic()
    s = Stack(control_plane, tmp_path_factory.mktemp("probes-stack"), {PROVIDER: []},
              facade_args=["--kubelet-port=0"], kinds={PROVIDER: "vsphere"}, vcsim=sim)
    try:
        s.start()
        eventually(lambda: len(s.ready_nodes(PROVIDER)) == 1, timeout=90,
                   what="the node Ready")
        print(f"stack up in {time.monotonic() - started:.1f}s", flush=True)
        yield s
    finally:
        s.stop()
        s.print_logs(80)


@pytest.fixture(scope="module")
def ns(control_plane: ControlPlane, stack: Stack, guests: GuestStandIn) -> Iterator[str]:
    # On the stack: its VMs are deleted while the provider still runs.
    name = f"probes-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    guests.apply_secret(control_plane, name)
    yield name
    control_plane.kubectl("delete", "pods", "--all", "-n", name, "--timeout=120s", check=False)
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


# -- pods, their status and Events ----------------------------------------------------------------


def apply(cp: ControlPlane, ns: str, *objs: Obj) -> None:
    cp.kubectl("apply", "-n", ns, "-f", "-",
               input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def probed_pod(stack: Stack, name: str, *, labels: dict[str, str] | None = None,
               **probes: Obj) -> Obj:
    """A bare VM pod on `PROVIDER` whose guest takes the stand-in's login (its SSH Secret),
    with ``probes`` (readinessProbe=..., startupProbe=...) on its container ``vm``."""
    pod: Obj = stack.vm_pod(name, PROVIDER)
    pod["metadata"]["annotations"] = {SSH_SECRET_ANNOTATION: SECRET_NAME}
    pod["metadata"]["labels"] = labels or {}
    pod["spec"]["containers"][0].update(probes)
    return pod


def delete_pod(cp: ControlPlane, ns: str, name: str) -> None:
    cp.kubectl("delete", "pod", name, "-n", ns, "--timeout=120s", "--ignore-not-found",
               check=False)


def get_pod(stack: Stack, ns: str, name: str) -> Obj:
    return dict(stack.kubectl_json("get", "pod", name, "-n", ns))


def conditions(pod: Obj) -> dict[str, Obj]:
    return {c["type"]: c for c in pod.get("status", {}).get("conditions") or ()}


def is_ready(pod: Obj) -> bool:
    return conditions(pod).get("Ready", {}).get("status") == "True"


def container(pod: Obj) -> Obj:
    statuses = pod.get("status", {}).get("containerStatuses") or [{}]
    return dict(statuses[0])


def running_with_ip(stack: Stack, ns: str, name: str) -> tuple[Obj, str]:
    """The pod once it is Running with an IP (its guest's): the provider says it is ready."""
    def running() -> Obj | None:
        pod = get_pod(stack, ns, name)
        status = pod.get("status", {})
        return pod if status.get("phase") == "Running" and status.get("podIP") else None

    pod = eventually(running, timeout=RUNNING_TIMEOUT, interval=0.5,
                     what=f"pod {name} Running with its guest's IP")
    return pod, str(pod["status"]["podIP"])


def ready_pod(stack: Stack, ns: str, name: str, timeout: float = PROBE_TIMEOUT) -> Obj:
    def ready() -> Obj | None:
        pod = get_pod(stack, ns, name)
        return pod if is_ready(pod) else None

    found: Obj = eventually(ready, timeout=timeout, interval=0.3, what=f"pod {name} Ready")
    return found


def assert_ready(pod: Obj) -> None:
    conds = conditions(pod)
    assert conds["Ready"]["status"] == "True", conds
    assert conds["ContainersReady"]["status"] == "True", conds
    cs = container(pod)
    assert cs.get("ready") is True and cs.get("started") is True, cs


def probe_unready(pod: Obj) -> str | None:
    """What is wrong with ``pod`` as a pod its probes hold back (None when nothing): Running with
    an IP, Ready and ContainersReady False as a kubelet words them, its container not ready."""
    status = pod.get("status", {})
    conds = conditions(pod)
    ready, containers = conds.get("Ready", {}), conds.get("ContainersReady", {})
    if status.get("phase") != "Running" or not status.get("podIP"):
        return f"not Running with an IP: {status.get('phase')} {status.get('podIP')!r}"
    if (ready.get("status"), ready.get("reason"), ready.get("message")) != \
            ("False", "ContainersNotReady", UNREADY):
        return f"Ready condition {ready}"
    if containers.get("status") != "False":
        return f"ContainersReady condition {containers}"
    if container(pod).get("ready") is not False:
        return f"container status {container(pod)}"
    return None


def assert_probe_unready(pod: Obj) -> None:
    problem = probe_unready(pod)
    assert problem is None, problem


def holds_unready(stack: Stack, ns: str, name: str, seconds: float) -> Obj:
    """Check `probe_unready` of the pod for ``seconds``; the pod last seen."""
    deadline = time.monotonic() + seconds
    while True:
        pod = get_pod(stack, ns, name)
        assert_probe_unready(pod)
        if time.monotonic() > deadline:
            return pod
        time.sleep(0.5)


def probe_unready_again(stack: Stack, ns: str, name: str) -> Obj:
    def unready() -> Obj | None:
        pod = get_pod(stack, ns, name)
        return pod if probe_unready(pod) is None else None

    found: Obj = eventually(unready, timeout=PROBE_TIMEOUT, interval=0.3,
                            what=f"pod {name} not Ready by its probe")
    return found


def events(stack: Stack, ns: str, name: str) -> list[Obj]:
    items = stack.kubectl_json("get", "events", "-n", ns, "--field-selector",
                               f"involvedObject.name={name}")["items"]
    return list(items)


def unhealthy(stack: Stack, ns: str, name: str) -> list[Obj]:
    """The pod's Warning Events ``Unhealthy``."""
    return [e for e in events(stack, ns, name)
            if e.get("reason") == "Unhealthy" and e.get("type") == "Warning"]


def first_unhealthy(stack: Stack, ns: str, name: str, kind: str = "Readiness") -> Obj:
    """The pod's first Unhealthy Event of ``kind``, once posted."""
    found: list[Obj] = eventually(
        lambda: [e for e in unhealthy(stack, ns, name)
                 if e["message"].startswith(f"{kind} probe failed:")],
        timeout=PROBE_TIMEOUT, interval=0.5, what=f"an Unhealthy Event ({kind}) for {name}")
    return found[0]


def assert_one_unhealthy(stack: Stack, ns: str, name: str, kind: str = "Readiness") -> Obj:
    """Exactly one Unhealthy Event, of ``kind``, posted once (count 1)."""
    found = unhealthy(stack, ns, name)
    assert len(found) == 1 and found[0].get("count", 1) == 1, \
        [(e["message"], e.get("count")) for e in found]
    assert found[0]["message"].startswith(f"{kind} probe failed:"), found[0]["message"]
    return found[0]


def endpoint(stack: Stack, ns: str, service: str, ip: str) -> Obj | None:
    """The endpoint of ``service``'s EndpointSlices for ``ip``, if any."""
    items = stack.kubectl_json("get", "endpointslices", "-n", ns, "-l",
                               f"kubernetes.io/service-name={service}")["items"]
    found = [e for s in items for e in s.get("endpoints") or [] if ip in e.get("addresses", [])]
    return found[0] if found else None


def endpoint_ready(stack: Stack, ns: str, service: str, ip: str, ready: bool) -> Obj:
    def check() -> Obj | None:
        found = endpoint(stack, ns, service, ip)
        return found if found is not None and \
            found.get("conditions", {}).get("ready") is ready else None

    result: Obj = eventually(check, timeout=PROBE_TIMEOUT, interval=0.5,
                             what=f"the endpoint of {service} for {ip} with ready={ready}")
    return result


# -- a server in a guest ------------------------------------------------------------------------


def guest_netns(guests: GuestStandIn, ip: str) -> str:
    """The network namespace of the guest at ``ip``."""
    found = [g.netns.name for g in guests.guests().values() if g.netns.ip == ip]
    assert len(found) == 1, f"no one guest at {ip}: {guests.guests()}"
    return str(found[0])


def listening(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=1).close()
    except OSError:
        return False
    return True


class GuestServer:
    """Python's http.server on ``port`` inside the guest at ``ip`` (its network namespace),
    serving ``directory``: GET /<file> answers 200, anything missing 404."""

    def __init__(self, netns: str, ip: str, port: int, directory: Path) -> None:
        self.netns, self.ip, self.port, self.directory = netns, ip, port, directory
        self.log = directory.parent / f"http-{port}-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> GuestServer:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, "-m", "http.server",
                 str(self.port), "--bind", "0.0.0.0", "--directory", str(self.directory)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        process = self.process
        eventually(lambda: listening(self.ip, self.port) or process.poll() is not None,
                   timeout=30, what=f"the guest's server on {self.ip}:{self.port}")
        if process.poll() is not None:
            raise RuntimeError(f"the guest's server exited: {self.log.read_text()}")
        return self

    def stop(self) -> None:
        """Stop the server (again: nothing) and wait until its port refuses connections."""
        process, self.process = self.process, None
        if process is None:
            return
        stop_process(process)
        eventually(lambda: not listening(self.ip, self.port), timeout=30,
                   what=f"{self.ip}:{self.port} closed")

    def requests(self) -> str:
        """The server's log: one line per request it answered."""
        return self.log.read_text(errors="replace")


def serving_dir(tmp_path: Path) -> Path:
    d = tmp_path / "www"
    d.mkdir()
    (d / "ok").write_text("ok\n")
    return d


# -- a watch on one pod -------------------------------------------------------------------------


class PodWatch:
    """Every state of pod ``name`` the apiserver reports from now on (kubectl get -w), so a
    state between two polls is seen too."""

    def __init__(self, cp: ControlPlane, ns: str, name: str, out: Path) -> None:
        self.out = out
        with out.open("wb") as sink:
            self.process = subprocess.Popen(
                [str(binary("kubectl")), f"--kubeconfig={cp.kubeconfig}", "get", "pods",
                 "-n", ns, "--field-selector", f"metadata.name={name}", "-w", "-o", "json"],
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.DEVNULL)

    def seen(self) -> list[Obj]:
        text, decoder, at = self.out.read_text(errors="replace"), json.JSONDecoder(), 0
        found: list[Obj] = []
        while True:
            while at < len(text) and text[at].isspace():
                at += 1
            if at >= len(text):
                return found
            try:
                obj, at = decoder.raw_decode(text, at)
            except json.JSONDecodeError:
                return found  # a document still being written
            items = obj.get("items", []) if obj.get("kind") == "List" else [obj]
            found.extend(i for i in items if i.get("kind", "Pod") == "Pod")

    def stop(self) -> list[Obj]:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.seen()


# -- the tests -------------------------------------------------------------------------------------


def test_tcp_readiness_turns_ready_once_the_guest_answers(
        stack: Stack, control_plane: ControlPlane, ns: str, tmp_path: Path) -> None:
    """readinessProbe tcpSocket on the guest's sshd: Ready once the guest answers, never before
    it has an IP; a passing livenessProbe kills nothing, and no probe is named as not honoured."""
    clock = Clock("tcp")
    name = "tcp"
    watch = PodWatch(control_plane, ns, name, tmp_path / "watch.json")
    try:
        apply(control_plane, ns, probed_pod(
            stack, name,
            readinessProbe={"tcpSocket": {"port": 22}, "periodSeconds": 1},
            livenessProbe={"tcpSocket": {"port": 22}, "periodSeconds": 1, "failureThreshold": 1}))
        clock("pod applied")
        _, ip = running_with_ip(stack, ns, name)
        clock(f"Running at {ip}")
        pod = ready_pod(stack, ns, name)
        clock("Ready")
        assert_ready(pod)
        assert pod["status"]["podIP"] == ip

        # Every state on the way: Ready (and the container ready) only with the guest's IP.
        seen = watch.seen()
        assert seen, "the watch saw the pod"
        clock("states seen: " + ", ".join(
            f"{st.get('status', {}).get('phase')}/ip={bool(st.get('status', {}).get('podIP'))}"
            f"/ready={is_ready(st)}" for st in seen))
        for state in seen:
            status = state.get("status", {})
            if not status.get("podIP"):
                assert not is_ready(state), status
                assert container(state).get("ready") is not True, status
        assert any(is_ready(state) for state in seen)

        # The passing livenessProbe kills nothing: the pod stays Ready, nothing restarts.
        time.sleep(5)
        pod = get_pod(stack, ns, name)
        assert_ready(pod)
        assert container(pod).get("restartCount") == 0
        assert unhealthy(stack, ns, name) == []
        clock("stayed Ready with a passing livenessProbe")
        assert not [e for e in events(stack, ns, name)
                    if e.get("reason") in ("FieldsNotHonoured", "Killing")]
    finally:
        watch.stop()
        delete_pod(control_plane, ns, name)
        clock("deleted")


def test_http_readiness_follows_the_guests_server_and_the_endpointslice_follows(
        stack: Stack, control_plane: ControlPlane, guests: GuestStandIn, ns: str,
        tmp_path: Path) -> None:
    clock = Clock("http")
    name, service, app = "web", "web", f"web-{uuid.uuid4().hex[:6]}"
    server: GuestServer | None = None
    try:
        apply(control_plane, ns,
              {"apiVersion": "v1", "kind": "Service", "metadata": {"name": service},
               "spec": {"selector": {"app": app}, "ports": [{"port": 8080}]}},
              probed_pod(stack, name, labels={"app": app}, readinessProbe={
                  "httpGet": {"port": 8080, "path": "/ok"}, "periodSeconds": 1,
                  "failureThreshold": 1}))
        clock("pod and Service applied")
        _, ip = running_with_ip(stack, ns, name)
        clock(f"Running at {ip}")

        # Nothing serves 8080 in the guest: not Ready, one Unhealthy Event, endpoint not ready.
        event = first_unhealthy(stack, ns, name)
        clock(f"Unhealthy: {event['message']}")
        # No check counts before the VM has an IP: the Event says what the guest answered.
        assert event["message"].startswith(
            f'Readiness probe failed: Get "http://{ip}:8080/ok": '), event["message"]
        pod = holds_unready(stack, ns, name, seconds=4)  # four more periods
        assert container(pod).get("started") is True, container(pod)  # no startup probe
        assert_one_unhealthy(stack, ns, name)
        assert event["source"].get("component") == "vmlet" or \
            event.get("reportingComponent") == "vmlet", event
        endpoint_ready(stack, ns, service, ip, ready=False)
        clock("endpoint listed, not ready")

        # A server answers /ok with 200: Ready, the endpoint ready.
        server = GuestServer(guest_netns(guests, ip), ip, 8080, serving_dir(tmp_path)).start()
        clock("server started in the guest")
        assert_ready(ready_pod(stack, ns, name))
        clock("Ready")
        endpoint_ready(stack, ns, service, ip, ready=True)
        clock("endpoint ready")
        assert re.search(r'"GET /ok HTTP/1\.1" 200', server.requests()), server.requests()

        # The server gone: not Ready again, the endpoint not ready.
        server.stop()
        clock("server stopped")
        probe_unready_again(stack, ns, name)
        clock("not Ready again")
        endpoint_ready(stack, ns, service, ip, ready=False)
        clock("endpoint not ready again")
    finally:
        if server is not None:
            server.stop()
        delete_pod(control_plane, ns, name)
        control_plane.kubectl("delete", "service", service, "-n", ns, "--ignore-not-found",
                              check=False)
        clock("deleted")


def test_exec_readiness_runs_in_the_guest(stack: Stack, control_plane: ControlPlane,
                                          ns: str) -> None:
    clock = Clock("exec")
    name = "exec"
    marker = Path(f"/tmp/vmlet-probe-{uuid.uuid4().hex}")
    try:
        apply(control_plane, ns, probed_pod(stack, name, readinessProbe={
            "exec": {"command": ["test", "-e", str(marker)]}, "periodSeconds": 1,
            "failureThreshold": 1, "timeoutSeconds": 10}))
        clock("pod applied")
        _, ip = running_with_ip(stack, ns, name)
        clock(f"Running at {ip}")
        event = first_unhealthy(stack, ns, name)
        clock(f"Unhealthy: {event['message']}")
        assert "has no IP yet" not in event["message"], event["message"]
        holds_unready(stack, ns, name, seconds=3)
        assert_one_unhealthy(stack, ns, name)

        # The guest's filesystem is this machine's: the file made, the command exits 0.
        marker.write_text("here\n")
        clock("file made")
        assert_ready(ready_pod(stack, ns, name))
        clock("Ready")

        marker.unlink()
        clock("file removed")
        probe_unready_again(stack, ns, name)
        clock("not Ready again")
    finally:
        marker.unlink(missing_ok=True)
        delete_pod(control_plane, ns, name)
        clock("deleted")


def test_startup_probe_holds_readiness_back(stack: Stack, control_plane: ControlPlane,
                                            guests: GuestStandIn, ns: str,
                                            tmp_path: Path) -> None:
    clock = Clock("startup")
    name = "startup"
    server: GuestServer | None = None
    try:
        apply(control_plane, ns, probed_pod(
            stack, name,
            startupProbe={"tcpSocket": {"port": 8081}, "periodSeconds": 1,
                          "failureThreshold": 100},
            readinessProbe={"tcpSocket": {"port": 22}, "periodSeconds": 1}))
        clock("pod applied")
        _, ip = running_with_ip(stack, ns, name)
        clock(f"Running at {ip}")

        # 8081 is closed: not started, not Ready, though the readiness probe would pass.
        pod = holds_unready(stack, ns, name, seconds=6)
        assert container(pod).get("started") is False, container(pod)
        assert unhealthy(stack, ns, name) == []  # 100 failures are far off
        clock("held back while the startup probe fails")

        # The startup probe passes: started, then the readiness probe makes the pod Ready.
        server = GuestServer(guest_netns(guests, ip), ip, 8081, serving_dir(tmp_path)).start()
        clock("8081 open in the guest")
        assert_ready(ready_pod(stack, ns, name))
        clock("started and Ready")
    finally:
        if server is not None:
            server.stop()
        delete_pod(control_plane, ns, name)
        clock("deleted")


def test_a_probe_host_other_than_the_pods_ip_fails(stack: Stack, control_plane: ControlPlane,
                                                   ns: str) -> None:
    """tcpSocket on the guest's sshd, which answers at the pod's IP, but with host 127.0.0.1:
    the probe fails, saying vmlet probes only the pod's IP; the pod never becomes Ready."""
    clock = Clock("host")
    name = "elsewhere"
    try:
        apply(control_plane, ns, probed_pod(stack, name, readinessProbe={
            "tcpSocket": {"port": 22, "host": "127.0.0.1"}, "periodSeconds": 1,
            "failureThreshold": 1}))
        clock("pod applied")
        _, ip = running_with_ip(stack, ns, name)
        clock(f"Running at {ip}")
        event = first_unhealthy(stack, ns, name)
        clock(f"Unhealthy: {event['message']}")
        assert event["message"] == ("Readiness probe failed: vmlet reaches only the pod's own "
                                    f"IP ({ip}), not host 127.0.0.1"), event["message"]
        holds_unready(stack, ns, name, seconds=5)
        assert_one_unhealthy(stack, ns, name)
        clock("never Ready")
    finally:
        delete_pod(control_plane, ns, name)
        clock("deleted")


# -- lifecycle hooks (issue 18 item 5) ------------------------------------------------------------


def test_hooks_run_in_the_guest_and_a_delete_shuts_the_guest_down_within_its_grace(
        stack: Stack, control_plane: ControlPlane, ns: str, tmp_path: Path) -> None:
    """postStart runs in the guest once the VM runs, and the container is started only after
    it; deleting the pod runs preStop in the guest (the pod stays Terminating meanwhile), then
    posts Killing and shuts the guest down (StopPod) before the VM is destroyed."""
    clock = Clock("hooks")
    name = "hooked"
    marks = tmp_path / "marks"
    marks.mkdir()
    pod = probed_pod(stack, name, lifecycle={
        "postStart": {"exec": {"command": ["sh", "-c", f"date +%s.%N > {marks}/post-start"]}},
        "preStop": {"exec": {"command": [
            "sh", "-c", f"sleep 3 && date +%s.%N > {marks}/pre-stop"]}}})
    pod["spec"]["terminationGracePeriodSeconds"] = 40
    try:
        apply(control_plane, ns, pod)
        clock("pod applied")
        running_with_ip(stack, ns, name)
        started = eventually(lambda: container(get_pod(stack, ns, name)).get("started"),
                             timeout=PROBE_TIMEOUT, interval=0.3, what="container started")
        assert started is True and (marks / "post-start").exists()
        clock("postStart ran; container started")

        asked = time.time()
        control_plane.kubectl("delete", "pod", name, "-n", ns, "--wait=false")
        deleting = get_pod(stack, ns, name)
        assert deleting["metadata"]["deletionGracePeriodSeconds"] == 40
        eventually(lambda: (marks / "pre-stop").exists(), timeout=30, interval=0.2,
                   what="the preStop hook's mark")
        hook_done = float((marks / "pre-stop").read_text())
        assert hook_done - asked >= 3.0  # the hook ran its sleep through
        clock(f"preStop ran {hook_done - asked:.1f}s after the delete")
        eventually(lambda: not stack.kubectl_json("get", "pods", "-n", ns, "--field-selector",
                                                  f"metadata.name={name}")["items"],
                   timeout=90, interval=0.5, what="the pod gone")
        clock("pod gone")
        reasons = [(e["reason"], e["message"]) for e in events(stack, ns, name)]
        assert ("Killing", "Stopping container vm") in reasons, reasons
        assert not [r for r in reasons if r[0] in ("FailedPreStopHook", "FailedKillPod")], reasons
    finally:
        delete_pod(control_plane, ns, name)
        clock("deleted")


def test_a_failed_post_start_kills_the_vm_and_restart_policy_never_ends_the_pod(
        stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    """A postStart hook that exits 1: FailedPostStartHook, Killing, and the VM stopped through
    StopPod (exit code 137); restartPolicy Never then ends the pod Failed."""
    clock = Clock("post-start fails")
    name = "badhook"
    pod = probed_pod(stack, name, lifecycle={"postStart": {"exec": {"command": ["false"]}}})
    pod["spec"]["restartPolicy"] = "Never"
    pod["spec"]["terminationGracePeriodSeconds"] = 5
    try:
        apply(control_plane, ns, pod)
        clock("pod applied")
        ended = eventually(lambda: (p := get_pod(stack, ns, name))["status"].get("phase")
                           == "Failed" and p, timeout=RUNNING_TIMEOUT, interval=0.5,
                           what="pod Failed")
        clock("Failed")
        terminated = container(ended)["state"]["terminated"]
        assert terminated["exitCode"] == 137, terminated
        reasons = {e["reason"]: e["message"] for e in events(stack, ns, name)}
        assert reasons["FailedPostStartHook"].startswith(
            "Exec lifecycle hook (['false']) for Container \"vm\""), reasons
        assert reasons["Killing"] == "Container vm failed its postStart hook, will be restarted"
    finally:
        delete_pod(control_plane, ns, name)
        clock("deleted")
