"""Who is calling, and may they: the kubelet's authentication and authorization, delegated.

Authentication, first that works: a client certificate chaining to the client CA (the
apiserver presents its kubelet-client cert), then a bearer token checked with a TokenReview.
Nothing that works means 401, as with a kubelet whose anonymous auth is off.

Authorization is a SubjectAccessReview on the node, with the kubelet's mapping of a request to
attributes: the HTTP method gives the verb (GET get, POST create, PUT update, PATCH patch,
DELETE delete) and the path the subresource of ``nodes``: /stats/* stats, /metrics/* metrics,
/logs/* log, anything else proxy. Like a 1.34 kubelet (KubeletFineGrainedAuthz) /pods, /healthz
and /configz are first checked as their own subresource, then as proxy. Denied means 403.

Answers are cached: tokens 2 minutes (10 s when rejected), decisions 10 s allowed and 5 s
denied. A review that fails (the apiserver unreachable) is not cached and counts as a "no".
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import aiohttp

from vmlet_facade.kube import ApiError, KubeClient
from vmlet_facade.kubeletapi import metrics
from vmlet_facade.kubeletapi.tls import ClientCertVerifier, PeerCertificate

__all__ = ["ApiReviews", "Authenticator", "Authorizer", "Decision", "Reviews", "User",
           "attributes"]

log = logging.getLogger(__name__)

_VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch",
          "DELETE": "delete"}
_OWN = (("/stats", "stats"), ("/metrics", "metrics"), ("/logs", "log"))
_FINE_GRAINED = (("/pods", "pods"), ("/healthz", "healthz"), ("/configz", "configz"))

K = TypeVar("K")
V = TypeVar("V")


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def attributes(method: str, path: str) -> tuple[str, list[str]]:
    """The verb and the subresources of ``nodes`` a request needs (any one of them)."""
    verb = _VERBS.get(method.upper(), "")
    for prefix, subresource in _FINE_GRAINED:
        if _under(path, prefix):
            return verb, [subresource, "proxy"]
    for prefix, subresource in _OWN:
        if _under(path, prefix):
            return verb, [subresource]
    return verb, ["proxy"]


@dataclass(frozen=True)
class User:
    """An authenticated caller."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Decision:
    allowed: bool
    verb: str
    subresources: tuple[str, ...]
    reason: str = ""


class Reviews(Protocol):
    """The apiserver's TokenReview and SubjectAccessReview."""

    async def token_review(self, token: str) -> User | None: ...

    async def access_review(self, user: User, verb: str, node: str,
                            subresource: str) -> tuple[bool, str]: ...


class ApiReviews:
    """Reviews through the apiserver, with the facade's own credentials."""

    def __init__(self, client: KubeClient) -> None:
        self._client = client

    async def token_review(self, token: str) -> User | None:
        answer = await self._client.create("/apis/authentication.k8s.io/v1/tokenreviews", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token}})
        status = answer.get("status") or {}
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        extra = user.get("extra") or {}
        return User(name=str(user.get("username", "")), uid=str(user.get("uid", "")),
                    groups=tuple(user.get("groups") or ()),
                    extra=tuple(sorted((k, tuple(v)) for k, v in extra.items())))

    async def access_review(self, user: User, verb: str, node: str,
                            subresource: str) -> tuple[bool, str]:
        spec: dict[str, Any] = {
            "user": user.name, "groups": list(user.groups),
            "resourceAttributes": {"verb": verb, "group": "", "version": "v1",
                                   "resource": "nodes", "subresource": subresource,
                                   "name": node},
        }
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra}
        answer = await self._client.create(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
             "spec": spec})
        status = answer.get("status") or {}
        return bool(status.get("allowed")) and not status.get("denied"), \
            str(status.get("reason", ""))


