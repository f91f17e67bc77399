"""Where the apiserver is and who we are to it, as the official `kubernetes` package finds it.

Credentials come from that package's loader, so whatever kubeconfig kubectl accepts, the facade
accepts: client certificates, tokens and token files, exec credential plugins (as managed
clusters issue), auth providers, several files in KUBECONFIG, and the in-cluster service account.
The loader runs in a short-lived child process (``loader.py``), so the package's ~19 MB never
sit in a facade replica's memory. The requests themselves go through the facade's lean aiohttp
client (``client.py``): the loader's answer becomes a :class:`KubeConfig`, whose
:class:`Credentials` keep the Authorization header fresh (the loader runs again as an exec
plugin's token nears its ``expirationTimestamp``, and once after a 401; the in-cluster token
file is re-read as the kubelet rotates it).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Credentials", "KubeConfig", "KubeConfigError"]

_LOADER = Path(__file__).with_name("loader.py")
_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_BEARER = "bearer "
_RELOAD_COALESCE = 2.0  # seconds
_EXPIRY_SKEW = 300.0  # seconds before an expiry that the token is renewed, as the loader does
_RENEW_INTERVAL = 10.0  # seconds between renewals of a token that lives less than the skew
_LOADER_TIMEOUT = 120.0  # seconds for the loader, an exec plugin's run included
log = logging.getLogger(__name__)


class KubeConfigError(ValueError):
    """The kubeconfig (or the in-cluster account) cannot be used; the message is one line."""


@dataclass(frozen=True)
class Loaded:
    """What one run of the loader found: the apiserver, its CA and our credentials as files."""

    server: str
    insecure: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    authorization: str | None = None
    token_file: str | None = None
    expires_at: float | None = None


def run_loader(request: dict[str, Any], what: str) -> Loaded:
    """Run the official loader in a child process (``loader.py``) for ``request``. Inline PEM
    material it returns is written to files of this process's own, removed at exit."""
    try:
        # Isolated (-I): the interpreter's own packages only, nothing of PYTHON* or the cwd.
        done = subprocess.run([sys.executable, "-I", str(_LOADER)],
                              input=json.dumps(request), capture_output=True, text=True,
                              timeout=_LOADER_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise KubeConfigError(f"{what}: the credential loader did not answer in "
                              f"{_LOADER_TIMEOUT:.0f} s") from None
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        last = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        raise KubeConfigError(f"{what}: the credential loader failed "
                              f"(exit {done.returncode}): {_one_line(last)}")
    if "error" in answer:
        raise KubeConfigError(_one_line(answer["error"]))
    return Loaded(server=str(answer["server"]), insecure=bool(answer.get("insecure")),
                  ca_file=answer.get("ca_file") or _PEM_FILES.write(answer.get("ca_pem")),
                  cert_file=answer.get("cert_file") or _PEM_FILES.write(answer.get("cert_pem")),
                  key_file=answer.get("key_file") or _PEM_FILES.write(answer.get("key_pem")),
                  authorization=answer.get("authorization"),
                  token_file=answer.get("token_file"), expires_at=answer.get("expires_at"))


class _PemFiles:
    """A private folder (0700) for the loader's PEM material, removed when the process exits;
    one file per distinct content, so loading the same credentials again adds nothing."""

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._lock = threading.Lock()

    def write(self, pem: str | None) -> str | None:
        if not pem:
            return None
        with self._lock:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="vmlet-kubeconfig-"))
                atexit.register(shutil.rmtree, self._dir, True)
            path = self._dir / f"{hashlib.sha256(pem.encode()).hexdigest()[:32]}.pem"
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(pem)
        return str(path)


_PEM_FILES = _PemFiles()


class Credentials:
    """The loader's latest answer: the Authorization header, kept fresh (an exec plugin's
    token renewed in the background as its expiry nears, in-cluster the token file re-read),
    and a re-load on demand (after a 401). Client TLS contexts made from it follow a client
    certificate that an exec plugin renews."""

    def __init__(self, request: dict[str, Any], what: str) -> None:
        self._request, self._what = request, what
        self._lock = threading.Lock()
        self._reloading = threading.Lock()
        self._reloaded_at = -_RELOAD_COALESCE
        self._renewing = False
        self.loaded = run_loader(request, what)
        self._attempted_at = time.monotonic()
        self._contexts: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()

    def authorization(self) -> str | None:
        """The Authorization header value (``Bearer …``). A token within minutes of its expiry,
        or past it, is renewed in a thread, never on the caller's event loop: until then the
        current one is sent, and an apiserver that refuses it gets a re-load (``reload``)."""
        loaded = self.loaded
        if (loaded.expires_at is not None and loaded.expires_at - time.time() <= _EXPIRY_SKEW
                and time.monotonic() - self._attempted_at >= _RENEW_INTERVAL):
            self._renew_in_background()
        if loaded.token_file:
            token = Path(loaded.token_file).read_text().strip()
            return f"Bearer {token}" if token else None
        value = loaded.authorization
        if value and value[:len(_BEARER)].lower() == _BEARER:
            return "Bearer " + value[len(_BEARER):].strip()
        return value

    def _renew_in_background(self) -> None:
        with self._lock:
            if self._renewing:
                return
            self._renewing = True

        def renew() -> None:
            try:
                self.reload(coalesce=False)
            finally:
                with self._lock:
                    self._renewing = False

        threading.Thread(target=renew, name="kubeconfig-renew", daemon=True).start()

    def track(self, context: ssl.SSLContext) -> None:
        """Load renewed client certificates into ``context`` on every re-load."""
        self._contexts.add(context)

    def reload(self, *, coalesce: bool = True) -> bool:
        """Load the credentials again (an exec plugin runs again); False, logged, if that fails.
        Many requests refused at once re-load once: a re-load within the last seconds counts."""
        with self._reloading:
            if coalesce and time.monotonic() - self._reloaded_at < _RELOAD_COALESCE:
                return True
            self._attempted_at = time.monotonic()
            try:
                fresh = run_loader(self._request, self._what)
            except KubeConfigError as err:
                log.warning("re-loading the apiserver credentials failed: %s", err)
                return False
            self._reloaded_at = time.monotonic()
            self.loaded = fresh
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
    def from_credentials(cls, credentials: Credentials) -> KubeConfig:
        """The KubeConfig of a loader's answer, kept current by ``credentials``."""
        loaded = credentials.loaded
        return cls(server=loaded.server, ca_file=loaded.ca_file, cert_file=loaded.cert_file,
                   key_file=loaded.key_file, insecure=loaded.insecure, credentials=credentials)

    @classmethod
    def from_file(cls, path: str | Path, context: str | None = None) -> KubeConfig:
        """The kubeconfig at ``path`` (several joined by ``os.pathsep``, merged as kubectl
        does), at ``context`` or its current context."""
        where = str(path)
        files = [os.path.expanduser(p) for p in where.split(os.pathsep) if p]
        if not files or not any(os.path.isfile(f) for f in files):
            raise KubeConfigError(f"kubeconfig {where}: no such file")
        return cls.from_credentials(Credentials({"kubeconfig": where, "context": context},
                                                f"kubeconfig {where}"))

    @classmethod
    def in_cluster(cls, service_account: Path = _SA_DIR) -> KubeConfig:
        """The pod's service account; its token file is re-read as the kubelet rotates it."""
        request = {"in_cluster": {"token_file": str(service_account / "token"),
                                  "ca_file": str(service_account / "ca.crt")}}
        return cls.from_credentials(Credentials(request, "in-cluster config"))

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


def _one_line(err: object) -> str:
    return " ".join(str(err).split())
