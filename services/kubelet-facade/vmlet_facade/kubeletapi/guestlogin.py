"""The guest login an exec carries: read from the Secret the VM pod names, at exec time.

A VM pod names its Secret in annotation vmlet.io/ssh-secret (written from a VirtualMachine's
spec.access.sshSecretName; a bare pod may carry it too). The Secret lives in the pod's namespace
and is read afresh for every exec, so a rotated key works at once. Its keys:

- ``ssh-privatekey``: the private key, OpenSSH or PEM (the key of type kubernetes.io/ssh-auth);
- ``password``: a password, for guests without a key (either or both must be there);
- ``username``: who to log in as; default ``root``, the user `kubectl exec` runs as in a
  container (cloud images usually want their own: ``debian``, ``ubuntu``, ``cloud-user``...);
- ``port``: the guest's SSH port, default 22;
- ``known_hosts``: known_hosts lines for the guest's host key; without them the host key is not
  checked.

The values go to the provider inside the Exec call only: they are never logged, and the errors
here name the Secret, never its contents. A pod without the annotation gets no credentials and
the provider says what is missing. The name must be a Kubernetes name and is read in the pod's
namespace only (`api_path`); a Secret the facade may not read answers as a missing one.
"""

from __future__ import annotations

import base64
import binascii
from typing import Protocol

import aiohttp

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kep
from vmlet_api.names import SSH_SECRET_ANNOTATION
from vmlet_facade.kube import ApiError
from vmlet_facade.kube.objects import Obj, Pod
from vmlet_facade.kube.paths import InvalidName, api_path, valid_label, valid_name

__all__ = ["DEFAULT_USERNAME", "GuestLoginError", "SecretReader", "guest_credentials"]


#: The user when the Secret names none.
DEFAULT_USERNAME = "root"


class GuestLoginError(Exception):
    """The pod names an SSH Secret that cannot be used; the message says why."""


class SecretReader(Protocol):
    """Reads one object from the apiserver (`vmlet_facade.kube.KubeClient` is one)."""

    async def get(self, path: str, **params: str) -> Obj: ...


def _data(secret: Obj) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
    for key, value in (secret.get("stringData") or {}).items():
        out[key] = str(value).encode()
    return out


async def guest_credentials(client: SecretReader, pod: Pod) -> kep.GuestCredentials | None:
    """The login of the pod's SSH Secret; None when the pod names none."""
    meta = pod.get("metadata") or {}
    name = str((meta.get("annotations") or {}).get(SSH_SECRET_ANNOTATION) or "").strip()
    if not name:
        return None
    try:
        path = api_path("secrets", valid_name(name, f"annotation {SSH_SECRET_ANNOTATION}:"),
                        namespace=valid_label(meta.get("namespace"), "namespace"))
    except InvalidName as err:
        raise GuestLoginError(str(err)) from None
    namespace = str(meta.get("namespace", ""))
    what = f'the SSH Secret "{name}" of pod {namespace}/{meta.get("name", "")}'
    try:
        secret = await client.get(path)
    except ApiError as err:
        if err.not_found or err.status == 403:  # forbidden answers as missing: no oracle
            raise GuestLoginError(f"{what} (annotation {SSH_SECRET_ANNOTATION}) does not "
                                  f"exist") from None
        raise GuestLoginError(f"cannot read {what}: {err.status} {err.reason}") from None
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        raise GuestLoginError(f"cannot read {what}: {type(err).__name__}") from None
    data = _data(secret)
    key, password = data.get("ssh-privatekey", b""), data.get("password", b"")
    if not key.strip() and not password:
        raise GuestLoginError(f"{what} has neither ssh-privatekey nor password")
    port = 0
    if data.get("port", b"").strip():
        try:
            port = int(data["port"].decode(errors="replace").strip())
        except ValueError:
            port = -1
        if not 0 < port < 65536:
            raise GuestLoginError(f"{what} has a port that is not a TCP port")
    username = data.get("username", b"").decode(errors="replace").strip() or DEFAULT_USERNAME
    return kep.GuestCredentials(
        username=username, private_key=key, password=password.decode(errors="replace"),
        port=port, known_hosts=data.get("known_hosts", b""))
