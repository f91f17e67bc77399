"""The cluster, reached through the user's own `kubectl`.

Shelling out keeps the plugin honest: whatever kubeconfig, context, credentials plugin or proxy
works for `kubectl get` works for `kubectl vm`, with nothing to configure twice. Every call asks
for JSON; edits are merge patches; kubectl's errors are sorted into the few kinds the commands
tell apart (not found, forbidden, the CRDs missing, anything else).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "Api",
    "Forbidden",
    "Kubectl",
    "KubectlError",
    "NotFound",
    "Obj",
    "UnknownResource",
]

Obj = dict[str, Any]


class KubectlError(Exception):
    """kubectl failed; the message is kubectl's own, without its `error:` prefix."""


class NotFound(KubectlError):
    """The object (or its kind) does not exist."""


class Forbidden(KubectlError):
    """The user may not do this."""


class UnknownResource(KubectlError):
    """The cluster does not serve the kind asked for (the vmlet.io CRDs are not applied)."""


class Api(Protocol):
    """What the commands need from the cluster; unit tests implement it with a fake."""

    def get(self, resource: str, name: str) -> Obj: ...

    def list(self, resource: str, field_selector: str | None = None) -> list[Obj]: ...

    def patch(self, resource: str, name: str, body: Obj) -> Obj: ...

    def create(self, obj: Obj) -> Obj: ...

    def namespace(self) -> str: ...


def _error(stderr: str, argv: list[str]) -> KubectlError:
    text = stderr.strip() or f"kubectl {' '.join(argv)} failed"
    lines = [line for line in text.splitlines() if line.strip()]
    message = lines[-1] if lines else text
    for prefix in ("error: ", "Error: "):
        message = message.removeprefix(prefix)
    if "(NotFound)" in text:
        return NotFound(message)
    if "(Forbidden)" in text:
        return Forbidden(message)
    if "the server doesn't have a resource type" in text:
        return UnknownResource(f"{message} (are the vmlet.io CRDs installed? "
                               "kubectl apply -f k8s/base/crds/)")
    return KubectlError(message)


@dataclass(frozen=True)
class Kubectl:
    """Runs ``kubectl`` with the connection flags the user gave the plugin."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace_flag: str | None = None
    binary: str = field(default_factory=lambda: os.environ.get("KUBECTL") or "kubectl")

    def _flags(self) -> list[str]:
        flags = []
        if self.kubeconfig:
            flags.append(f"--kubeconfig={self.kubeconfig}")
        if self.context:
            flags.append(f"--context={self.context}")
        if self.namespace_flag:
            flags.append(f"--namespace={self.namespace_flag}")
        return flags

    def run(self, *args: str, stdin: str | None = None) -> str:
        argv = [self.binary, *self._flags(), *args]
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise KubectlError(f"{self.binary} not found on PATH") from None
        if done.returncode != 0:
            raise _error(done.stderr, list(args))
        return done.stdout

    def _json(self, *args: str, stdin: str | None = None) -> Obj:
        out = self.run(*args, "--output=json", stdin=stdin)
        try:
            value = json.loads(out)
        except json.JSONDecodeError as err:
            raise KubectlError(f"kubectl printed something other than JSON: {err}") from None
        if not isinstance(value, dict):
            raise KubectlError("kubectl printed JSON that is not an object")
        return value

    def get(self, resource: str, name: str) -> Obj:
        return self._json("get", resource, name)

    def list(self, resource: str, field_selector: str | None = None) -> list[Obj]:
        args = ["get", resource]
        if field_selector:
            args.append(f"--field-selector={field_selector}")
        return list(self._json(*args).get("items") or [])

    def patch(self, resource: str, name: str, body: Obj) -> Obj:
        return self._json("patch", resource, name, "--type=merge",
                          f"--patch={json.dumps(body)}")

    def create(self, obj: Obj) -> Obj:
        return self._json("create", "--filename=-", stdin=json.dumps(obj))

    def namespace(self) -> str:
        if self.namespace_flag:
            return self.namespace_flag
        try:
            found = self.run("config", "view", "--minify",
                             "--output=jsonpath={.contexts[0].context.namespace}").strip()
        except KubectlError:
            found = ""
        return found or "default"
