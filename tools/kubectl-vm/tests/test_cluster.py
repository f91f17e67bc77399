"""Cluster: the connection kubectl would make (kubeconfig, context, namespace), requests and
watches on the official client against a small fake apiserver, and refusals worded as kubectl
words them. (tests/test_kubectl_vm.py runs the plugin on the real control plane.)"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from vmlet_kubectl.api import Forbidden, KubectlError, NotFound, UnknownResource
from vmlet_kubectl.cluster import Cluster, error_from
from vmlet_kubectl.session import BACKUP, VM


def write_kubeconfig(path: Path, server: str = "http://127.0.0.1:1", current: str | None = "a",
                     contexts: dict[str, str | None] | None = None) -> Path:
    contexts = {"a": None} if contexts is None else contexts
    doc: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "k", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": name, "context": {"cluster": "k", "user": "u",
                                                **({"namespace": ns} if ns else {})}}
                     for name, ns in contexts.items()]}
    if current:
        doc["current-context"] = current
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(autouse=True)
def _no_user_kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def status(code: int, reason: str, message: str) -> ApiException:
    body = json.dumps({"kind": "Status", "status": "Failure", "reason": reason,
                       "message": message, "code": code})
    return ApiException(status=code, reason=reason, body=body)


@pytest.mark.parametrize(("err", "kind", "message"), [
    (status(404, "NotFound", 'virtualmachines.vmlet.io "web" not found'), NotFound,
     'Error from server (NotFound): virtualmachines.vmlet.io "web" not found'),
    (status(403, "Forbidden", 'virtualmachines.vmlet.io is forbidden: User "u" cannot'),
     Forbidden, 'Error from server (Forbidden): virtualmachines.vmlet.io is forbidden: User "u"'
     " cannot"),
    (status(422, "Invalid", 'VirtualMachine.vmlet.io "big" is invalid: spec.memory: at least'),
     KubectlError, 'VirtualMachine.vmlet.io "big" is invalid: spec.memory: at least'),
    (status(401, "Unauthorized", "Unauthorized"), KubectlError,
     "You must be logged in to the server (Unauthorized)"),
    (status(409, "Conflict", "already exists"), KubectlError,
     "Error from server (Conflict): already exists"),
    (ApiException(status=404, reason="Not Found", body="404 page not found\n"), UnknownResource,
     'the server doesn\'t have a resource type "virtualmachines" (are the vmlet.io CRDs'),
])
def test_refusals_are_worded_as_kubectl_words_them(err: ApiException, kind: type[KubectlError],
                                                   message: str) -> None:
    sorted_err = error_from(err, VM)
    assert type(sorted_err) is kind
    assert str(sorted_err).startswith(message)


def test_namespace_flag_context_and_defaults(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    kc = write_kubeconfig(tmp_path / "kc", contexts={"a": "prod", "b": None})
    assert Cluster.connect(str(kc)).namespace() == "prod"
    assert Cluster.connect(str(kc), context="b").namespace() == "default"
    assert Cluster.connect(str(kc), namespace_flag="dev").namespace() == "dev"
    monkeypatch.setenv("KUBECONFIG", str(kc))
    assert Cluster.connect().namespace() == "prod"


def test_kubeconfig_list_first_current_context_wins(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    first = write_kubeconfig(tmp_path / "one", current="b", contexts={"b": "from-b"})
    second = write_kubeconfig(tmp_path / "two", current="a", contexts={"a": "from-a"})
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{first}:{second}")
    assert Cluster.connect().namespace() == "from-b"
    assert Cluster.connect(context="a").namespace() == "from-a"


def test_connection_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kc = write_kubeconfig(tmp_path / "kc")
    with pytest.raises(KubectlError, match='context "nope" does not exist'):
        Cluster.connect(str(kc), context="nope")
    with pytest.raises(KubectlError, match=f"stat {tmp_path}/none: no such file"):
        Cluster.connect(str(tmp_path / "none"))
    with pytest.raises(KubectlError, match="no kubeconfig"):
        Cluster.connect()
    (tmp_path / "bad").write_text("contexts: [")
    with pytest.raises(KubectlError, match="bad") as err:
        Cluster.connect(str(tmp_path / "bad"))
    assert "\n" not in str(err.value)
    nocurrent = write_kubeconfig(tmp_path / "nocurrent", current=None)
    with pytest.raises(KubectlError, match="pass --context"):
        Cluster.connect(str(nocurrent))


def test_a_failing_exec_plugin_is_one_line(tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "kc")
    doc = yaml.safe_load(kc.read_text())
    doc["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                                        "command": sys.executable,
                                        "args": ["-c", "import sys; sys.exit('denied')"]}}
    kc.write_text(yaml.safe_dump(doc))
    with pytest.raises(KubectlError, match=r"user of context 'a': exec: process returned 1\. "
                                           "denied"):
        Cluster.connect(str(kc))


class FakeApiserver(BaseHTTPRequestHandler):
    """Answers from ``objects`` by path; a watch sends one MODIFIED event and ends."""

    objects: dict[str, Any] = {}
    requests: list[tuple[str, str, str, str]] = []

    def _answer(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        self.requests.append((self.command, self.path, self.headers.get("Content-Type") or "",
                              self.headers.get("Authorization") or ""))
        path = self.path.split("?", 1)[0]
        if "watch=true" in self.path:
            obj = {"metadata": {"name": "web", "resourceVersion": "8"}}
            data = json.dumps({"type": "MODIFIED", "object": obj}).encode() + b"\n"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif path in self.objects:
            self._answer(200, self.objects[path])
        elif self.command == "POST":
            self._answer(201, json.loads(body))
        else:
            self._answer(404, {"kind": "Status", "reason": "NotFound", "code": 404,
                               "message": f'"{path.rsplit("/", 1)[-1]}" not found'})

    do_GET = do_PATCH = do_POST = _handle

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def apiserver(tmp_path: Path) -> Iterator[Path]:
    FakeApiserver.objects, FakeApiserver.requests = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApiserver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{server.server_port}",
                               contexts={"a": "ns"})
    finally:
        server.shutdown()


def test_requests_on_the_official_client(apiserver: Path) -> None:
    base = "/apis/vmlet.io/v1alpha1/namespaces/ns"
    vm = {"kind": "VirtualMachine", "metadata": {"name": "web", "resourceVersion": "7"}}
    FakeApiserver.objects = {f"{base}/virtualmachines/web": vm,
                             "/api/v1/namespaces/ns/events": {"items": [{"reason": "R"}]},
                             "/api/v1/nodes/n-1": {"metadata": {"name": "n-1"}},
                             "/api/v1/namespaces/ns/pods/web-abc": {"metadata": {"uid": "p"}}}
    cluster = Cluster.connect(str(apiserver))
    assert cluster.get(VM, "web") == vm
    assert cluster.patch(VM, "web", {"spec": {"replicas": 0}}) == vm
    assert cluster.list("events", "involvedObject.uid=u") == [{"reason": "R"}]
    assert cluster.get("nodes", "n-1")["metadata"]["name"] == "n-1"
    assert cluster.get("pods", "web-abc")["metadata"]["uid"] == "p"
    made = cluster.create({"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachineBackup",
                           "metadata": {"name": "b1"}})
    assert made["metadata"] == {"name": "b1"}
    with pytest.raises(NotFound, match='Error from server \\(NotFound\\): "nope" not found'):
        cluster.get(BACKUP, "nope")
    sent = FakeApiserver.requests
    assert sent[1][:3] == ("PATCH", f"{base}/virtualmachines/web",
                           "application/merge-patch+json")
    assert sent[2][1] == ("/api/v1/namespaces/ns/events?"
                          "fieldSelector=involvedObject.uid%3Du")
    assert sent[5][:2] == ("POST", f"{base}/virtualmachinebackups")
    assert all(auth == "Bearer t0ken" for *_, auth in sent)


def test_wait_for_change_watches_from_the_version_seen(apiserver: Path) -> None:
    cluster = Cluster.connect(str(apiserver))
    cluster.wait_for_change((VM, "web", "7"), 30)
    method, path, _, _ = FakeApiserver.requests[-1]
    assert method == "GET" and path.startswith(
        "/apis/vmlet.io/v1alpha1/namespaces/ns/virtualmachines?")
    for part in ("fieldSelector=metadata.name%3Dweb", "resourceVersion=7", "timeoutSeconds=30",
                 "watch=true"):
        assert part in path
    cluster.wait_for_change(("pods", "web-abc", ""), 5)
    assert FakeApiserver.requests[-1][1].startswith("/api/v1/namespaces/ns/pods?")
    assert "resourceVersion" not in FakeApiserver.requests[-1][1]
