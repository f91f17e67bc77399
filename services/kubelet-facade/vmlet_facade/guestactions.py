"""Actions against a pod's guest, shared by probes and lifecycle hooks: ``exec`` through the
provider, ``tcpSocket`` and ``httpGet`` against the pod's own IP.

- tcpSocket: a TCP connection to the pod's IP and port; httpGet: an HTTP/1.1 GET there (https
  without verifying the certificate, as a kubelet), 200-399 is success; exec: the command run in
  the guest through the provider's Exec (the path of ``kubectl exec``), exit 0 is success.
- Only the pod's own IP is reached: a ``host`` naming another address fails, so a tenant cannot
  make the facade reach into its own network.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import Awaitable, Callable

from vmlet_facade.kube.objects import Obj

__all__ = ["ExecRunner", "act"]

#: Runs ``command`` in the pod's guest: (exit code, output or why it could not run).
ExecRunner = Callable[[Obj, str, list[str]], Awaitable[tuple[int, str]]]


def _port(value: object, container: Obj) -> int | None:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(value, int):
        return value if 0 < value < 65536 else None
    for port in container.get("ports") or []:
        if port.get("name") == value:
            return int(port["containerPort"])
    return None


def _container(pod: Obj, name: str) -> Obj:
    return next((c for c in pod.get("spec", {}).get("containers") or []
                 if c.get("name") == name), {})


def _target(action: Obj, ip: str) -> str | None:
    """Why the action may not go where it asks (another host than the pod's IP), or None."""
    host = action.get("host")
    if host and host != ip:
        return f"vmlet reaches only the pod's own IP ({ip or 'none yet'}), not host {host}"
    if not ip:
        return "the pod has no IP yet"
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return f"the pod's IP {ip!r} is not an address"
    return None


async def _tcp(ip: str, port: int) -> tuple[bool, str]:
    try:
        _, writer = await asyncio.open_connection(ip, port)
    except OSError as err:
        return False, f"dial tcp {ip}:{port}: {_said(err)}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, ""


def _said(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def _insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # as a kubelet: probes do not verify certificates
    return context


async def _http(action: Obj, ip: str, port: int) -> tuple[bool, str]:
    scheme = str(action.get("scheme", "HTTP")).upper()
    path = str(action.get("path") or "/")
    if not path.startswith("/") or any(c in path for c in "\r\n "):
        return False, f"path {path!r} is not an absolute path"
    headers = {"Host": f"{ip}:{port}" if ":" not in ip else f"[{ip}]:{port}",
               "User-Agent": "vmlet-probe", "Accept": "*/*", "Connection": "close"}
    for header in action.get("httpHeaders") or []:
        name, value = str(header.get("name", "")), str(header.get("value", ""))
        if name and ":" not in name and not any(c in name + value for c in "\r\n"):
            headers[name] = value  # a header that would split the request is dropped
    request = f"GET {path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    url = f"{scheme.lower()}://{ip}:{port}{path}"
    try:
        reader, writer = await asyncio.open_connection(
            ip, port, ssl=_insecure() if scheme == "HTTPS" else None)
        try:
            writer.write(request.encode())
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
    except (OSError, ssl.SSLError) as err:
        return False, f'Get "{url}": {_said(err)}'
    parts = line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return False, f'Get "{url}": not an HTTP answer'
    code = int(parts[1])
    if 200 <= code < 400:
        return True, ""
    return False, f"HTTP probe failed with statuscode: {code}"


async def act(handler: Obj, pod: Obj, container: str, ip: str, run: ExecRunner | None,
              what: str) -> tuple[bool, str]:
    """Does the ``exec``, ``tcpSocket`` or ``httpGet`` action of ``handler`` (a probe's or a
    lifecycle hook's, ``what`` names it) against ``pod``'s ``container`` at ``ip``: (success,
    why not). No time limit of its own."""
    if isinstance(action := handler.get("exec"), dict):
        command = [str(a) for a in action.get("command") or []]
        if not command:
            return False, f"the exec {what} has no command"
        if run is None:
            return False, f"exec {what}s cannot reach this pod's provider"
        code, said = await run(pod, container, command)
        return code == 0, "" if code == 0 else (said or f"command exited with {code}")
    for kind in ("tcpSocket", "httpGet"):
        action = handler.get(kind)
        if not isinstance(action, dict):
            continue
        refused = _target(action, ip)
        if refused is not None:
            return False, refused
        port = _port(action.get("port"), _container(pod, container))
        if port is None:
            return False, f"port {action.get('port')!r} is not a port of container {container}"
        if kind == "tcpSocket":
            return await _tcp(ip, port)
        return await _http(action, ip, port)
    return False, f"the {what} has no exec, tcpSocket or httpGet"
