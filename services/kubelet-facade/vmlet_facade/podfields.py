"""What of a pod spec vmlet does not honour, named in one Warning Event when the pod is accepted.

A VM is not a container: security contexts, host namespaces and the like have nothing to act
on. Rather than ignore them silently, the pod controller names every
such field a pod sets (``unhonoured``) in one Event (``warning_message``, reason
``FIELDS_NOT_HONOURED``). The table of what is honoured, mapped or ignored is in
docs/provider-guide.md ("What of a pod spec vmlet honours").

The walk is over the pod's JSON against a description of what vmlet honours, so a field this
module does not know (a newer apiserver's) is named as well. A field at the value the apiserver
defaults it to, the service-account token volume the apiserver injects (``kube-api-access-*``)
and its mounts are not named: the pod did not ask for them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from vmlet_facade.kube.objects import Obj

__all__ = [
    "FIELDS_NOT_HONOURED",
    "GUIDE",
    "MAX_MESSAGE",
    "MAX_NAMED",
    "TOKEN_VOLUME_PREFIX",
    "is_token_volume",
    "unhonoured",
    "warning_message",
]

#: The reason of the Warning Event that names the fields of a pod vmlet does not honour.
FIELDS_NOT_HONOURED: Final = "FieldsNotHonoured"
#: Where the Event sends its reader: the table of what of a pod spec vmlet honours.
GUIDE: Final = "docs/provider-guide.md"
#: At most this many fields are named in the Event; the rest are counted.
MAX_NAMED: Final = 10
#: The Event's message stays within this many characters (EventRecorder cuts at 1024).
MAX_MESSAGE: Final = 1000
#: The prefix of the projected volume the ServiceAccount admission plugin adds to every pod.
TOKEN_VOLUME_PREFIX: Final = "kube-api-access-"

_TOKEN_SOURCES = frozenset({"serviceAccountToken", "configMap", "downwardAPI"})
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class _Context:
    """What a rule may need of the whole pod."""

    token_volumes: frozenset[str]  # the injected service-account token volumes
    vm_image: str  # the image the VM boots (its container's)
    vm_mounts: frozenset[tuple[str, str]]  # (volume, mountPath) of the VM's container


# How a value is judged: a dict is an object whose fields have these rules (a field it does not
# list is named); the classes below are the other rules.
@dataclass(frozen=True)
class _Honoured:
    """Honoured, whatever the value holds."""


@dataclass(frozen=True)
class _Default:
    """Named unless at one of ``values``."""

    values: tuple[object, ...]


@dataclass(frozen=True)
class _Each:
    """A list whose items have one rule; an item is shown by its ``key`` field, else its index."""

    item: Rule
    key: str = "name"


@dataclass(frozen=True)
class _Keys:
    """A map of which only the ``honoured`` keys are; any other is named in brackets."""

    honoured: frozenset[str]


@dataclass(frozen=True)
class _Custom:
    """A rule that decides for itself: ``judge(value, path, context, out)``."""

    judge: Callable[[Any, str, _Context, list[str]], None]


Rule: TypeAlias = "_Honoured | _Default | _Each | _Keys | _Custom | Mapping[str, Rule]"
_OK: Final = _Honoured()
_FALSE = _Default((False,))

# -- containers --------------------------------------------------------------------------------

_ENV: Final[Mapping[str, Rule]] = {
    "name": _OK, "value": _OK,
    "valueFrom": {"configMapKeyRef": _OK, "secretKeyRef": _OK, "fieldRef": _OK,
                  "resourceFieldRef": _OK},
}
_SIZE = _Keys(frozenset({"cpu", "memory"}))
_MOUNT: Final[Mapping[str, Rule]] = {"name": _OK, "mountPath": _OK, "readOnly": _OK}
# What a container shares with an init container (whose commands run in the VM too).
_COMMON: Final[Mapping[str, Rule]] = {
    "name": _OK, "command": _OK, "args": _OK,
    "env": _Each(_ENV),
    "envFrom": _Each({"configMapRef": _OK, "secretRef": _OK, "prefix": _OK}, key=""),
    # There is no image to pull: any pull policy is moot.
    "imagePullPolicy": _OK,
    "terminationMessagePath": _Default(("/dev/termination-log",)),
    "terminationMessagePolicy": _Default(("File",)),
    "stdin": _FALSE, "stdinOnce": _FALSE, "tty": _FALSE,
}


def _mount(init: bool) -> _Custom:
    def judge(value: Any, path: str, ctx: _Context, out: list[str]) -> None:
        if not isinstance(value, dict):
            out.append(path)
            return
        if value.get("name") in ctx.token_volumes:
            return
        if init and (str(value.get("name")), str(value.get("mountPath"))) not in ctx.vm_mounts:
            out.append(path)  # an init container sees the VM's mounts, not its own
            return
        _walk(value, _MOUNT, path, ctx, out)

    return _Custom(judge)


def _init_image(value: Any, path: str, ctx: _Context, out: list[str]) -> None:
    """An init container's image is not booted: its commands run in the VM's."""
    if value != ctx.vm_image:
        out.append(path)


# Run by the facade (vmlet_facade.probes) against the pod's own IP: a `host` is named.
_PORT: Final[Mapping[str, Rule]] = {"port": _OK}
_HTTP_GET: Final[Mapping[str, Rule]] = {**_PORT, "path": _OK, "scheme": _OK,
                                        "httpHeaders": _Each({"name": _OK, "value": _OK})}
_PROBE: Final[Mapping[str, Rule]] = {
    "tcpSocket": _PORT,
    "httpGet": _HTTP_GET,
    "exec": {"command": _OK},
    **dict.fromkeys(("initialDelaySeconds", "periodSeconds", "timeoutSeconds",
                     "successThreshold", "failureThreshold"), _OK),
}
# Run by the facade (vmlet_facade.hooks); tcpSocket is no hook a kubelet runs either: named.
_HOOK: Final[Mapping[str, Rule]] = {"exec": {"command": _OK}, "httpGet": _HTTP_GET,
                                    "sleep": {"seconds": _OK}}
_CONTAINER: Final[Mapping[str, Rule]] = {
    **_COMMON,
    "lifecycle": {"postStart": _HOOK, "preStop": _HOOK},
    "readinessProbe": _PROBE,
    "startupProbe": _PROBE,
    "livenessProbe": {**_PROBE, "terminationGracePeriodSeconds": _OK},
    "image": _OK,
    "resources": {"requests": _SIZE, "limits": _SIZE},
    "resizePolicy": _Each({"resourceName": _OK, "restartPolicy": _Default(("NotRequired",))},
                          key="resourceName"),
    "ports": _Each({"containerPort": _OK, "name": _OK, "protocol": _OK}, key="containerPort"),
    "volumeMounts": _Each(_mount(init=False)),
}
_INIT_CONTAINER: Final[Mapping[str, Rule]] = {
    **_COMMON,
    "image": _Custom(_init_image),
    "volumeMounts": _Each(_mount(init=True)),
}

# -- volumes -----------------------------------------------------------------------------------

_VOLUME: Final[Mapping[str, Rule]] = {
    "name": _OK,
    "persistentVolumeClaim": {"claimName": _OK, "readOnly": _FALSE},  # no read-only attach yet
}
# The facade resolves these and sends them (FilesSource, ScratchSource), but no provider of this
# repository puts them into the guest yet: named, even when empty (``emptyDir: {}``).
_UNDELIVERED = frozenset({"secret", "configMap", "downwardAPI", "projected", "emptyDir"})


def _volume(value: Any, path: str, ctx: _Context, out: list[str]) -> None:
    if isinstance(value, dict):
        if value.get("name") in ctx.token_volumes:
            return  # documented: the token is not given to VMs
        out.extend(f"{path}.{kind}" for kind in sorted(value) if kind in _UNDELIVERED)
        value = {k: v for k, v in value.items() if k not in _UNDELIVERED}
    _walk(value, _VOLUME, path, ctx, out)


# -- the pod -----------------------------------------------------------------------------------

_SCHEDULED = ("nodeName", "nodeSelector", "affinity", "tolerations", "topologySpreadConstraints",
              "schedulingGates", "schedulerName", "priorityClassName", "priority",
              "preemptionPolicy")
_POD_SPEC: Final[Mapping[str, Rule]] = {
    "containers": _Each(_CONTAINER),
    "initContainers": _Each(_INIT_CONTAINER),
    "volumes": _Each(_Custom(_volume)),
    # Honoured by Kubernetes' scheduler before the pod reaches vmlet.
    **dict.fromkeys(_SCHEDULED, _OK),
    "automountServiceAccountToken": _OK,  # the token is never given to a VM
    "enableServiceLinks": _OK,  # service variables are never given: false is what vmlet does
    "imagePullSecrets": _OK,  # no image is pulled (ServiceAccount admission may add them)
    "restartPolicy": _OK,
    "dnsPolicy": _Default(("ClusterFirst",)),
    "terminationGracePeriodSeconds": _OK,  # a delete's and a kill's grace (termination)
    "serviceAccountName": _Default(("default",)),
    "serviceAccount": _Default(("default",)),
    "hostNetwork": _FALSE, "hostPID": _FALSE, "hostIPC": _FALSE,
    "shareProcessNamespace": _FALSE, "setHostnameAsFQDN": _FALSE,
    "hostUsers": _Default((True,)),
}

# -- the walk ----------------------------------------------------------------------------------


def _unset(value: object) -> bool:
    """Whether a field holds nothing (as the apiserver omits it)."""
    return value is None or value == "" or value == [] or value == {}


def _bracket(key: object) -> str:
    return f"[{key}]"


def _walk(value: Any, rule: Rule, path: str, ctx: _Context, out: list[str]) -> None:
    if isinstance(rule, _Honoured):
        return
    if isinstance(rule, _Default):
        if not any(value == v and type(value) is type(v) for v in rule.values):
            out.append(path)
        return
    if isinstance(rule, _Custom):
        rule.judge(value, path, ctx, out)
        return
    if isinstance(rule, _Each):
        if not isinstance(value, list):
            out.append(path)
            return
        for i, item in enumerate(value):
            key = item.get(rule.key) if rule.key and isinstance(item, dict) else None
            _walk(item, rule.item, path + _bracket(i if _unset(key) else key), ctx, out)
        return
    if not isinstance(value, dict):
        out.append(path)
        return
    if isinstance(rule, _Keys):
        out.extend(path + _bracket(k) for k in sorted(value)
                   if k not in rule.honoured and not _unset(value[k]))
        return
    for name in sorted(value):
        if _unset(value[name]):
            continue
        sub = f"{path}.{name}" if _PLAIN_KEY.fullmatch(name) else path + _bracket(name)
        if name in rule:
            _walk(value[name], rule[name], sub, ctx, out)
        else:
            out.append(sub)


def is_token_volume(volume: Obj) -> bool:
    """Whether ``volume`` is the service-account token volume the apiserver injects (its name,
    and a token source among the sources it projects)."""
    sources = (volume.get("projected") or {}).get("sources") or []
    return (str(volume.get("name", "")).startswith(TOKEN_VOLUME_PREFIX)
            and all(isinstance(s, dict) and set(s) <= _TOKEN_SOURCES for s in sources)
            and any("serviceAccountToken" in s for s in sources))


def _context(spec: Obj) -> _Context:
    volumes = [v for v in spec.get("volumes") or [] if isinstance(v, dict)]
    containers = [c for c in spec.get("containers") or [] if isinstance(c, dict)]
    first = containers[0] if containers else {}
    return _Context(
        token_volumes=frozenset(str(v["name"]) for v in volumes if is_token_volume(v)),
        vm_image=str(first.get("image", "")),
        vm_mounts=frozenset((str(m.get("name")), str(m.get("mountPath")))
                            for m in first.get("volumeMounts") or [] if isinstance(m, dict)),
    )


def unhonoured(pod: Obj) -> list[str]:
    """The paths (``spec.containers[vm].livenessProbe``) of the fields ``pod`` sets that vmlet
    does not honour, each once, in a stable order (field names sorted, lists in their order)."""
    spec = pod.get("spec") or {}
    if not isinstance(spec, dict):
        return ["spec"]
    out: list[str] = []
    _walk(spec, _POD_SPEC, "spec", _context(spec), out)
    return list(dict.fromkeys(out))


def warning_message(fields: list[str]) -> str:
    """The message of the one ``FIELDS_NOT_HONOURED`` Event naming ``fields``: up to
    ``MAX_NAMED`` of them, the rest counted, within ``MAX_MESSAGE`` characters."""
    count = len(fields)
    head = f"vmlet does not honour {count} field{'' if count == 1 else 's'} this pod sets: "
    tail = f'. See {GUIDE}, "What of a pod spec vmlet honours".'
    named: list[str] = []
    for name in fields[:MAX_NAMED]:
        shown = name if len(name) <= 200 else name[:197] + "..."
        rest = count - len(named) - 1
        more = f" and {rest} more" if rest else ""
        if len(head + ", ".join([*named, shown]) + more + tail) > MAX_MESSAGE:
            break
        named.append(shown)
    rest = count - len(named)
    return head + ", ".join(named) + (f" and {rest} more" if rest else "") + tail
