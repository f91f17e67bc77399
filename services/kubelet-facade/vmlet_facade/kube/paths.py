"""API paths built from validated parts only, and the Kubernetes name rules behind them.

Names in a path come from objects a tenant writes (a Secret named in an annotation, a claim in a
VirtualMachine's spec). Pasted into a URL, ``../../other/secrets/x`` walks out of the namespace:
the HTTP client normalises dot segments. So every part of a path that comes from object data goes
through `api_path`, which accepts only valid Kubernetes names (RFC 1123 labels for namespaces,
DNS subdomains for object names, as the apiserver's own validation), and the client refuses any
path with a segment that could not be a name (`check_path`): a second line, not the first.
"""

from __future__ import annotations

import re

__all__ = [
    "InvalidName",
    "InvalidPath",
    "api_path",
    "check_path",
    "name_problem",
    "valid_label",
    "valid_name",
]

#: k8s.io/apimachinery/pkg/util/validation: DNS1123LabelMaxLength, DNS1123SubdomainMaxLength.
LABEL_MAX = 63
SUBDOMAIN_MAX = 253

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# Fixed parts (group, version, resource, subresource) and, in check_path, any segment at all.
_SEGMENT = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9._]*[A-Za-z0-9])?")


class InvalidName(ValueError):
    """A reference that is not a valid Kubernetes name; the message says which and why."""


class InvalidPath(ValueError):
    """A path the client will not send: a segment that is no name (``..``, ``%2e``, ``a/b``)."""


def name_problem(value: object, *, label: bool = False) -> str | None:
    """Why ``value`` is not a valid object name (a DNS label when ``label``), or None."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    limit = LABEL_MAX if label else SUBDOMAIN_MAX
    if len(value) > limit:
        return f"must be at most {limit} characters"
    if not (_LABEL if label else _SUBDOMAIN).fullmatch(value):
        kind = "an RFC 1123 label" if label else "a DNS subdomain"
        return (f"must be {kind}: lower-case letters, digits and '-'"
                f"{'' if label else ' and .'}, starting and ending with a letter or digit")
    return None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def valid_name(value: object, what: str) -> str:
    """``value`` when it is a valid object name (DNS subdomain); InvalidName otherwise."""
    problem = name_problem(value)
    if problem:
        raise InvalidName(f"{what} {_shown(value)} is not a valid name: it {problem}")
    return str(value)


def valid_label(value: object, what: str) -> str:
    """``value`` when it is a valid namespace name (RFC 1123 label); InvalidName otherwise."""
    problem = name_problem(value, label=True)
    if problem:
        raise InvalidName(f"{what} {_shown(value)} is not a valid name: it {problem}")
    return str(value)


def _fixed(part: str) -> str:
    if not _SEGMENT.fullmatch(part) or ".." in part:
        raise InvalidPath(f"invalid API path part {_shown(part)}")
    return part


def api_path(resource: str, name: str | None = None, *, namespace: str | None = None,
             group: str = "", version: str = "v1", sub: str | None = None) -> str:
    """The path of ``resource`` (a plural, e.g. ``secrets``) in ``group``/``version``: of one
    object when ``name`` is given, in ``namespace`` when one is given. The namespace must be an
    RFC 1123 label and the name a DNS subdomain, or InvalidName is raised and nothing is sent."""
    out = f"/apis/{_fixed(group)}/{_fixed(version)}" if group else f"/api/{_fixed(version)}"
    if namespace is not None:
        out += "/namespaces/" + valid_label(namespace, "namespace")
    out += "/" + _fixed(resource)
    if name is not None:
        out += "/" + valid_name(name, resource.rstrip("s") or resource)
    if sub is not None:
        out += "/" + _fixed(sub)
    return out


def check_path(path: str) -> str:
    """``path`` when every segment could be a name or an API part; InvalidPath otherwise.

    Refuses empty segments, ``.`` and ``..``, percent-escapes, query or fragment characters,
    backslashes, white space and anything outside ASCII letters, digits, ``-``, ``.``, ``_``.
    """
    if not isinstance(path, str) or not path.startswith("/") or len(path) > 2048:
        raise InvalidPath(f"refusing to request {_shown(path)}: not an absolute API path")
    for segment in path[1:].split("/"):
        if not _SEGMENT.fullmatch(segment) or ".." in segment:
            raise InvalidPath(f"refusing to request {_shown(path)}: segment "
                              f"{_shown(segment)} is not a name")
    return path
