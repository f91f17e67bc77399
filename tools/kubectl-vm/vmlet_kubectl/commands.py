"""The verbs: each edits a VirtualMachine or creates one of its operations, then, with --wait,
follows the resources' status until the goal, a failure or the deadline.

A VirtualMachine's status counts only once its observedGeneration has caught up with the edit,
so a status written before the edit is never taken for the answer. Waiting watches: each look
names the object it waits on (the VM, its pod, the operation) and the next look comes when that
object changes, from the resourceVersion looked at; a watch that ends (timeout, apiserver
restart, 410 Gone) only means looking again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vmlet_api import names as n
from vmlet_kubectl.api import Forbidden, NotFound, Obj, Target
from vmlet_kubectl.invocation import Invocation
from vmlet_kubectl.session import (
    BACKUP,
    MIGRATION,
    RESTORE,
    VM,
    Failure,
    Session,
    condition,
    ref,
)
from vmlet_kubectl.status import show_status
from vmlet_kubectl.units import format_duration, same_quantity

__all__ = ["COMMANDS", "Seen", "wait"]


@dataclass(frozen=True)
class Seen:
    """One look at what is being waited for."""

    done: bool
    summary: str  # printed whenever it changes
    detail: str = ""  # the last state seen, when the wait times out
    error: str | None = None  # the operation failed: stop waiting
    follow: Target | None = None  # what to watch for the next look (None: look after a pause)


def _target(resource: str, name: str, obj: Obj) -> Target:
    return resource, name, str((obj.get("metadata") or {}).get("resourceVersion") or "")


def wait(session: Session, what: str, goal: str, timeout: float, deadline: float,
         look: Callable[[], Seen]) -> None:
    """Look until done; a progress line whenever the summary changes; Failure on error/timeout."""
    last = None
    while True:
        seen = look()
        if seen.error:
            raise Failure(seen.error)
        if seen.done:
            return
        if seen.summary != last:
            session.say(f"{what}: {seen.summary}")
            last = seen.summary
        left = deadline - session.clock()
        if left <= 0:
            raise Failure(f"timed out after {format_duration(timeout)} waiting for {what} to be "
                          f"{goal}; last seen: {seen.detail or seen.summary}")
        session.wait_for_change(seen.follow, left)


# -- VirtualMachines ---------------------------------------------------------------------------

def _why(status: Obj) -> str:
    """The reason for the VM's state, from its conditions: a failure first, then Ready."""
    obj = {"status": status}
    failure = condition(obj, n.CONDITION_FAILURE)
    if failure and failure.get("status") == "True":
        return f"{failure.get('reason', '')}: {failure.get('message', '')}".strip(": ")
    ready = condition(obj, n.CONDITION_READY)
    if ready and ready.get("message"):
        return f"{ready.get('reason', '')}: {ready['message']}".strip(": ")
    return ""


#: What else a VM waited for still lacks, and what to watch for it (None: nothing lacks).
More = Callable[[Obj], tuple[str, Target] | None]


def _look_vm(session: Session, name: str, generation: int, goal: str,
             more: More | None = None) -> Callable[[], Seen]:
    """A look at VM ``name`` for ``goal``; ``more`` says what else is still pending, if any."""

    def look() -> Seen:
        try:
            vm = session.api.get(VM, name)
        except NotFound:
            return Seen(False, "gone", error=f'VirtualMachine "{name}" was deleted')
        follow = _target(VM, name, vm)
        status = vm.get("status") or {}
        state = str(status.get("state") or "no status")
        if int(status.get("observedGeneration") or 0) < generation:
            return Seen(False, f"{state} (the change is not yet seen by the controller)",
                        f"{state}, with status for generation "
                        f"{status.get('observedGeneration', 'none')} of {generation} "
                        "(is the vmlet facade running?)", follow=follow)
        why = _why(status)
        detail = f"{state} ({why})" if why else state
        if state == n.STATE_FAILED and goal == n.STATE_RUNNING:
            return Seen(False, state, detail,
                        error=f'VirtualMachine "{name}" Failed: {why or "no reason given"}')
        if state != goal:
            return Seen(False, state, detail, follow=follow)
        pending = more(vm) if more else None
        if pending:
            text, follow = pending
            return Seen(False, f"{state}, {text}", f"{detail}; {text}", follow=follow)
        return Seen(True, state, detail)

    return look


