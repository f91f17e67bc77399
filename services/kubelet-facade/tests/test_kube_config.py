"""KubeConfig from the official `kubernetes` loader: the loaded Configuration translated for the
aiohttp client, exec-plugin tokens refreshed as they expire and re-loaded after a 401, and a
kubeconfig that cannot be used is a one-line KubeConfigError."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmlet_facade.kube import ApiError, KubeClient, KubeConfig
from vmlet_facade.kube import config as kube_config
from vmlet_facade.kube.config import KubeConfigError

# An exec credential plugin: counts its runs in a file; prints token tok-<run> (or the tokens
# given, one a run, the last repeated), expiring in the seconds given (none when 0).
PLUGIN = """\
import datetime, json, pathlib, sys
runs = pathlib.Path(sys.argv[1])
n = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(n))
tokens = sys.argv[3:] or [f"tok-{n}"]
status = {"token": tokens[min(n, len(tokens)) - 1]}
if int(sys.argv[2]):
    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=int(sys.argv[2]))
    status["expirationTimestamp"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": status}))
"""


def kubeconfig(path: Path, user: dict[str, Any], server: str = "https://127.0.0.1:6443",
               **cluster: Any) -> Path:
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
           "clusters": [{"name": "k", "cluster": {"server": server, **cluster}}],
           "users": [{"name": "u", "user": user}]}
    path.write_text(yaml.safe_dump(doc))
    return path


def exec_user(tmp_path: Path, expires_in: int, *tokens: str) -> dict[str, Any]:
    script = tmp_path / "plugin.py"
    script.write_text(PLUGIN)
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                     "args": [str(script), str(tmp_path / "runs"), str(expires_in), *tokens],
                     "interactiveMode": "Never"}}


def runs(tmp_path: Path) -> int:
    return int((tmp_path / "runs").read_text())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_client_certificates_and_ca_data_become_files(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("KEY")
    path = kubeconfig(tmp_path / "kc", {"client-certificate-data": b64(b"CERT"),
                                        "client-key": "key.pem"},
                      server="https://apiserver:6443/",
                      **{"certificate-authority-data": b64(b"CA")})
    config = KubeConfig.from_file(path)
    assert config.server == "https://apiserver:6443"
    assert config.ca_file and Path(config.ca_file).read_bytes() == b"CA"
    assert config.cert_file and Path(config.cert_file).read_bytes() == b"CERT"
    assert config.key_file == str(tmp_path / "key.pem")  # relative to the kubeconfig
    assert not config.insecure and config.authorization() is None


def test_token_and_token_file(tmp_path: Path) -> None:
    config = KubeConfig.from_file(kubeconfig(tmp_path / "kc", {"token": "abc"},
                                             **{"insecure-skip-tls-verify": True}))
    assert config.insecure
    assert (config.bearer_token(), config.authorization()) == ("abc", "Bearer abc")
    (tmp_path / "token").write_text("from-file\n")
    config = KubeConfig.from_file(kubeconfig(tmp_path / "kc", {"tokenFile": "token"}))
    assert config.authorization() == "Bearer from-file"


def test_a_hand_made_config_keeps_its_token_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("one\n")
    config = KubeConfig(server="https://x", token_file=str(tmp_path / "token"))
    assert config.authorization() == "Bearer one"
    (tmp_path / "token").write_text("two\n")
    assert config.authorization() == "Bearer two" and not config.reload()
    assert KubeConfig(server="http://x").authorization() is None


def test_exec_plugin_token_is_renewed_in_the_background_before_it_expires(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Within the loader's 5 minutes of skew: the current token is used while the plugin runs
    # again in the background, once at a time.
    monkeypatch.setattr(kube_config, "_RENEW_INTERVAL", 0.0)
    config = KubeConfig.from_file(kubeconfig(tmp_path / "kc", exec_user(tmp_path, 60)))
    assert config.authorization() == "Bearer tok-1" and runs(tmp_path) == 1
    assert config.authorization() == "Bearer tok-1"  # one renewal in flight, not two
    assert _eventually(lambda: config.authorization() == "Bearer tok-2")


def test_an_expired_exec_plugin_token_is_renewed_at_most_every_interval(
        tmp_path: Path) -> None:
    config = KubeConfig.from_file(kubeconfig(tmp_path / "kc", exec_user(tmp_path, -1)))
    for _ in range(3):  # just loaded: no renewal before the interval, however expired
        assert config.authorization() == "Bearer tok-1"
    assert runs(tmp_path) == 1


def _eventually(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_exec_plugin_token_is_kept_until_it_expires(tmp_path: Path) -> None:
    config = KubeConfig.from_file(kubeconfig(tmp_path / "kc", exec_user(tmp_path, 3600)))
    for _ in range(3):
        assert config.authorization() == "Bearer tok-1"
    assert runs(tmp_path) == 1


def test_reload_runs_the_plugin_again_once_for_many_refusals(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = KubeConfig.from_file(kubeconfig(tmp_path / "kc", exec_user(tmp_path, 0)))
    assert config.authorization() == "Bearer tok-1"
    assert config.reload() and config.reload()  # the second within the coalescing window
    assert config.authorization() == "Bearer tok-2" and runs(tmp_path) == 2
    monkeypatch.setattr(kube_config, "_RELOAD_COALESCE", 0.0)
    assert config.reload() and config.authorization() == "Bearer tok-3"


def test_exec_plugin_client_certificate(tmp_path: Path) -> None:
    script = tmp_path / "cert.py"
    script.write_text(
        "import json\nprint(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1',"
        " 'kind': 'ExecCredential', 'status': {'clientCertificateData': 'PEM-CERT',"
        " 'clientKeyData': 'PEM-KEY'}}))\n")
    config = KubeConfig.from_file(kubeconfig(tmp_path / "kc", {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
        "args": [str(script)]}}))
    assert config.cert_file and Path(config.cert_file).read_text() == "PEM-CERT"
    assert config.key_file and Path(config.key_file).read_text() == "PEM-KEY"
    assert config.authorization() is None


def test_kubeconfig_list_is_merged_and_context_chosen(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    first = kubeconfig(tmp_path / "a", {"token": "a"})
    doc = yaml.safe_load(kubeconfig(tmp_path / "b", {"token": "b"}).read_text())
    for section in ("contexts", "clusters", "users"):
        doc[section][0]["name"] += "2"
    doc["contexts"][0]["context"] = {"cluster": "k2", "user": "u2"}
    doc["current-context"] = "c2"  # the first file's current context wins, as with kubectl
    (tmp_path / "b").write_text(yaml.safe_dump(doc))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", f"{first}:{tmp_path / 'b'}")
    assert KubeConfig.load(None).authorization() == "Bearer a"
    assert KubeConfig.load(None, context="c2").authorization() == "Bearer b"
    assert KubeConfig.load(str(tmp_path / "b")).authorization() == "Bearer b"


def test_in_cluster_reads_the_service_account(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "ca.crt").write_text("CA")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    config = KubeConfig.in_cluster(tmp_path)
    assert config.server == "https://[fd00::1]:443"
    assert config.ca_file == str(tmp_path / "ca.crt")
    assert config.authorization() == "Bearer sa-token"
    (tmp_path / "token").write_text("rotated\n")  # as the kubelet renews the projected token
    assert config.authorization() == "Bearer rotated"
    (tmp_path / "token").unlink()
    with pytest.raises(KubeConfigError, match=r"^in-cluster config: .*token"):
        KubeConfig.in_cluster(tmp_path)


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    ("clusters: [", "not valid YAML"),
    ("", "file is empty"),
    ("apiVersion: v1\nkind: Config\n", "Expected key current-context"),
])
def test_an_unusable_kubeconfig_is_one_line(tmp_path: Path, content: str | None,
                                            message: str) -> None:
    path = tmp_path / "kc"
    if content is not None:
        path.write_text(content)
    with pytest.raises(KubeConfigError) as err:
        KubeConfig.from_file(path)
    assert str(err.value).startswith(f"kubeconfig {path}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_context_and_failing_plugin_are_one_line(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "kc", {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
        "args": ["-c", "import sys; sys.exit('no credentials for you')"]}})
    with pytest.raises(KubeConfigError, match="name nope"):
        KubeConfig.from_file(path, context="nope")
    with pytest.raises(KubeConfigError, match=r"returned 1\. no credentials for you"):
        KubeConfig.from_file(path)


def test_client_reloads_once_after_401(tmp_path: Path) -> None:
    """An apiserver that refuses the first token: one 401, one plugin run, the request again."""
    seen: list[str] = []

    async def go() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            auth = next((line.split(":", 1)[1].strip() for line in head.split("\r\n")
                         if line.lower().startswith("authorization:")), "")
            seen.append(auth)
            ok = auth == "Bearer good"
            body = b'{"kind": "PodList", "items": []}' if ok else (
                b'{"kind": "Status", "reason": "Unauthorized", "message": "Unauthorized"}')
            writer.write(b"HTTP/1.1 " + (b"200 OK" if ok else b"401 Unauthorized")
                         + b"\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        config = KubeConfig.from_file(kubeconfig(
            tmp_path / "kc", exec_user(tmp_path, 0, "stale", "good", "bad"),
            server=f"http://127.0.0.1:{port}"))
        client = KubeClient(config)
        try:
            assert (await client.get("/api/v1/pods"))["kind"] == "PodList"
            assert (await client.get("/api/v1/pods"))["kind"] == "PodList"
            kube_config._RELOAD_COALESCE, saved = 0.0, kube_config._RELOAD_COALESCE
            try:
                config.reload()  # now "bad": refused, re-loaded once, still "bad": a 401
                with pytest.raises(ApiError) as err:
                    await client.get("/api/v1/pods")
            finally:
                kube_config._RELOAD_COALESCE = saved
            assert err.value.status == 401
        finally:
            await client.close()
            server.close()

    asyncio.run(go())
    assert seen == ["Bearer stale", "Bearer good", "Bearer good", "Bearer bad", "Bearer bad"]
    assert runs(tmp_path) == 4



def test_the_loader_runs_apart_and_its_pem_files_are_private(tmp_path: Path) -> None:
    config = KubeConfig.from_file(kubeconfig(
        tmp_path / "kc", {"client-certificate-data": b64(b"CERT"),
                          "client-key-data": b64(b"KEY")},
        **{"certificate-authority-data": b64(b"CA"), "insecure-skip-tls-verify": False}))
    for path in (config.ca_file, config.cert_file, config.key_file):
        assert path and Path(path).stat().st_mode & 0o077 == 0
    assert config.server == "https://127.0.0.1:6443" and not config.insecure
    # A fresh process that loads a kubeconfig never imports the package itself.
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from vmlet_facade.kube import KubeConfig; "
         f"KubeConfig.from_file({str(tmp_path / 'kc')!r}); "
         "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes'))"],
        capture_output=True, text=True, timeout=120, check=True)
    assert probe.stdout == "[]\n"


def test_a_loader_that_dies_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "nothing-here"))
    monkeypatch.setattr(kube_config.sys, "executable", "/bin/false")
    with pytest.raises(KubeConfigError, match=r"credential loader failed \(exit 1\)"):
        KubeConfig.from_file(kubeconfig(tmp_path / "kc", {"token": "t"}))
