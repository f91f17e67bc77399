"""postStart and preStop hooks of VM pods, run by the facade as a kubelet runs them.

A hook is a container's ``lifecycle.postStart`` or ``lifecycle.preStop`` handler:

- ``exec``: the command run in the guest through the provider's Exec (the path of ``kubectl
  exec``), exit code 0 is success;
- ``httpGet``: a GET to the pod's own IP (a ``host`` naming another address fails, as a probe's
  does), 200-399 is success;
- ``sleep``: the facade waits ``seconds``;
- ``tcpSocket`` is not run (a kubelet does not run it either): the hook fails, saying so.

Where they run: postStart by ``probes.ProbeManager`` once per run of the VM (its container is
not started, and its probes wait, until the hook succeeded; a failure posts
``FailedPostStartHook`` and kills the VM); preStop by ``termination.Terminations`` when a pod
whose VM runs is deleted, before the guest is asked to shut down (a failure posts
``FailedPreStopHook`` and the shutdown goes on).
"""

from __future__ import annotations

import asyncio
from typing import Final

from vmlet_facade.guestactions import ExecRunner, act
from vmlet_facade.kube.objects import Obj

__all__ = [
    "FAILED_POST_START",
    "FAILED_PRE_STOP",
    "POST_START",
    "POST_START_TIMEOUT",
    "PRE_STOP",
    "hooks_of",
    "run_hook",
]

POST_START: Final = "postStart"
PRE_STOP: Final = "preStop"
#: The Warning Events of a hook that failed, as a kubelet names them.
FAILED_POST_START: Final = "FailedPostStartHook"
FAILED_PRE_STOP: Final = "FailedPreStopHook"
#: A postStart hook that has not ended after this many seconds has failed. (A kubelet waits
#: forever; a VM whose guest never answers would then never be started.)
POST_START_TIMEOUT: Final = 300.0
#: The longest sleep hook honoured, in seconds (a preStop sleep ends at the grace period anyway).
MAX_SLEEP: Final = 3600


def hooks_of(pod: Obj, which: str) -> list[tuple[str, Obj]]:
    """(container name, handler) of each container of ``pod`` with a ``which`` hook."""
    out = []
    for container in pod.get("spec", {}).get("containers") or []:
        handler = (container.get("lifecycle") or {}).get(which)
        if isinstance(handler, dict) and handler:
            out.append((str(container.get("name", "")), handler))
    return out


def _described(handler: Obj) -> str:
    """The handler as a kubelet shows it in a failed hook's Event."""
    if isinstance(action := handler.get("exec"), dict):
        return f"Exec lifecycle hook ({action.get('command') or []})"
    if isinstance(action := handler.get("httpGet"), dict):
        return f"HTTP lifecycle hook ({action.get('path') or '/'})"
    if isinstance(action := handler.get("sleep"), dict):
        return f"Sleep lifecycle hook ({action.get('seconds')})"
    return "Lifecycle hook"


async def _run(handler: Obj, pod: Obj, container: str, ip: str,
               run: ExecRunner | None) -> tuple[bool, str]:
    if isinstance(action := handler.get("sleep"), dict):
        seconds = action.get("seconds")
        if not isinstance(seconds, int) or not 0 <= seconds <= MAX_SLEEP:
            return False, f"sleep seconds {seconds!r} is not 0-{MAX_SLEEP}"
        await asyncio.sleep(seconds)
        return True, ""
    if isinstance(handler.get("tcpSocket"), dict):
        return False, "tcpSocket is not a lifecycle handler: it is not run (nor by a kubelet)"
    if not any(isinstance(handler.get(k), dict) for k in ("exec", "httpGet")):
        return False, "the hook has no exec, httpGet or sleep"
    return await act(handler, pod, container, ip, run, "hook")


async def run_hook(handler: Obj, pod: Obj, container: str, ip: str, run: ExecRunner | None,
                   seconds: float) -> str | None:
    """Runs the hook ``handler`` of ``pod``'s ``container`` (its VM at ``ip``) within
    ``seconds``: None when it succeeded, else the message of its failure's Event."""
    meta = pod.get("metadata", {})
    try:
        async with asyncio.timeout(max(seconds, 0.0)):
            ok, why = await _run(handler, pod, container, ip, run)
    except TimeoutError:
        ok, why = False, f"no end within {seconds:.3g}s"
    except Exception as err:  # the hook's own fault is a failed hook, not a crash
        ok, why = False, f"the hook could not be run: {type(err).__name__}"
    if ok:
        return None
    return (f'{_described(handler)} for Container "{container}" in Pod '
            f'"{meta.get("name")}_{meta.get("namespace")}({meta.get("uid")})" failed - '
            f"error: {why}")
