"""Pods bound to vmlet nodes, carried to their provider and back.

One list-then-watch per node (field selector spec.nodeName) feeds a cache; every change of a pod
is handled by the one worker of its UID (queueing.SerialWorkers): create, update or delete at the
provider, references resolved first. Status comes back from the provider's NotifyPods stream and
is written through the status subresource, coalesced per pod. At start the provider's pods are
adopted (no second CreatePod); pods Kubernetes no longer has are removed from it, but a VM pod
gone is not a decision to destroy (or stop) its VM, which its VirtualMachine's next pod adopts.
A deleted pod whose VM runs first ends gracefully (``termination``). A node taken over from
another replica (``shards``) is adopted first; one given away is only no longer followed.

Nothing is handled for a pod before the first list of its node is complete and its orphans are
settled (the workers' readiness gate). A pod's identity and keep-on-delete come from
``ownership`` only, decided once per pod (at its create) and kept for its delete.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

import grpc

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_contract import ProviderError, is_retryable
from vmlet_facade import metrics
from vmlet_facade.adoption import adopt, remove_orphans
from vmlet_facade.events import EventRecorder
from vmlet_facade.kube import SYNCED, ApiError, KubeClient, list_and_watch
from vmlet_facade.kube.objects import Obj, Pod
from vmlet_facade.operationpods import carry_out, operation_of
from vmlet_facade.outage import Outage, during
from vmlet_facade.outagetolerance import tolerate_outages
from vmlet_facade.ownership import Ownership, derive
from vmlet_facade.ownstatus import rejected, waiting
from vmlet_facade.podconvert import (
    same_intent,
    spec_fingerprint,
    status_to_k8s,
    to_provider_pod,
    with_host_ip,
)
from vmlet_facade.podfields import FIELDS_NOT_HONOURED, unhonoured, warning_message
from vmlet_facade.podstate import PodState, uids_on
from vmlet_facade.probes import ProbeManager
from vmlet_facade.provider import PodHost
from vmlet_facade.quantity import InvalidQuantity
from vmlet_facade.queueing import Backoff, SerialWorkers
from vmlet_facade.references import MissingReference, Resolved, Resolver
from vmlet_facade.restarts import RestartManager, after_a_run
from vmlet_facade.termination import Terminations, kill
from vmlet_facade.vmapi import lookup_vm

__all__ = ["PodController", "Route"]

log = logging.getLogger(__name__)

P = TypeVar("P", bound=PodHost)
PERMANENT_PENALTY = 3  # back-off doublings added for an error the provider calls permanent
_ENDED = ("Succeeded", "Failed")


#: Runs a command in a pod's guest through its provider: (exit code, output or why not).
GuestExec = Callable[[P, Obj, str, list[str]], Awaitable[tuple[int, str]]]


@dataclass(frozen=True)
class Route(Generic[P]):
    """Which provider backs a node, and the node's address (the pods' hostIP)."""

    provider: P
    host_ip: Callable[[], str]


def _key(pod: Obj) -> tuple[str, str]:
    return pod["metadata"]["namespace"], pod["metadata"]["name"]


class PodController(Generic[P]):
    """Carries pods on vmlet nodes to providers and their status back.

    Implements kubeletapi's ``PodDirectory``: the kubelet API reads pods through it."""

    def __init__(self, client: KubeClient, resolver: Resolver, events: EventRecorder, *,
                 concurrency: int = 64, status_concurrency: int = 32,
                 guest_exec: GuestExec[P] | None = None) -> None:
        self._client = client
        self._resolver = resolver
        self._events = events
        self.routes: dict[str, Route[P]] = {}
        self._states: dict[str, PodState] = {}  # uid -> state; dropped once all of it is gone
        self._by_name: dict[tuple[str, str], str] = {}  # (namespace, name) -> uid of the pod
        self._node_ready: dict[str, asyncio.Event] = {}  # node -> first list and orphans done
        # A pod's VM may take minutes to become possible (an IaaS outage, a missing image):
        # long waits, with jitter, as many pods fail together. A status write waits little.
        self._sync = SerialWorkers(self._handle, ready=self._pod_ready, concurrency=concurrency,
                                   name="podsync", backoff=Backoff(cap=300.0, jitter=0.1))
        self._status = SerialWorkers(self._write_status, ready=self._pod_ready,
                                     concurrency=status_concurrency, name="podstatus",
                                     backoff=Backoff(cap=10.0))
        self._tasks: list[asyncio.Task[None]] = []
        self._node_tasks: dict[str, asyncio.Task[None]] = {}  # node -> its pods' watch
        self._providers: set[str] = set()
        self._outages: dict[str, Outage] = {}  # provider name -> the outage its pods show
        self._guest_exec = guest_exec
        self.probes = ProbeManager(self._status.submit, functools.partial(events.emit,
                                   warning=True), self._probe_exec if guest_exec else None,
                                   kill=self._kill_vm)
        self.restarts = RestartManager(self._start_vm, self._status.submit, events.emit)
        self.terminations = Terminations(self._stop_vm, events.emit, self._sync.submit,
                                         self._probe_exec if guest_exec else None)

    # -- wiring ------------------------------------------------------------------------------

    async def adopt(self, provider: P) -> None:
        """Learn the pods ``provider`` already runs, so none is created twice."""
        await adopt(provider, self._state)

    def add_node(self, node: str, route: Route[P], *, adopt: bool = False) -> None:
        """Start following the pods bound to ``node``; with ``adopt``, first learn the pods the
        provider runs there (a node taken over from another replica)."""
        if node in self.routes:
            self.routes[node] = route
            return
        self.routes[node] = route
        self._node_ready.setdefault(node, asyncio.Event())
        self._node_tasks[node] = asyncio.get_running_loop().create_task(
            self._watch_node(node, route.provider if adopt else None), name=f"pods:{node}")
        if route.provider.name not in self._providers:
            self._providers.add(route.provider.name)
            self._tasks.append(asyncio.get_running_loop().create_task(
                self._follow_provider(route.provider), name=f"notify:{route.provider.name}"))

    def remove_node(self, node: str) -> None:
        """Stop following the pods bound to ``node`` (another replica serves it now): their
        records here go, with their probes and timers; nothing is deleted or stopped."""
        self.routes.pop(node, None)
        self._node_ready.pop(node, None)
        if (task := self._node_tasks.pop(node, None)) is not None:
            task.cancel()
        for uid in uids_on(self._states, {node}):
            for forget in (self.probes.forget, self.restarts.forget, self.terminations.forget,
                           self._sync.cancel_retry, self._status.cancel_retry):
                forget(uid)
            pod = self._states.pop(uid).pod
            if pod is not None and self._by_name.get(_key(pod)) == uid:
                del self._by_name[_key(pod)]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._node_tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.probes.stop()
        await self.restarts.stop()
        await self.terminations.stop()
        await self._sync.stop()
        await self._status.stop()

    # -- the kubelet API's view (kubeletapi.directory.PodDirectory) -------------------------

    def pods_named(self, namespace: str, name: str) -> list[Pod]:
        """The pods ``namespace/name`` Kubernetes has (a deleted one and its successor may
        both be there for a while)."""
        return [cast(Pod, s.pod) for s in self._states.values() if s.pod is not None
                and _key(s.pod) == (namespace, name)]

    def pods_on(self, nodes: Collection[str]) -> list[Pod]:
        """The pods Kubernetes has bound to any of ``nodes``."""
        return [cast(Pod, self._states[uid].pod) for uid in uids_on(self._states, nodes, True)]

    def provider_of(self, node: str) -> P | None:
        """The provider backing ``node``, once its pods are followed."""
        route = self.routes.get(node)
        return route.provider if route is not None else None

    # -- state -------------------------------------------------------------------------------

    def _state(self, uid: str) -> PodState:
        return self._states.setdefault(uid, PodState())

    def _pod(self, uid: str) -> Obj | None:
        return state.pod if (state := self._states.get(uid)) is not None else None

    def _prune(self, uid: str) -> None:
        if (state := self._states.get(uid)) is not None and state.empty:
            del self._states[uid]

    # -- Kubernetes side ---------------------------------------------------------------------

    async def _pod_ready(self, uid: str) -> None:
        """The readiness gate: the pod's node has been listed and its orphans settled."""
        state = self._states.get(uid)
        pod = (state.pod or state.gone) if state is not None else None
        node = (pod or {}).get("spec", {}).get("nodeName", "")
        ready = self._node_ready.get(node)
        if ready is not None and not ready.is_set():
            await ready.wait()

    async def _watch_node(self, node: str, adopting: P | None) -> None:
        ready = self._node_ready.setdefault(node, asyncio.Event())
        if adopting is not None:
            await adopt(adopting, self._state, node)
        async for event in list_and_watch(self._client, "/api/v1/pods",
                                          {"fieldSelector": f"spec.nodeName={node}"}):
            if event.type == SYNCED:
                if not ready.is_set():
                    for uid in await remove_orphans(self._states, node,
                                                    self.routes[node].provider):
                        self._prune(uid)
                    ready.set()
                continue
            pod = event.object
            uid = pod["metadata"]["uid"]
            if event.type == "DELETED":
                # A relist reports only the names of what vanished: keep the pod as last seen.
                state = self._state(uid)
                state.gone, state.pod = state.pod or pod, None
                if self._by_name.get(_key(pod)) == uid:
                    self._by_name.pop(_key(pod), None)
            else:
                state = self._state(uid)
                old, state.pod = state.pod, pod
                self._by_name[_key(pod)] = uid
                # Only its status moved (the facade's own write of a failure): a back-off
                # stands, or a failing create would be retried at every write.
                self._sync.submit(uid, wake=old is None or not same_intent(old, pod))
                continue
            self._sync.submit(uid)

    async def _handle(self, uid: str) -> None:
        pod = self._pod(uid)
        if pod is None:
            await self._forget(uid)
            return
        route = self.routes.get(pod["spec"].get("nodeName", ""))
        if route is None:
            return
        try:
            if pod["metadata"].get("deletionTimestamp"):
                await self._delete(uid, pod, route)
            else:
                state = self._state(uid)
                if state.rejected or pod.get("status", {}).get("phase") in _ENDED:
                    return  # it ended: nothing more to make or change (its VM is kept, off)
                await tolerate_outages(self._client, pod)  # before any VM: see the module
                if not state.created:
                    await self._create(uid, pod, route)
                elif state.operation:
                    pass
                elif state.fingerprint is None:  # adopted at start: write what it has now
                    state.fingerprint = spec_fingerprint(pod)
                    if state.latest is not None:  # and act on it (a VM that stopped meanwhile)
                        self._set_status(uid, state.latest)
                    self._status.submit(uid)
                elif state.fingerprint != spec_fingerprint(pod):
                    await self._update(uid, pod, route)
        except MissingReference as err:
            await self._events.emit(pod, err.reason, err.message, warning=True)
            self._set_status(uid, waiting("CreateContainerConfigError", err.message))
            self._retry(uid)
        except ProviderError as err:
            self._retry(uid, permanent=not is_retryable(err.code))
        except ApiError as err:
            if not err.not_found:
                log.warning("pod %s: %s", uid, err)
                self._retry(uid)
        except InvalidQuantity as err:
            # Unreadable here (a quantity the apiserver took): rejected as at a kubelet's
            # admission. Anything else is vmlet's fault: SerialWorkers logs it and retries.
            log.warning("pod %s/%s cannot be handled: %s", *_key(pod), err)
            await self._reject(uid, pod, "InvalidPodSpec", f"vmlet cannot handle this pod: {err}")

    def _retry(self, uid: str, permanent: bool = False) -> None:
        self._sync.retry(uid, penalty=PERMANENT_PENALTY if permanent else 0)

    async def _ownership(self, uid: str, pod: Obj) -> Ownership:
        """The ownership of ``pod``: as decided before (at its create), else derived now."""
        state = self._state(uid)
        if state.owner is None:
            state.owner = await derive(cast(Pod, pod),
                                       functools.partial(lookup_vm, self._client))
        return state.owner

    async def _create(self, uid: str, pod: Obj, route: Route[P]) -> None:
        if operation_of(typed := cast(Pod, pod)):
            status = await carry_out(self._client, typed, route.provider)
            state = self._state(uid)
            state.created, state.operation, state.fingerprint = True, True, None
            self._set_status(uid, status)
            return
        state = self._state(uid)
        if not state.told_unhonoured:
            state.told_unhonoured = True
            if fields := unhonoured(pod):
                await self._events.emit(pod, FIELDS_NOT_HONOURED, warning_message(fields),
                                        warning=True)
        pod = with_host_ip(pod, route.host_ip())
        ownership = await self._ownership(uid, pod)
        resolved = await self._resolver.resolve(pod)
        for reason, message in resolved.warnings:
            await self._events.emit(pod, reason, message, warning=True)
        request = to_provider_pod(pod, resolved, ownership)
        before = state.latest  # a failure's status, or nothing yet
        try:
            with metrics.provider_call("CreatePod"):
                status = await route.provider.create_pod(request)
        except ProviderError as err:
            if err.code == grpc.StatusCode.INVALID_ARGUMENT:
                # The provider will never run this spec: the pod fails, as a kubelet rejects a
                # pod at admission, so a Job counts it and a controller can replace it. Nothing
                # was made (the contract), and no VM is touched.
                await self._reject(uid, pod, err.reason, err.message)
                return
            await self._events.emit(pod, "ProviderCreateFailed", err.message, warning=True)
            self._set_status(uid, waiting(err.reason, err.message))
            raise
        state.created, state.fingerprint = True, spec_fingerprint(pod)
        if state.latest is before:  # else NotifyPods said something newer meanwhile
            self._set_status(uid, status)

    async def _reject(self, uid: str, pod: Obj, reason: str, message: str) -> None:
        """Fail ``pod`` for good: a Warning Event and phase Failed; never created here."""
        log.info("pod %s/%s rejected: %s", *_key(pod), message)
        self._state(uid).rejected = True  # until its Failed status is back: never created
        await self._events.emit(pod, reason, f"Pod was rejected: {message}", warning=True)
        self._set_status(uid, rejected(reason, message))

    async def _update(self, uid: str, pod: Obj, route: Route[P]) -> None:
        pod = with_host_ip(pod, route.host_ip())
        resolved = await self._resolver.resolve(pod)
        try:
            with metrics.provider_call("UpdatePod"):
                status = await route.provider.update_pod(
                    to_provider_pod(pod, resolved, await self._ownership(uid, pod)))
        except ProviderError as err:
            await self._events.emit(pod, "ProviderUpdateFailed", err.message, warning=True)
            raise
        state = self._state(uid)
        state.fingerprint = spec_fingerprint(pod)
        state.written = None  # the spec changed: so does the status written from it
        self._set_status(uid, status)

    async def _delete(self, uid: str, pod: Obj, route: Route[P]) -> None:
        self.restarts.forget(uid)  # a pending restart must not power on what is deleted
        state = self._state(uid)
        if state.operation:
            state.forget_provider_side()
        if state.created and self.terminations.pending(uid, pod, state.latest):
            return  # its VM ends gracefully first (termination); its worker is called back
        if state.created:
            ownership = await self._ownership(uid, pod)
            try:
                with metrics.provider_call("DeletePod"):
                    await route.provider.delete_pod(to_provider_pod(pod, Resolved(), ownership))
            except ProviderError as err:
                await self._events.emit(pod, "ProviderDeleteFailed", err.message, warning=True)
                raise
            state.forget_provider_side()
        ns, name = _key(pod)
        try:
            await self._client.delete(f"/api/v1/namespaces/{ns}/pods/{name}", {
                "apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": uid}})
        except ApiError as err:
            if not (err.not_found or err.conflict):
                raise

    async def _forget(self, uid: str) -> None:
        """The pod is gone from Kubernetes (force-deleted or deletion finished)."""
        self.probes.forget(uid)
        self.restarts.forget(uid)
        self.terminations.forget(uid)
        state = self._state(uid)
        pod, state.gone = state.gone, None
        if state.created and not state.operation and pod is not None:
            route = self.routes.get(pod["spec"].get("nodeName", ""))
            if route is not None:
                try:
                    ownership = await self._ownership(uid, pod)
                    with metrics.provider_call("DeletePod"):
                        await route.provider.delete_pod(to_provider_pod(pod, Resolved(), ownership))
                except ApiError:
                    state.gone = pod
                    self._retry(uid)
                    return
                except ProviderError as err:
                    if is_retryable(err.code):
                        state.gone = pod
                        self._retry(uid)
                        return
                    log.warning("pod %s not deleted at the provider: %s", uid, err)
        state.forget_provider_side()
        state.latest = state.written = state.adopted = state.owner = None
        self._prune(uid)

    # -- provider side -----------------------------------------------------------------------

    async def _follow_provider(self, provider: P) -> None:
        backoff = Backoff(base=0.2, cap=10.0)
        while True:
            try:
                async for msg in provider.watch_pods():
                    backoff.forget(provider.name)
                    uid = self._by_name.get((msg.ref.namespace, msg.ref.name))
                    if uid is None or (msg.ref.uid and msg.ref.uid != uid):
                        continue
                    self._set_status(uid, msg.status)
            except ProviderError as err:
                log.info("pod stream of %s ended: %s", provider.name, err)
            await asyncio.sleep(backoff.failed(provider.name))

    def set_outage(self, provider: str, outage: Outage | None) -> None:
        """Show ``outage`` on the pods of ``provider``'s nodes (None: it is over; they show
        what the provider last said again)."""
        if self._outages.get(provider) == outage:
            return
        if outage is None:
            self._outages.pop(provider, None)
        else:
            self._outages[provider] = outage
        served = {node for node, route in self.routes.items() if route.provider.name == provider}
        for uid in uids_on(self._states, served, current=True):
            self._status.submit(uid)

    def _set_status(self, uid: str, status: pb.PodStatus) -> None:
        state = self._state(uid)
        state.latest = status = after_a_run(status, state.pod)
        self.probes.sees(uid, state.pod, status)
        self.restarts.sees(uid, state.pod, status)
        self._status.submit(uid)

    async def _start_vm(self, uid: str) -> None:
        """Powers the pod's stopped VM on again (a restart its restartPolicy asks for)."""
        pod = self._pod(uid)
        route = self.routes.get((pod or {}).get("spec", {}).get("nodeName", ""))
        if pod is None or route is None or pod["metadata"].get("deletionTimestamp"):
            return
        request = to_provider_pod(pod, Resolved(), await self._ownership(uid, pod))
        with metrics.provider_call("StartPod"):
            status = await route.provider.start_pod(request)
        self._set_status(uid, status)

    async def _stop_vm(self, pod: Obj, grace: int) -> None:
        """Stops the pod's VM through StopPod, its guest given ``grace`` seconds."""
        route = self.routes.get(pod["spec"].get("nodeName", ""))
        if route is None:
            return
        uid = pod["metadata"]["uid"]
        request = to_provider_pod(pod, Resolved(), await self._ownership(uid, pod))
        with metrics.provider_call("StopPod"):
            status = await route.provider.stop_pod(request, grace)
        self._set_status(uid, status)

    async def _kill_vm(self, pod: Obj, container: str, grace: int, message: str) -> bool:
        """Kills a container whose liveness probe or postStart hook failed (``kill``)."""
        if pod["spec"].get("nodeName", "") not in self.routes:
            return False
        return await kill(self._events.emit, self._stop_vm, pod, grace, message)

    async def _probe_exec(self, pod: Obj, container: str, command: list[str]) -> tuple[int, str]:
        route = self.routes.get(pod["spec"].get("nodeName", ""))
        if route is None or self._guest_exec is None:
            return 1, "the pod's node is not served here"
        return await self._guest_exec(route.provider, pod, container, command)

    async def _write_status(self, uid: str) -> None:
        state = self._states.get(uid)
        if state is None:
            return
        status, pod = state.latest, state.pod
        if status is None or pod is None or pod["metadata"].get("deletionTimestamp") or \
                pod.get("status", {}).get("phase") in _ENDED:
            return  # a pod that ended keeps its status: Kubernetes refuses to change its phase
        route = self.routes.get(pod["spec"].get("nodeName", ""))
        outage = self._outages.get(route.provider.name) if route else None
        if outage is not None:
            status = during(status, outage)
        status, last_state = self.restarts.gate(uid, status)
        status, not_started = self.probes.gate(uid, status)
        raw = status.SerializeToString(deterministic=True) + ",".join(sorted(not_started)).encode()
        if state.written == raw:
            return
        body = {"status": status_to_k8s(status, pod, route.host_ip() if route else "",
                                        not_started, last_state)}
        ns, name = _key(pod)
        try:
            with metrics.status_write():
                await self._client.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status", body)
        except ApiError as err:
            if err.not_found:
                return
            log.warning("status of %s/%s not written: %s", ns, name, err)
            self._status.retry(uid)
            return
        state.written = raw  # the watch brings the updated pod
