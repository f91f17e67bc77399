"""One command run in a pod's guest to its end, for exec probes: the path of ``kubectl exec``
(the provider's Exec, with the guest login of the pod's SSH Secret), without a terminal."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final, cast

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kep
from vmlet_contract import ProviderError
from vmlet_facade.kube.objects import Obj, Pod
from vmlet_facade.kubeletapi.guestlogin import GuestLoginError, SecretReader, guest_credentials
from vmlet_facade.provider import KubeletEndpoints

__all__ = ["OUTPUT_LIMIT", "run_in_guest"]

#: At most this much of a command's output is kept (it becomes an Event's message).
OUTPUT_LIMIT: Final = 1024


async def _start_only(first: kep.ExecRequest,
                      done: asyncio.Event) -> AsyncIterator[kep.ExecRequest]:
    yield first
    await done.wait()  # no stdin: the request side stays open until the command ends


async def run_in_guest(client: SecretReader, provider: KubeletEndpoints, pod: Obj,
                       container: str, command: list[str]) -> tuple[int, str]:
    """Run ``command`` in ``pod``'s guest: (exit code, its output, or why it did not run)."""
    meta = pod["metadata"]
    try:
        credentials = await guest_credentials(client, cast(Pod, pod))
    except GuestLoginError as err:
        return 1, str(err)
    first = kep.ExecRequest(start=kep.ExecStart(
        namespace=meta["namespace"], pod_name=meta["name"], container_name=container,
        command=command, stdout=True, stderr=True, credentials=credentials))
    output = bytearray()
    done = asyncio.Event()
    responses = provider.exec(_start_only(first, done))
    try:
        async with contextlib.aclosing(responses):
            async for message in responses:
                which = message.WhichOneof("kind")
                if which in ("stdout", "stderr"):
                    output += getattr(message, which)[:OUTPUT_LIMIT - len(output)]
                elif which == "exit":
                    said = message.exit.message or output.decode(errors="replace")
                    return message.exit.exit_code, said.strip()[:OUTPUT_LIMIT]
    except ProviderError as err:
        return 1, err.message[:OUTPUT_LIMIT]
    finally:
        done.set()
    return 1, "the command ended without an exit code"