@dataclass
class _Cache(Generic[K, V]):
    """A small time-bounded cache."""

    limit: int = 10000
    _items: dict[K, tuple[float, V]] = field(default_factory=dict)

    def get(self, key: K) -> tuple[bool, V | None]:
        hit = self._items.get(key)
        if hit is None:
            return False, None
        if hit[0] < time.monotonic():
            del self._items[key]
            return False, None
        return True, hit[1]

    def put(self, key: K, value: V, ttl: float) -> None:
        if len(self._items) >= self.limit:
            now = time.monotonic()
            self._items = {k: v for k, v in self._items.items() if v[0] >= now}
            if len(self._items) >= self.limit:
                self._items.clear()
        self._items[key] = (time.monotonic() + ttl, value)


def bearer_token(headers: Mapping[str, str] | Any) -> str:
    value = str(headers.get("authorization", ""))
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class Authenticator:
    """Client certificates first, then bearer tokens."""

    def __init__(self, reviews: Reviews, certs: ClientCertVerifier | None, *,
                 ttl: float = 120.0, ttl_rejected: float = 10.0) -> None:
        self._reviews = reviews
        self._certs = certs
        self._ttl, self._ttl_rejected = ttl, ttl_rejected
        self._tokens: _Cache[bytes, User | None] = _Cache()

    async def authenticate(self, peer: PeerCertificate | None, token: str) -> User | None:
        if peer is not None and self._certs is not None:
            proven = self._certs.verify(peer)
            metrics.AUTH_DECISIONS.labels("x509", "ok" if proven else "rejected", "no").inc()
            if proven is not None:
                return User(name=proven[0], groups=tuple(proven[1]))
        if not token:
            return None
        key = hashlib.sha256(token.encode()).digest()
        hit, cached = self._tokens.get(key)
        if hit:
            metrics.AUTH_DECISIONS.labels("token", "ok" if cached else "rejected", "yes").inc()
            return cached
        try:
            user = await self._reviews.token_review(token)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as err:
            log.warning("TokenReview failed: %s", err)
            metrics.AUTH_DECISIONS.labels("token", "error", "no").inc()
            return None
        self._tokens.put(key, user, self._ttl if user else self._ttl_rejected)
        metrics.AUTH_DECISIONS.labels("token", "ok" if user else "rejected", "no").inc()
        return user


class Authorizer:
    """SubjectAccessReviews on ``nodes/<subresource>``, cached briefly."""

    def __init__(self, reviews: Reviews, *, ttl_allowed: float = 10.0,
                 ttl_denied: float = 5.0) -> None:
        self._reviews = reviews
        self._ttl_allowed, self._ttl_denied = ttl_allowed, ttl_denied
        self._cache: _Cache[tuple[Any, ...], tuple[bool, str]] = _Cache()

    async def _one(self, user: User, verb: str, node: str, subresource: str) -> tuple[bool, str]:
        key = (user, verb, node, subresource)
        hit, cached = self._cache.get(key)
        if hit and cached is not None:
            metrics.AUTH_DECISIONS.labels("authz", "allowed" if cached[0] else "denied",
                                          "yes").inc()
            return cached
        try:
            answer = await self._reviews.access_review(user, verb, node, subresource)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as err:
            log.warning("SubjectAccessReview failed: %s", err)
            metrics.AUTH_DECISIONS.labels("authz", "error", "no").inc()
            return False, f"authorization check failed: {err}"
        self._cache.put(key, answer, self._ttl_allowed if answer[0] else self._ttl_denied)
        metrics.AUTH_DECISIONS.labels("authz", "allowed" if answer[0] else "denied", "no").inc()
        return answer

    async def authorize(self, user: User, method: str, path: str, nodes: list[str]) -> Decision:
        """Allowed when, for every node in ``nodes``, one of the request's subresources is."""
        verb, subresources = attributes(method, path)
        reason = ""
        for node in nodes:
            for subresource in subresources:
                allowed, reason = await self._one(user, verb, node, subresource)
                if allowed:
                    break
            else:
                return Decision(False, verb, tuple(subresources), reason)
        return Decision(True, verb, tuple(subresources), reason)