def _where(vm: Obj) -> str:
    status = vm.get("status") or {}
    text = f" on {status['nodeName']}" if status.get("nodeName") else ""
    if status.get("addresses"):
        text += f" ({', '.join(status['addresses'])})"
    return text


def _wait_vm(session: Session, inv: Invocation, generation: int, goal: str, deadline: float,
             more: More | None = None) -> Obj:
    wait(session, ref(VM, inv.name), goal, inv.timeout, deadline,
         _look_vm(session, inv.name, generation, goal, more))
    return session.get(VM, inv.name)


def _power(session: Session, inv: Invocation, replicas: int, deadline: float | None) -> None:
    goal, doing = (n.STATE_RUNNING, "starting") if replicas else (n.STATE_STOPPED, "stopping")
    vm = session.patch(VM, inv.name, {"spec": {"replicas": replicas}})
    generation = int(vm["metadata"].get("generation") or 1)
    name = ref(VM, inv.name)
    if deadline is None:
        status = vm.get("status") or {}
        if status.get("state") == goal and int(status.get("observedGeneration") or 0) >= generation:
            session.say(f"{name} is already {goal}")
        else:
            session.say(f"{name} {doing} (spec.replicas={replicas})")
        return
    vm = _wait_vm(session, inv, generation, goal, deadline)
    session.say(f"{name} is {goal}{_where(vm) if replicas else ''}")


def _deadline(session: Session, inv: Invocation) -> float:
    return session.clock() + inv.timeout


def start(session: Session, inv: Invocation) -> None:
    _power(session, inv, 1, _deadline(session, inv) if inv.wait else None)


def stop(session: Session, inv: Invocation) -> None:
    _power(session, inv, 0, _deadline(session, inv) if inv.wait else None)


def restart(session: Session, inv: Invocation) -> None:
    # Stopped must be reached before starting again, --wait or not: replicas 0 then 1 at once
    # could be seen by the controller as no change at all.
    deadline = _deadline(session, inv)
    _power(session, inv, 0, deadline)
    _power(session, inv, 1, deadline if inv.wait else None)


def resize(session: Session, inv: Invocation) -> None:
    size: Obj = {}
    if inv.cpu is not None:
        size["cpu"] = inv.cpu
    if inv.memory is not None:
        size["memory"] = inv.memory
    vm = session.patch(VM, inv.name, {"spec": size})
    spec = vm.get("spec") or {}
    generation = int(vm["metadata"].get("generation") or 1)
    wanted = f"{spec.get('cpu')} CPU, {spec.get('memory')} memory"
    running = int(spec.get("replicas", 1)) == 1
    if not inv.wait:
        session.say(f"{ref(VM, inv.name)} resizing to {wanted}")
        return

    def sized(current: Obj) -> tuple[str, Target] | None:
        return _size_pending(session, spec, current, running)

    vm = _wait_vm(session, inv, generation, n.STATE_RUNNING if running else n.STATE_STOPPED,
                  _deadline(session, inv), sized)
    session.say(f"{ref(VM, inv.name)} resized to {wanted}, "
                f"{n.STATE_RUNNING + _where(vm) if running else n.STATE_STOPPED}")


