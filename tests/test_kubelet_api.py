"""The facade's kubelet HTTPS API through the real apiserver, with real clients.

kubectl (logs, exec over WebSocket and over SPDY, attach, port-forward, get --raw on the node
proxy) and the Python kubernetes client talk to the apiserver, which talks to the facade the way
it talks to any kubelet: over HTTPS with its kubelet-client certificate, checking the facade's
serving certificate (issued through a kubelet-serving CSR that the test approves, as an operator
would) against the cluster CA. The memory provider answers behind the facade.

The apiserver will not proxy nodes/proxy to a loopback address, so the facade's kubelet listener
lives in a network namespace this test makes (`vmlet_localenv.netns`: a veth pair with a
198.18.0.0/15 benchmarking address), and the nodes advertise that address; all traffic stays on
this machine.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.netns import Netns, NetnsUnavailable, namespaces
from vmlet_localenv.stack import (
    KUBELET_PORT,
    Stack,
    eventually,
    kubelet_api_args,
    metric_total,
)
from vmlet_localenv.terminal import SPDY, WEBSOCKET, kubectl, kubectl_pty, read_until

pytestmark = pytest.mark.controlplane

PROVIDER = "kapi"


# -- a test host in a network namespace ------------------------------------------------------


@pytest.fixture(scope="module")
def test_host() -> Iterator[Netns]:
    try:
        with namespaces("vmlet-kapi") as (host,):
            yield host
    except NetnsUnavailable as err:
        pytest.skip(str(err))


# -- the stack ---------------------------------------------------------------------------------


def server_context(cp: ControlPlane) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cp.pki.ca.cert))


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, test_host: Netns,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(control_plane, tmp_path_factory.mktemp("kubeletapi"),
              {PROVIDER: ["--nodes", "2"]},
              facade_args=kubelet_api_args(control_plane, test_host, KUBELET_PORT)).start()
    try:
        eventually(lambda: len(s.ready_nodes(PROVIDER)) == 2, what="nodes Ready")
        s.wait_kubelet_api(test_host.ip, KUBELET_PORT)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def ns(control_plane: ControlPlane) -> str:
    name = f"kapi-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    return name


def running(stack: Stack, ns: str, name: str) -> dict[str, Any] | None:
    pod: dict[str, Any] = stack.kubectl_json("get", "pod", name, "-n", ns)
    return pod if pod["status"].get("phase") == "Running" else None


@pytest.fixture(scope="module")
def vm(stack: Stack, control_plane: ControlPlane, ns: str) -> dict[str, Any]:
    control_plane.kubectl("apply", "-n", ns, "-f", "-",
                          input=json.dumps(stack.vm_pod("vm", PROVIDER)))
    pod = eventually(lambda: running(stack, ns, "vm"), what="pod Running")
    assert pod is not None
    return pod


def open_provider_streams(stack: Stack, method: str) -> float:
    """Streams of ``method`` the provider started and has not finished."""
    return stack.provider_open_streams(PROVIDER, method)


def started_provider_streams(stack: Stack, method: str) -> float:
    return float(stack.provider_calls(PROVIDER, method))


def facade_sessions(stack: Stack, kind: str) -> float:
    assert stack.facade is not None
    return metric_total(stack.facade.metrics(), "vmlet_facade_kubelet_api_sessions", kind=kind)


def upgrades(stack: Stack, endpoint: str, transport: str) -> dict[str, float]:
    """How often the facade switched ``endpoint`` to ``transport``, by negotiated protocol."""
    assert stack.facade is not None
    out: dict[str, float] = {}
    pattern = re.compile(r'^vmlet_facade_kubelet_api_upgrades_total\{(.*)\} (\S+)$')
    for line in stack.facade.metrics().splitlines():
        found = pattern.match(line)
        if not found:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1)))
        if labels.get("endpoint") == endpoint and labels.get("transport") == transport:
            out[labels["protocol"]] = out.get(labels["protocol"], 0.0) + float(found.group(2))
    return out


def grew(before: dict[str, float], after: dict[str, float]) -> set[str]:
    return {k for k, v in after.items() if v > before.get(k, 0.0)}


def nothing_left_open(stack: Stack, method: str, kind: str) -> bool:
    return open_provider_streams(stack, method) == 0 and facade_sessions(stack, kind) == 0


# -- the serving certificate -------------------------------------------------------------------


def test_serving_certificate_comes_from_an_approved_csr(stack: Stack, control_plane: ControlPlane,
                                                         test_host: Netns) -> None:
    with socket.create_connection((test_host.ip, KUBELET_PORT), timeout=5) as raw, \
            server_context(control_plane).wrap_socket(raw, server_hostname=test_host.ip) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value \
        == "system:nodes"
    assert str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value) \
        .startswith("system:node:")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert test_host.ip in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert {f"{PROVIDER}-0", f"{PROVIDER}-1"} <= set(san.get_values_for_type(x509.DNSName))
    for node in stack.nodes(PROVIDER):
        assert {"type": "InternalIP", "address": test_host.ip} in node["status"]["addresses"]
        assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == KUBELET_PORT


# -- logs ---------------------------------------------------------------------------------------


def test_logs(stack: Stack, control_plane: ControlPlane, ns: str, vm: dict[str, Any]) -> None:
    out = kubectl(control_plane, "logs", "-n", ns, "vm")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any("powered on" in line for line in lines), lines
    tail = kubectl(control_plane, "logs", "-n", ns, "vm", "--tail=1").stdout.splitlines()
    assert tail == lines[-1:]
    stamped = kubectl(control_plane, "logs", "-n", ns, "vm", "--timestamps").stdout.splitlines()
    assert len(stamped) == len(lines)
    stamp, _, rest = stamped[0].partition(" ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", stamp) and rest == lines[0]
    limited = kubectl(control_plane, "logs", "-n", ns, "vm", "--limit-bytes=10").stdout
    assert limited == out.stdout[:10]
    since = kubectl(control_plane, "logs", "-n", ns, "vm", "--since=1h").stdout
    assert since == out.stdout
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert kubectl(control_plane, "logs", "-n", ns, "vm", f"--since-time={future}").stdout == ""
    previous = kubectl(control_plane, "logs", "-n", ns, "vm", "--previous")
    assert previous.returncode != 0  # as the kubelet answers a container never restarted
    assert 'previous terminated container "vm" in pod "vm" not found' in previous.stderr


def test_logs_follow_stops_after_n_lines(stack: Stack, control_plane: ControlPlane, ns: str,
                                         vm: dict[str, Any]) -> None:
    before = started_provider_streams(stack, "GetContainerLogs")
    proc = subprocess.Popen(["kubectl", f"--kubeconfig={control_plane.kubeconfig}", "logs",
                             "-f", "-n", ns, "vm"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = [proc.stdout.readline() for _ in range(2)]
        assert all(line.endswith("\n") for line in first), first
        assert proc.poll() is None, "a followed log stays open"
        assert open_provider_streams(stack, "GetContainerLogs") >= 1
    finally:
        proc.kill()
        proc.wait()
    assert started_provider_streams(stack, "GetContainerLogs") > before
    eventually(lambda: nothing_left_open(stack, "GetContainerLogs", "logs"), timeout=30,
               what="the followed log's provider stream closed after the client left")


# -- exec ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", [WEBSOCKET, SPDY], ids=["websocket", "spdy"])
def test_exec(stack: Stack, control_plane: ControlPlane, ns: str, vm: dict[str, Any],
              transport: dict[str, str]) -> None:
    # kubectl speaks v5 either way; over WebSocket the apiserver translates it to SPDY for the
    # kubelet (TranslateStreamCloseWebsocketRequests), over SPDY it passes the upgrade through.
    seen = upgrades(stack, "exec", "spdy")
    echo = kubectl(control_plane, "exec", "-n", ns, "vm", "--", "echo", "hello", "vm",
                   env=transport)
    assert (echo.returncode, echo.stdout) == (0, "hello vm\n"), echo.stderr
    assert kubectl(control_plane, "exec", "-n", ns, "vm", "--", "hostname",
                   env=transport).stdout == "vm\n"
    failed = kubectl(control_plane, "exec", "-n", ns, "vm", "--", "sh", "-c", "exit 3",
                     env=transport)
    assert failed.returncode == 3, failed.stderr
    missing = kubectl(control_plane, "exec", "-n", ns, "vm", "--", "nosuchcommand",
                      env=transport)
    assert missing.returncode == 127 and "command not found" in missing.stderr
    cat = kubectl(control_plane, "exec", "-i", "-n", ns, "vm", "--", "cat",
                  input="line one\nline two\n", env=transport)
    assert (cat.returncode, cat.stdout) == (0, "line one\nline two\n"), cat.stderr
    assert grew(seen, upgrades(stack, "exec", "spdy")) == {"v5.channel.k8s.io"}
    eventually(lambda: nothing_left_open(stack, "Exec", "exec"), timeout=30,
               what="no exec stream left open")


@pytest.mark.parametrize("transport", [WEBSOCKET, SPDY], ids=["websocket", "spdy"])
def test_exec_with_a_terminal(stack: Stack, control_plane: ControlPlane, ns: str,
                              vm: dict[str, Any], transport: dict[str, str]) -> None:
    proc, master = kubectl_pty(control_plane, ["exec", "-it", "-n", ns, "vm", "--", "sh", "-c",
                                                "exit 4"], transport)
    try:
        assert proc.wait(timeout=60) == 4
    finally:
        os.close(master)
    proc, master = kubectl_pty(control_plane, ["exec", "-it", "-n", ns, "vm", "--", "cat"],
                                transport)
    try:
        time.sleep(1.0)  # kubectl has put the terminal in raw mode and opened the session
        os.write(master, b"typed on a tty\r")
        assert b"typed on a tty" in read_until(master, b"typed on a tty")
        assert open_provider_streams(stack, "Exec") == 1
        # Cut the session off midway, as a closed laptop would.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        os.close(master)
    eventually(lambda: nothing_left_open(stack, "Exec", "exec"), timeout=30,
               what="the cut-off exec's provider stream closed")


def test_exec_cut_off_midway_leaves_nothing_open(stack: Stack, control_plane: ControlPlane,
                                                 ns: str, vm: dict[str, Any]) -> None:
    proc = subprocess.Popen(["kubectl", f"--kubeconfig={control_plane.kubeconfig}", "exec", "-i",
                             "-n", ns, "vm", "--", "cat"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"still here\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"still here\n"
        assert open_provider_streams(stack, "Exec") == 1
        assert facade_sessions(stack, "exec") == 1
    finally:
        proc.kill()
        proc.wait()
    eventually(lambda: nothing_left_open(stack, "Exec", "exec"), timeout=30,
               what="the cut-off exec's provider stream closed")


# -- attach --------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", [WEBSOCKET, SPDY], ids=["websocket", "spdy"])
def test_attach(stack: Stack, control_plane: ControlPlane, ns: str, vm: dict[str, Any],
                transport: dict[str, str]) -> None:
    out = kubectl(control_plane, "attach", "-i", "-n", ns, "vm", input="to the console\n",
                  env=transport)
    assert out.returncode == 0, out.stderr
    assert "to the console\n" in out.stdout
    eventually(lambda: nothing_left_open(stack, "Attach", "attach"), timeout=30,
               what="no attach stream left open")


# -- port-forward --------------------------------------------------------------------------------


def _echo_through(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
    return got


@pytest.mark.parametrize("transport", [WEBSOCKET, SPDY], ids=["websocket", "spdy"])
def test_port_forward(stack: Stack, control_plane: ControlPlane, ns: str, vm: dict[str, Any],
                      transport: dict[str, str]) -> None:
    # Over WebSocket kubectl tunnels SPDY frames, which the apiserver hands to the kubelet as
    # SPDY (PortForwardWebsockets): the facade sees portforward.k8s.io over SPDY either way.
    seen = upgrades(stack, "portforward", "spdy")
    proc = subprocess.Popen(["kubectl", f"--kubeconfig={control_plane.kubeconfig}",
                             "port-forward", "-n", ns, "pod/vm", ":8080",
                             "--address=127.0.0.1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **transport})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"127\.0\.0\.1:(\d+) -> 8080", line)
        assert found, line
        local = int(found.group(1))
        assert _echo_through(local, b"hello through the tunnel\n") \
            == b"hello through the tunnel\n"
        big = os.urandom(256 * 1024)
        assert _echo_through(local, big) == big
        assert _echo_through(local, b"a second connection") == b"a second connection"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert grew(seen, upgrades(stack, "portforward", "spdy")) == {"portforward.k8s.io"}
    eventually(lambda: nothing_left_open(stack, "PortForward", "portforward"), timeout=30,
               what="no port-forward stream left open")


# -- stats and node endpoints through the node proxy --------------------------------------------


def test_stats_summary_through_the_node_proxy(stack: Stack, control_plane: ControlPlane,
                                              ns: str, vm: dict[str, Any]) -> None:
    node = vm["spec"]["nodeName"]
    out = kubectl(control_plane, "get", "--raw", f"/api/v1/nodes/{node}/proxy/stats/summary")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["node"]["nodeName"] == node
    assert doc["node"]["cpu"]["usageNanoCores"] > 0
    assert doc["node"]["memory"]["workingSetBytes"] > 0
    pods = {(p["podRef"]["namespace"], p["podRef"]["name"]): p for p in doc["pods"]}
    mine = pods[(ns, "vm")]
    assert mine["podRef"]["uid"] == vm["metadata"]["uid"]
    assert mine["containers"][0]["name"] == "vm"
    assert mine["cpu"]["usageNanoCores"] > 0 and mine["memory"]["workingSetBytes"] > 0
    other = next(n for n in (f"{PROVIDER}-0", f"{PROVIDER}-1") if n != node)
    elsewhere = json.loads(kubectl(control_plane, "get", "--raw",
                                   f"/api/v1/nodes/{other}/proxy/stats/summary").stdout)
    assert elsewhere["node"]["nodeName"] == other
    assert (ns, "vm") not in {(p["podRef"]["namespace"], p["podRef"]["name"])
                              for p in elsewhere["pods"]}


def test_resource_metrics_and_pods_through_the_node_proxy(stack: Stack,
                                                          control_plane: ControlPlane, ns: str,
                                                          vm: dict[str, Any]) -> None:
    node = vm["spec"]["nodeName"]
    text = kubectl(control_plane, "get", "--raw",
                   f"/api/v1/nodes/{node}/proxy/metrics/resource").stdout
    assert re.search(r"^node_cpu_usage_seconds_total [0-9.e+]+ \d+$", text, re.M), text
    assert re.search(r"^node_memory_working_set_bytes \d+ \d+$", text, re.M)
    assert f'container_cpu_usage_seconds_total{{container="vm",namespace="{ns}",pod="vm"}}' \
        in text
    assert f'pod_memory_working_set_bytes{{namespace="{ns}",pod="vm"}}' in text
    pods = json.loads(kubectl(control_plane, "get", "--raw",
                              f"/api/v1/nodes/{node}/proxy/pods").stdout)
    assert pods["kind"] == "PodList"
    assert (ns, "vm") in {(p["metadata"]["namespace"], p["metadata"]["name"])
                          for p in pods["items"]}
    running_pods = json.loads(kubectl(control_plane, "get", "--raw",
                                      f"/api/v1/nodes/{node}/proxy/runningpods/").stdout)
    assert (ns, "vm") in {(p["metadata"]["namespace"], p["metadata"]["name"])
                          for p in running_pods["items"]}
    assert kubectl(control_plane, "get", "--raw",
                   f"/api/v1/nodes/{node}/proxy/healthz").stdout == "ok"


# -- the Python kubernetes client ----------------------------------------------------------------


def _python_api(cp: ControlPlane) -> Any:
    from kubernetes import client, config

    api_client = config.new_client_from_config(str(cp.kubeconfig))  # type: ignore[no-untyped-call]
    return client.CoreV1Api(api_client=api_client)


@pytest.mark.parametrize("protocol", [None, "v4.channel.k8s.io"], ids=["default", "v4"])
def test_python_client_exec(stack: Stack, control_plane: ControlPlane, ns: str,
                            vm: dict[str, Any], protocol: str | None) -> None:
    from kubernetes.stream import stream

    api = _python_api(control_plane)
    headers = {"sec-websocket-protocol": protocol} if protocol else None
    seen = {t: upgrades(stack, "exec", t) for t in ("spdy", "websocket")}
    resp = stream(api.connect_get_namespaced_pod_exec, "vm", ns, command=["sh", "-c", "exit 5"],
                  stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False,
                  _headers=headers)
    resp.run_forever(timeout=30)
    assert resp.returncode == 5
    resp = stream(api.connect_get_namespaced_pod_exec, "vm", ns, command=["cat"], stderr=True,
                  stdin=True, stdout=True, tty=False, _preload_content=False, _headers=headers)
    try:
        resp.write_stdin("from python\n")
        out = ""
        deadline = time.monotonic() + 30
        while "from python\n" not in out and time.monotonic() < deadline:
            resp.update(timeout=1)
            out += resp.read_stdout(timeout=1) if resp.peek_stdout() else ""
        assert out == "from python\n"
    finally:
        resp.close()
    # The client asks for v5 and v4: the apiserver translates v5 to SPDY; v4 alone it passes
    # through to the kubelet as a WebSocket.
    if protocol is None:
        assert grew(seen["spdy"], upgrades(stack, "exec", "spdy")) == {"v5.channel.k8s.io"}
    else:
        assert grew(seen["websocket"], upgrades(stack, "exec", "websocket")) == {protocol}
    eventually(lambda: nothing_left_open(stack, "Exec", "exec"), timeout=30,
               what="the closed Python exec's provider stream closed")


def test_python_client_port_forward(stack: Stack, control_plane: ControlPlane, ns: str,
                                    vm: dict[str, Any]) -> None:
    from kubernetes.stream import portforward

    api = _python_api(control_plane)
    seen = upgrades(stack, "portforward", "websocket")
    forward = portforward(api.connect_get_namespaced_pod_portforward, "vm", ns, ports="9090")
    conn = forward.socket(9090)
    try:
        conn.setblocking(True)
        conn.settimeout(10)
        conn.sendall(b"python forwarded")
        got = b""
        while len(got) < len(b"python forwarded"):
            got += conn.recv(1024)
        assert got == b"python forwarded"
        assert forward.error(9090) is None
    finally:
        conn.close()
    # Not a tunnelling request, so the apiserver passes the WebSocket through to the kubelet.
    assert grew(seen, upgrades(stack, "portforward", "websocket")) == {"v4.channel.k8s.io"}
    eventually(lambda: nothing_left_open(stack, "PortForward", "portforward"), timeout=30,
               what="the Python port-forward's provider stream closed")


# -- authentication and authorization, straight at the kubelet port -----------------------------


def _issue_client_cert(directory: Path, name: str, ca: tuple[Any, Any] | None) -> tuple[Path, Path]:
    """A client certificate for ``name`` signed by ``ca`` (a fresh CA of its own when None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    if ca is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone-elses-ca")])
    else:
        ca_key, ca_name = ca
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _get(cp: ControlPlane, host: Netns, path: str, *, token: str = "",
         cert: tuple[Path, Path] | None = None) -> tuple[int, str]:
    ctx = server_context(cp)
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    conn = http.client.HTTPSConnection(host.ip, KUBELET_PORT, context=ctx, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_authn_and_authz_matrix(stack: Stack, control_plane: ControlPlane, test_host: Netns,
                                ns: str, vm: dict[str, Any], tmp_path: Path) -> None:
    cp = control_plane
    # Nobody: 401.
    assert _get(cp, test_host, "/pods")[0] == 401
    assert _get(cp, test_host, "/healthz")[0] == 401
    # A client certificate from another CA: 401, not a failed handshake.
    foreign = _issue_client_cert(tmp_path, "mallory", None)
    assert _get(cp, test_host, "/pods", cert=foreign)[0] == 401
    # The apiserver's own kubelet-client certificate: in.
    apiserver = (cp.pki.kubelet_client.cert, cp.pki.kubelet_client.key)
    status, body = _get(cp, test_host, "/pods", cert=apiserver)
    assert status == 200 and json.loads(body)["kind"] == "PodList"
    # A ServiceAccount token without rights: 403.
    cp.kubectl("create", "serviceaccount", "nobody", "-n", ns)
    nobody = cp.kubectl("create", "token", "nobody", "-n", ns).stdout.strip()
    status, body = _get(cp, test_host, "/pods", token=nobody)
    assert status == 403 and f"system:serviceaccount:{ns}:nobody" in body
    # A garbage token: 401.
    assert _get(cp, test_host, "/pods", token="not-a-token")[0] == 401
    # A token with nodes/proxy rights: 200 on proxy paths, still 403 on nodes/stats.
    cp.kubectl("create", "serviceaccount", "viewer", "-n", ns)
    role = f"kapi-proxy-{ns}"
    cp.kubectl("create", "clusterrole", role, "--verb=get", "--resource=nodes/proxy")
    cp.kubectl("create", "clusterrolebinding", role, f"--clusterrole={role}",
               f"--serviceaccount={ns}:viewer")
    viewer = cp.kubectl("create", "token", "viewer", "-n", ns).stdout.strip()

    def allowed() -> tuple[int, str] | None:
        answer = _get(cp, test_host, "/pods", token=viewer)
        return answer if answer[0] == 200 else None

    got = eventually(allowed, timeout=30, what="RBAC in effect")
    assert got is not None
    status, body = got
    assert (ns, "vm") in {(p["metadata"]["namespace"], p["metadata"]["name"])
                          for p in json.loads(body)["items"]}
    status, body = _get(cp, test_host, f"/containerLogs/{ns}/vm/vm", token=viewer)
    assert status == 200 and "powered on" in body
    status, body = _get(cp, test_host, "/stats/summary", token=viewer)
    assert status == 403 and "subresource(s)=[stats]" in body
    # Unknown pods and paths, once authorized.
    assert _get(cp, test_host, f"/containerLogs/{ns}/nope/vm", token=viewer)[0] == 404
    assert _get(cp, test_host, "/no/such/path", token=viewer)[0] == 404

