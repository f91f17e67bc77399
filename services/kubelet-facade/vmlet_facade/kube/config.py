"""Where the apiserver is and who we are to it, as the official `kubernetes` package finds it.

Credentials come from that package's loader, so whatever kubeconfig kubectl accepts, the facade
accepts: client certificates, tokens and token files, exec credential plugins (as managed
clusters issue), auth providers, several files in KUBECONFIG, and the in-cluster service account.
The requests themselves stay on the facade's lean aiohttp client (``client.py``): the loader's
``kubernetes.client.Configuration`` is translated into a :class:`KubeConfig`, whose
:class:`Credentials` keep the Authorization header fresh (the loader's refresh hook re-runs an
exec plugin as its ``expirationTimestamp`` nears and re-reads the in-cluster token; a 401 forces
one re-load).
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from kubernetes.client import Configuration

__all__ = ["Credentials", "KubeConfig", "KubeConfigError"]

_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_BEARER = "bearer "
_RELOAD_COALESCE = 2.0  # seconds
log = logging.getLogger(__name__)


class KubeConfigError(ValueError):
    """The kubeconfig (or the in-cluster account) cannot be used; the message is one line."""


class Credentials:
    """The loader's live Configuration: the Authorization header as its refresh hook keeps it,
    and a re-load on demand (after a 401). Client TLS contexts made from it follow a client
    certificate that an exec plugin renews."""

    def __init__(self, load: Callable[[], Configuration]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._reloading = threading.Lock()
        self._reloaded_at = -_RELOAD_COALESCE
        self.configuration = load()
        self._contexts: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()

    def authorization(self) -> str | None:
        """The Authorization header value (``Bearer …``), refreshed by the loader once expired."""
        with self._lock:
            value = self.configuration.get_api_key_with_prefix("BearerToken",
                                                               alias="authorization")
        if value and value[:len(_BEARER)].lower() == _BEARER:
            return "Bearer " + value[len(_BEARER):].strip()  # in-cluster says "bearer TOKEN\n"
        return value

    def track(self, context: ssl.SSLContext) -> None:
        """Load renewed client certificates into ``context`` on every re-load."""
        self._contexts.add(context)

    def reload(self) -> bool:
        """Load the credentials again (an exec plugin runs again); False, logged, if that fails.
        Many requests refused at once re-load once: a re-load within the last seconds counts."""
        with self._reloading:
            if time.monotonic() - self._reloaded_at < _RELOAD_COALESCE:
                return True
            try:
                fresh = self._load()
            except KubeConfigError as err:
                log.warning("re-loading the apiserver credentials failed: %s", err)
                return False
            self._reloaded_at = time.monotonic()
        with self._lock:
            self.configuration = fresh
        if fresh.cert_file and fresh.key_file:
            for context in list(self._contexts):
                context.load_cert_chain(fresh.cert_file, fresh.key_file)
        return True


@dataclass(frozen=True)
class KubeConfig:
    """Server URL, TLS material and credentials for one apiserver. Built by hand (tests, a plain
    URL) it carries a static ``token`` or ``token_file``; loaded, it carries ``credentials``."""

    server: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    insecure: bool = False
    credentials: Credentials | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_configuration(cls, configuration: Configuration,
                           credentials: Credentials | None = None) -> KubeConfig:
        """The part of a ``kubernetes.client.Configuration`` the aiohttp client uses; ``token``
        is the bearer token as loaded (``credentials`` keep it current)."""
        header = str(configuration.api_key.get("BearerToken")
                     or configuration.api_key.get("authorization") or "")
        token = header[len(_BEARER):].strip() if header.lower().startswith(_BEARER) else None
        return cls(server=str(configuration.host).rstrip("/"),
                   ca_file=configuration.ssl_ca_cert or None,
                   cert_file=configuration.cert_file or None,
                   key_file=configuration.key_file or None,
                   token=token, insecure=not configuration.verify_ssl, credentials=credentials)

    @classmethod
    def from_file(cls, path: str | Path, context: str | None = None) -> KubeConfig:
        """The kubeconfig at ``path`` (several joined by ``os.pathsep``, merged as kubectl
        does), at ``context`` or its current context."""
        where = str(path)
        files = [os.path.expanduser(p) for p in where.split(os.pathsep) if p]
        if not files or not any(os.path.isfile(f) for f in files):
            raise KubeConfigError(f"kubeconfig {where}: no such file")

        def load() -> Configuration:
            from kubernetes import client, config

            configuration = client.Configuration()
            with _loader_errors(f"kubeconfig {where}"):
                config.load_kube_config(config_file=where,  # type: ignore[no-untyped-call]
                                        context=context or _first_current_context(files),
                                        client_configuration=configuration,
                                        persist_config=False)
            return configuration

        credentials = Credentials(load)
        return cls.from_configuration(credentials.configuration, credentials)

    @classmethod
    def in_cluster(cls) -> KubeConfig:
        """The pod's service account; its token file is re-read as the kubelet rotates it."""

        def load() -> Configuration:
            from kubernetes import client, config

            configuration = client.Configuration()
            with _loader_errors("in-cluster config"):
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return configuration

        credentials = Credentials(load)
        return cls.from_configuration(credentials.configuration, credentials)

    @classmethod
    def load(cls, kubeconfig: str | None, context: str | None = None) -> KubeConfig:
        """The kubeconfig given, else in-cluster when running in a pod, else $KUBECONFIG (all
        its files), else ~/.kube/config."""
        if kubeconfig:
            return cls.from_file(kubeconfig, context)
        if os.environ.get("KUBERNETES_SERVICE_HOST") and _SA_DIR.exists():
            return cls.in_cluster()
        return cls.from_file(os.environ.get("KUBECONFIG") or Path.home() / ".kube" / "config",
                             context)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.credentials is not None:
            self.credentials.track(ctx)
        return ctx

    def authorization(self) -> str | None:
        """The Authorization header to send, current: from the loader's credentials, else the
        token file (re-read, so rotated tokens are picked up), else the token."""
        if self.credentials is not None:
            return self.credentials.authorization()
        token = self.bearer_token()
        return f"Bearer {token}" if token else None

    def bearer_token(self) -> str | None:
        """The bearer token to send, if the credentials are one."""
        if self.credentials is not None:
            header = self.credentials.authorization()
            return header[len(_BEARER):] if header and header.startswith("Bearer ") else None
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return self.token

    def reload(self) -> bool:
        """Re-load the credentials after the apiserver refused them (401): True if re-loaded."""
        return self.credentials.reload() if self.credentials is not None else False