def _size_pending(session: Session, spec: Obj, vm: Obj,
                  running: bool) -> tuple[str, Target] | None:
    """What is left before ``vm`` has the size of ``spec`` (its status, then its pod's), and
    the object to watch for it."""
    status = vm.get("status") or {}
    if not (same_quantity(status.get("cpu"), spec.get("cpu"))
            and same_quantity(status.get("memory"), spec.get("memory"))):
        return (f"status says {status.get('cpu')} CPU, {status.get('memory')} memory",
                _target(VM, str(vm["metadata"]["name"]), vm))
    if not running or not status.get("podName"):
        return None
    pod_name = str(status["podName"])
    try:
        pod = session.api.get("pods", pod_name)
    except Forbidden:
        return None  # the VM's status is all this user may see
    except NotFound:
        return "waiting for the VM pod", ("pods", pod_name, "")
    follow = _target("pods", pod_name, pod)
    for ctype in ("PodResizePending", "PodResizeInProgress"):
        cond = condition(pod, ctype)
        if cond and cond.get("status") == "True":
            if cond.get("reason") == "Infeasible":
                raise Failure(f"the new size does not fit on {pod['spec'].get('nodeName')}: "
                              f"{cond.get('message', '')}")
            return f"{ctype} {cond.get('reason', '')}".strip(), follow
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for resources in [containers[0].get("resources") or {},
                      *[cs.get("resources") or {} for cs in statuses[:1]]]:
        limits = resources.get("limits") or {}
        if limits and not (same_quantity(limits.get("cpu"), spec.get("cpu"))
                           and same_quantity(limits.get("memory"), spec.get("memory"))):
            return (f"the VM pod has {limits.get('cpu')} CPU, {limits.get('memory')} memory",
                    follow)
    return None


# -- operations --------------------------------------------------------------------------------

def _operation(kind: str, name: str | None, generate: str, spec: Obj) -> Obj:
    # generateName keeps 58 characters of the prefix and adds 5 random ones.
    meta = {"name": name} if name else {"generateName": f"{generate[:57]}-"}
    return {"apiVersion": n.API_VERSION, "kind": kind, "metadata": meta, "spec": spec}


def _look_operation(session: Session, resource: str, name: str,
                    describe: Callable[[Obj], str]) -> Callable[[], Seen]:
    """A look at a Backup, Restore or Migration until its state is Succeeded."""

    def look() -> Seen:
        try:
            obj = session.api.get(resource, name)
        except NotFound:
            return Seen(False, "gone", error=f"{ref(resource, name)} was deleted")
        follow = _target(resource, name, obj)
        status = obj.get("status") or {}
        state = str(status.get("state") or n.STATE_PENDING)
        progress = condition(obj, n.CONDITION_COMPLETE) or {}
        why = f"{progress.get('reason', '')}: {progress.get('message', '')}".strip(": ")
        detail = f"{state} ({why})" if why else state
        if state == n.STATE_FAILED:
            failed = condition(obj, n.CONDITION_FAILED) or progress
            reason = f"{failed.get('reason', '')}: {failed.get('message', '')}".strip(": ")
            return Seen(False, state, detail,
                        error=f"{ref(resource, name)} Failed: {reason or 'no reason given'}")
        return Seen(state == n.STATE_SUCCEEDED, f"{state}{describe(obj)}", detail,
                    follow=follow)

    return look


