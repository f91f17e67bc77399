"""An exec's guest login: read from the pod's SSH Secret into ExecStart, or the exec refused."""

from __future__ import annotations

import asyncio
import base64
import functools
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kep
from vmlet_facade.kube import ApiError
from vmlet_facade.kubeletapi import remotecommand
from vmlet_facade.kubeletapi.guestlogin import (
    DEFAULT_USERNAME,
    GuestLoginError,
    guest_credentials,
)

Obj = dict[str, Any]
KEY = b"-----BEGIN OPENSSH PRIVATE KEY-----\nnot really\n-----END OPENSSH PRIVATE KEY-----\n"


class Secrets:
    """An apiserver holding some Secrets; records the paths read."""

    def __init__(self, **secrets: dict[str, bytes]) -> None:
        self.secrets = secrets
        self.reads: list[str] = []

    async def get(self, path: str, **params: str) -> Obj:
        self.reads.append(path)
        name = path.rsplit("/", 1)[1]
        if name not in self.secrets:
            raise ApiError(404, "NotFound", f'secrets "{name}" not found')
        return {"kind": "Secret", "type": "kubernetes.io/ssh-auth", "data": {
            k: base64.b64encode(v).decode() for k, v in self.secrets[name].items()}}


def pod(secret: str | None = "vm-ssh") -> Obj:
    annotations = {"vmlet.io/ssh-secret": secret} if secret else {}
    return {"metadata": {"namespace": "ns", "name": "vm", "annotations": annotations},
            "spec": {"containers": [{"name": "vm"}]}}


async def test_a_pod_without_the_annotation_has_no_login() -> None:
    secrets = Secrets()
    assert await guest_credentials(secrets, pod(None)) is None
    assert secrets.reads == []


async def test_the_secret_fills_the_credentials() -> None:
    secrets = Secrets(**{"vm-ssh": {"ssh-privatekey": KEY}})
    creds = await guest_credentials(secrets, pod())
    assert creds == kep.GuestCredentials(username=DEFAULT_USERNAME, private_key=KEY)
    assert secrets.reads == ["/api/v1/namespaces/ns/secrets/vm-ssh"]
    full = Secrets(**{"vm-ssh": {"ssh-privatekey": KEY, "username": b"debian\n",
                                 "password": b"pw", "port": b"2222",
                                 "known_hosts": b"10.0.0.5 ssh-ed25519 AAAA\n"}})
    assert await guest_credentials(full, pod()) == kep.GuestCredentials(
        username="debian", private_key=KEY, password="pw", port=2222,
        known_hosts=b"10.0.0.5 ssh-ed25519 AAAA\n")
    password_only = Secrets(**{"vm-ssh": {"password": b"pw"}})
    assert (await guest_credentials(password_only, pod())) == kep.GuestCredentials(
        username=DEFAULT_USERNAME, password="pw")


@pytest.mark.parametrize(("data", "message"), [
    (None, 'the SSH Secret "vm-ssh" of pod ns/vm (annotation vmlet.io/ssh-secret) does not '
           'exist'),
    ({"username": b"debian"}, "has neither ssh-privatekey nor password"),
    ({"ssh-privatekey": KEY, "port": b"ssh"}, "has a port that is not a TCP port"),
    ({"ssh-privatekey": KEY, "port": b"70000"}, "has a port that is not a TCP port"),
])
async def test_unusable_secrets_are_refused_without_their_contents(
        data: dict[str, bytes] | None, message: str) -> None:
    secrets = Secrets(**({"vm-ssh": data} if data is not None else {}))
    with pytest.raises(GuestLoginError) as err:
        await guest_credentials(secrets, pod())
    assert message in str(err.value)
    assert "not really" not in str(err.value)


class FakeProvider:
    """Answers Exec with the command's first word on stdout and exit 0; keeps the start."""

    def __init__(self) -> None:
        self.starts: list[kep.ExecStart] = []

    async def _exec(self, requests: AsyncIterator[kep.ExecRequest]
                    ) -> AsyncGenerator[kep.ExecResponse, None]:
        first = await anext(requests)
        self.starts.append(first.start)
        yield kep.ExecResponse(stdout=first.start.command[0].encode())
        yield kep.ExecResponse(exit=kep.StreamExit(exit_code=0))

    def exec(self, requests: AsyncIterator[kep.ExecRequest]
             ) -> AsyncGenerator[kep.ExecResponse, None]:
        return self._exec(requests)


class FakeTerminal(remotecommand.Terminal):
    def __init__(self) -> None:
        self.protocol = "v5.channel.k8s.io"
        self.gone = asyncio.Event()
        self.written: list[tuple[int, bytes]] = []
        self.status: Obj | None = None

    async def read_stdin(self) -> bytes:
        return b""

    async def read_resize(self) -> bytes:
        return b""

    async def write(self, channel: int, data: bytes) -> None:
        self.written.append((channel, data))

    async def finish(self, status: Obj | None) -> None:
        self.status = status


OPTIONS = remotecommand.StreamOptions(stdin=False, stdout=True, stderr=True, tty=False)
TARGET = remotecommand.Target("ns", "vm", "vm")


async def test_exec_start_carries_the_login() -> None:
    provider, terminal = FakeProvider(), FakeTerminal()
    secrets = Secrets(**{"vm-ssh": {"ssh-privatekey": KEY, "username": b"debian"}})
    login = functools.partial(guest_credentials, secrets, pod())
    await remotecommand.relay("exec", provider, TARGET, ["uname"], OPTIONS,  # type: ignore[arg-type]
                              terminal, login)
    assert terminal.status == {"metadata": {}, "status": "Success"}
    assert provider.starts[0].credentials == kep.GuestCredentials(username="debian",
                                                                  private_key=KEY)
    assert terminal.written == [(remotecommand.STDOUT, b"uname")]


async def test_a_missing_secret_ends_the_exec_with_a_status_before_the_provider() -> None:
    provider, terminal = FakeProvider(), FakeTerminal()
    login = functools.partial(guest_credentials, Secrets(), pod())
    await remotecommand.relay("exec", provider, TARGET, ["uname"], OPTIONS,  # type: ignore[arg-type]
                              terminal, login)
    assert provider.starts == []
    assert terminal.status is not None and terminal.status["status"] == "Failure"
    assert terminal.status["reason"] == "BadRequest"
    assert 'SSH Secret "vm-ssh"' in terminal.status["message"]
    assert "does not exist" in terminal.status["message"]


@pytest.mark.parametrize("name", ["../../victim/secrets/ssh", "a/b", "%2e%2e", "a" * 254, "ßsh"])
async def test_a_hostile_ssh_secret_name_reads_nothing(name: str) -> None:
    secrets = Secrets()
    with pytest.raises(GuestLoginError, match="is not a valid name"):
        await guest_credentials(secrets, pod(name))
    assert secrets.reads == []


async def test_a_forbidden_ssh_secret_fails_like_a_missing_one() -> None:
    class Forbidden(Secrets):
        async def get(self, path: str, **params: str) -> Obj:
            raise ApiError(403, "Forbidden", "forbidden")

    answers = []
    for reader in (Secrets(), Forbidden()):
        with pytest.raises(GuestLoginError) as err:
            await guest_credentials(reader, pod("vm-ssh"))
        answers.append(str(err.value))
    assert answers[0] == answers[1]