@contextlib.contextmanager
def _loader_errors(what: str) -> Iterator[None]:
    """The loader's failures as one-line KubeConfigErrors. It logs, rather than raises, a
    failing exec plugin and loads no credentials; that is a failure here too."""
    from kubernetes.config import ConfigException

    logged: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())

    catch = Catch(logging.ERROR)
    root = logging.getLogger()
    root.addHandler(catch)
    try:
        yield
    except ConfigException as err:
        raise KubeConfigError(f"{what}: {_one_line(err)}") from None
    except yaml.YAMLError as err:
        raise KubeConfigError(f"{what}: not valid YAML: {_one_line(err)}") from None
    except (OSError, KeyError, TypeError, AttributeError, ValueError) as err:
        raise KubeConfigError(f"{what}: {type(err).__name__}: {_one_line(err)}") from None
    finally:
        root.removeHandler(catch)
    if logged:
        raise KubeConfigError(f"{what}: {_one_line(logged[-1])}")


def _first_current_context(files: list[str]) -> str | None:
    """The current context of a list of kubeconfigs as kubectl takes it: the first file's that
    sets one (the loader would take the last)."""
    if len(files) < 2:
        return None
    for path in files:
        if os.path.isfile(path):
            doc = yaml.safe_load(Path(path).read_text())
            if isinstance(doc, dict) and doc.get("current-context"):
                return str(doc["current-context"])
    return None


def _one_line(err: object) -> str:
    return " ".join(str(err).split())