def migrate(session: Session, inv: Invocation) -> None:
    vm = session.get(VM, inv.name)
    status = vm.get("status") or {}
    if int((vm.get("spec") or {}).get("replicas", 1)) == 0:
        raise Failure(f'VirtualMachine "{inv.name}" is stopped; only a running VM migrates '
                      f"(kubectl vm start {inv.name})")
    if inv.target_node:
        if inv.target_node == status.get("nodeName"):
            raise Failure(f'VirtualMachine "{inv.name}" already runs on {inv.target_node}')
        try:
            session.api.get("nodes", inv.target_node)
        except NotFound:
            raise Failure(f'node "{inv.target_node}" not found') from None
        except Forbidden:
            pass  # the scheduler will tell
    spec: Obj = {"vmName": inv.name}
    if inv.target_node:
        spec["targetNode"] = inv.target_node
    mig = session.api.create(_operation(n.VIRTUAL_MACHINE_MIGRATION.kind, None, inv.name, spec))
    mname = mig["metadata"]["name"]
    session.say(f"{ref(MIGRATION, mname)} created: {inv.name} from "
                f"{status.get('nodeName') or '?'} to {inv.target_node or 'another node'}")
    if not inv.wait:
        return

    def nodes(obj: Obj) -> str:
        st = obj.get("status") or {}
        if not st.get("sourceNode"):
            return ""
        return f" ({st['sourceNode']} -> {st.get('targetNode') or 'another node'})"

    wait(session, ref(MIGRATION, mname), n.STATE_SUCCEEDED, inv.timeout, _deadline(session, inv),
         _look_operation(session, MIGRATION, mname, nodes))
    st = session.get(MIGRATION, mname).get("status") or {}
    session.say(f"{ref(VM, inv.name)} migrated from {st.get('sourceNode')} to "
                f"{st.get('targetNode')}")


def backup(session: Session, inv: Invocation) -> None:
    session.get(VM, inv.name)
    made = session.api.create(_operation(n.VIRTUAL_MACHINE_BACKUP.kind, inv.resource_name, inv.name,
                                         {"vmName": inv.name}))
    bname = made["metadata"]["name"]
    session.say(f"{ref(BACKUP, bname)} created")
    if not inv.wait:
        return
    wait(session, ref(BACKUP, bname), n.STATE_SUCCEEDED, inv.timeout, _deadline(session, inv),
         _look_operation(session, BACKUP, bname, lambda _: ""))
    st = session.get(BACKUP, bname).get("status") or {}
    session.say(f"{ref(BACKUP, bname)} Succeeded: snapshot {st.get('snapshotID')}")


def restore(session: Session, inv: Invocation) -> None:
    assert inv.backup is not None  # required by the parser
    deadline = _deadline(session, inv)
    session.get(VM, inv.name)
    source = session.get(BACKUP, inv.backup)
    of = (source.get("spec") or {}).get("vmName")
    if of != inv.name:
        raise Failure(f'VirtualMachineBackup "{inv.backup}" is a backup of "{of}", '
                      f'not of "{inv.name}"')
    state = (source.get("status") or {}).get("state") or n.STATE_PENDING
    if state == n.STATE_FAILED:
        raise Failure(f'VirtualMachineBackup "{inv.backup}" Failed; it cannot be restored')
    if state != n.STATE_SUCCEEDED:
        if not inv.wait:
            raise Failure(f'VirtualMachineBackup "{inv.backup}" is {state}; restore it once it '
                          "has Succeeded, or pass --wait to wait for it")
        wait(session, ref(BACKUP, inv.backup), n.STATE_SUCCEEDED, inv.timeout, deadline,
             _look_operation(session, BACKUP, inv.backup, lambda _: ""))
    made = session.api.create(_operation(n.VIRTUAL_MACHINE_RESTORE.kind, inv.resource_name,
                                         inv.name, {"backupName": inv.backup}))
    rname = made["metadata"]["name"]
    session.say(f"{ref(RESTORE, rname)} created: {inv.name} back to backup {inv.backup}")
    if not inv.wait:
        return
    wait(session, ref(RESTORE, rname), n.STATE_SUCCEEDED, inv.timeout, deadline,
         _look_operation(session, RESTORE, rname, lambda _: ""))
    snapshot = (session.get(BACKUP, inv.backup).get("status") or {}).get("snapshotID")
    session.say(f"{ref(VM, inv.name)} restored from backup {inv.backup}"
                + (f" (snapshot {snapshot})" if snapshot else ""))


def status(session: Session, inv: Invocation) -> None:
    show_status(session, inv.name)


COMMANDS: dict[str, Callable[[Session, Invocation], None]] = {
    "start": start, "stop": stop, "restart": restart, "resize": resize, "migrate": migrate,
    "backup": backup, "restore": restore, "status": status,
}
