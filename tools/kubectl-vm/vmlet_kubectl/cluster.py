"""The cluster through the official `kubernetes` client, connected as kubectl connects.

The kubeconfig is kubectl's: --kubeconfig, else every file in KUBECONFIG (merged, the first
current context winning), else ~/.kube/config, else the pod's service account; --context picks
a context and -n a namespace (else the context's, else ``default``). Credentials come from the
client's loader, so exec plugins and auth providers work as they do for kubectl. Objects are
read and written as JSON dicts; edits are merge patches; waits watch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from vmlet_api import names as n
from vmlet_kubectl.api import (
    Forbidden,
    KubectlError,
    NotFound,
    Obj,
    Target,
    UnknownResource,
)

__all__ = ["Cluster", "error_from"]

_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_VERSIONS = {k.qualified: n.VERSION for k in n.KINDS}
_WATCH_CEILING = 60.0  # seconds: a wait looks again at least this often
_MERGE = "application/merge-patch+json"


def error_from(err: ApiException, resource: str) -> KubectlError:
    """An apiserver refusal as kubectl words it (``Error from server (NotFound): …``)."""
    try:
        status = json.loads(err.body or "")
    except ValueError:
        status = None
    if not isinstance(status, dict) or status.get("kind") != "Status":
        if err.status == 404:  # the group or resource is not served: no Status, a plain 404
            plural = resource.split(".", 1)[0]
            return UnknownResource(f'the server doesn\'t have a resource type "{plural}" (are '
                                   "the vmlet.io CRDs installed? kubectl apply -f "
                                   "k8s/base/crds/)")
        return KubectlError(f"Error from server ({err.reason}): {(err.body or '').strip()}"
                            .rstrip(": "))
    reason, message = str(status.get("reason") or ""), str(status.get("message") or "")
    if reason == "Unauthorized":
        return KubectlError(f"You must be logged in to the server ({message})")
    text = message if reason == "Invalid" else (
        f"Error from server ({reason}): {message}" if reason else f"Error from server: {message}")
    if err.status == 404 or reason == "NotFound":
        return NotFound(text)
    if err.status == 403 or reason == "Forbidden":
        return Forbidden(text)
    return KubectlError(text)


@dataclass(frozen=True)
class _Kind:
    """How the client reaches one resource: its read and list calls, and their arguments
    (group, version and plural of a custom resource; none for a core one)."""

    get: Callable[..., Any]
    list: Callable[..., Any]
    params: dict[str, str] = field(default_factory=dict)
    namespaced: bool = True


class Cluster:
    """The :class:`~vmlet_kubectl.api.Api` of the verbs on an ``ApiClient``."""

    def __init__(self, api_client: client.ApiClient, default_namespace: str = "default",
                 namespace_flag: str | None = None) -> None:
        self.api_client = api_client
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._default_namespace = default_namespace
        self._namespace_flag = namespace_flag

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None,
                namespace_flag: str | None = None) -> Cluster:
        """Connect as kubectl would with these flags; KubectlError if it cannot."""
        where = kubeconfig or os.environ.get("KUBECONFIG") or ""
        files = [os.path.expanduser(p) for p in where.split(os.pathsep) if p]
        if kubeconfig and not os.path.exists(files[0]):
            raise KubectlError(f"stat {kubeconfig}: no such file or directory")
        if not files:
            files = [os.path.expanduser("~/.kube/config")]
        if not any(os.path.isfile(f) for f in files):
            if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                return cls._in_cluster(namespace_flag)
            raise KubectlError("no kubeconfig: none given (--kubeconfig), none in KUBECONFIG, "
                               "no ~/.kube/config, and not running in a pod")
        try:
            contexts = _contexts(files)
            name = context or _first_current_context(files)
            if name is None:
                raise KubectlError("no context: the kubeconfig names no current-context; "
                                   "pass --context")
            if name not in contexts:
                raise KubectlError(f'context "{name}" does not exist')
            with _logged_errors() as logged:
                api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                    config_file=os.pathsep.join(files), context=name, persist_config=True)
        except (ConfigException, yaml.YAMLError, OSError, ValueError, KeyError) as err:
            raise KubectlError(f"kubeconfig {os.pathsep.join(files)}: "
                               f"{' '.join(str(err).split())}") from None
        if logged:  # the loader logs, and goes on without credentials, when a plugin fails
            raise KubectlError(f"kubeconfig {os.pathsep.join(files)}: user of context "
                               f"{name!r}: {' '.join(logged[-1].split())}")
        return cls(api_client, str(contexts[name].get("namespace") or "default"),
                   namespace_flag)

    @classmethod
    def _in_cluster(cls, namespace_flag: str | None) -> Cluster:
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            own = (_SA_DIR / "namespace").read_text().strip()
        except (ConfigException, OSError) as err:
            raise KubectlError(f"in-cluster config: {err}") from None
        return cls(client.ApiClient(configuration), own or "default", namespace_flag)

    # -- the Api -------------------------------------------------------------------------------

    def namespace(self) -> str:
        return self._namespace_flag or self._default_namespace

    def get(self, resource: str, name: str) -> Obj:
        kind = self._kind(resource)
        return self._call(resource, kind.get, name=name, **self._where(kind))

    def list(self, resource: str, field_selector: str | None = None) -> list[Obj]:
        kind = self._kind(resource)
        extra = {"field_selector": field_selector} if field_selector else {}
        found = self._call(resource, kind.list, **self._where(kind), **extra)
        return list(found.get("items") or [])

    def patch(self, resource: str, name: str, body: Obj) -> Obj:
        group, version, plural = self._custom_kind(resource)
        return self._call(resource, self._custom.patch_namespaced_custom_object, group, version,
                          self.namespace(), plural, name, body, _content_type=_MERGE)

    def create(self, obj: Obj) -> Obj:
        kinds = {k.kind: k.qualified for k in n.KINDS}
        resource = kinds.get(str(obj.get("kind")), str(obj.get("kind")))
        group, version, plural = self._custom_kind(resource)
        return self._call(resource, self._custom.create_namespaced_custom_object, group,
                          version, self.namespace(), plural, obj)

    def wait_for_change(self, target: Target, timeout: float) -> None:
        resource, name, version = target
        kind = self._kind(resource)
        seconds = max(1, int(min(timeout, _WATCH_CEILING)))
        options: dict[str, Any] = {"field_selector": f"metadata.name={name}",
                                   "timeout_seconds": seconds,
                                   "_request_timeout": seconds + 10}
        if version:
            options["resource_version"] = version
        stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
            kind.list, **self._where(kind), **options)
        try:
            for event in stream:
                if event.get("type") == "BOOKMARK":
                    continue
                meta = (event.get("raw_object") or {}).get("metadata") or {}
                if not version:  # it was not found: it appears (after a breath: no busy loop)
                    time.sleep(min(0.5, timeout))
                    return
                if meta.get("resourceVersion") != version:
                    return
        except ApiException as err:
            if err.status != 410:  # 410 Gone: too old to watch from; look again now
                time.sleep(min(1.0, timeout))
        except (urllib3.exceptions.HTTPError, OSError):
            time.sleep(min(1.0, timeout))  # an apiserver restarting; look again after a breath
        finally:
            stream.close()

    # -- plumbing ------------------------------------------------------------------------------

    def _where(self, kind: _Kind) -> dict[str, str]:
        """The call's arguments that say which resource, and in which namespace."""
        return {**kind.params, **({"namespace": self.namespace()} if kind.namespaced else {})}

    def _custom_kind(self, resource: str) -> tuple[str, str, str]:
        if resource not in _VERSIONS:
            raise UnknownResource(f'the server doesn\'t have a resource type "{resource}"')
        plural, group = resource.split(".", 1)
        return group, _VERSIONS[resource], plural

    def _kind(self, resource: str) -> _Kind:
        core = self._core
        if resource == "pods":
            return _Kind(core.read_namespaced_pod, core.list_namespaced_pod)
        if resource == "nodes":
            return _Kind(core.read_node, core.list_node, namespaced=False)
        if resource == "events":
            return _Kind(core.read_namespaced_event, core.list_namespaced_event)
        group, version, plural = self._custom_kind(resource)
        return _Kind(self._custom.get_namespaced_custom_object,
                     self._custom.list_namespaced_custom_object,
                     {"group": group, "version": version, "plural": plural})

    def _call(self, resource: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
        """One request; its JSON answer as a dict, or its refusal as a KubectlError."""
        try:
            resp = call(*args, _preload_content=False, **kwargs)
        except ApiException as err:
            raise error_from(err, resource) from None
        except urllib3.exceptions.MaxRetryError as err:
            raise KubectlError(f"the connection to the server {self.api_client.configuration.host}"
                               f" failed: {err.reason}") from None
        except urllib3.exceptions.HTTPError as err:
            raise KubectlError(f"the connection to the server {self.api_client.configuration.host}"
                               f" failed: {err}") from None
        if not 200 <= int(resp.status) <= 299:
            raise error_from(ApiException(http_resp=resp), resource)
        value = json.loads(resp.data or b"{}")
        if not isinstance(value, dict):
            raise KubectlError("the apiserver answered JSON that is not an object")
        return value


@contextlib.contextmanager
def _logged_errors() -> Iterator[list[str]]:
    """The errors the loader logs meanwhile (a failing exec plugin), kept off the terminal."""
    logged: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())

    keep, root = Keep(logging.ERROR), logging.getLogger()
    root.addHandler(keep)
    try:
        yield logged
    finally:
        root.removeHandler(keep)


def _load(path: str) -> dict[str, Any]:
    doc = yaml.safe_load(Path(path).read_text())
    if doc is None:
        raise ValueError(f"{path} is empty")
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a kubeconfig")
    return doc


def _contexts(files: list[str]) -> dict[str, dict[str, Any]]:
    """Every context of the kubeconfigs by name, the first file's winning (as in kubectl)."""
    found: dict[str, dict[str, Any]] = {}
    for path in files:
        if os.path.isfile(path):
            for item in _load(path).get("contexts") or []:
                found.setdefault(str(item.get("name")), dict(item.get("context") or {}))
    return found


def _first_current_context(files: list[str]) -> str | None:
    """The current context as kubectl takes it: the first file's that sets one."""
    for path in files:
        if os.path.isfile(path):
            current = _load(path).get("current-context")
            if current:
                return str(current)
    return None
