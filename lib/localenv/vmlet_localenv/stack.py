"""A running vmlet on a control plane: providers and one facade, for tests and benchmarks.

Providers are memory providers unless ``kinds`` says otherwise; a ``vsphere`` one runs against
the ``vcsim`` given. `set_guest_ip` plays VMware Tools on vcsim: it reports a guest IP the way
the tools would (vcsim's SET.guest.ipAddress extraConfig key), since vcsim runs no guests.

For the kubelet API, `kubelet_api_args` has the facade serve it from a network namespace (the
apiserver will not proxy to a loopback node address; see `vmlet_localenv.netns`): at the
namespace's address, which every node then shares, or, for a namespace made with a pool, at
each node's own address of the pool. `Stack.wait_kubelet_api` approves its serving certificate
as an operator would (`vmlet_localenv.csrapprover.decide`). Facade and
providers talk mutual TLS (``pki``, this process's `default_pki()` unless given); `channel` calls
a provider as the facade does.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cryptography import x509

from vmlet_api.names import PROVIDER_LABEL, PROVIDER_TAINT
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.csrapprover import SIGNER, decide, pending
from vmlet_localenv.netns import Netns
from vmlet_localenv.processes import free_port
from vmlet_localenv.providerpki import ProviderPki, default_pki
from vmlet_localenv.services import (
    FACADE_USER,
    FacadeProcess,
    ProviderProcess,
    apply_crds,
    facade_kubeconfig,
    vsphere_provider,
)
from vmlet_localenv.vcsim import VcSim

__all__ = [
    "KUBELET_PORT",
    "Stack",
    "eventually",
    "kubelet_api_args",
    "metric_total",
    "nic_networks",
    "report_guest_ip",
    "set_guest_ip",
    "vm_property",
    "vms_with_identity",
]

T = TypeVar("T")
KUBELET_PORT = 10250


def eventually(check: Callable[[], T], *, timeout: float = 60.0, interval: float = 0.3,
               what: str = "condition") -> T:
    """Return ``check()``'s first truthy result; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as err:  # a probe that fails now may pass later
            last = err
        else:
            if result:
                return result
            last = result
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout:.0f}s (last: {last!r})")


def vm_property(si: Any, path: str) -> list[tuple[Any, Any]]:
    """(VM, value of ``path``) for every VM in vCenter, read in one property collection, so a
    VM that goes away meanwhile is simply not in it (None where the VM has no such value)."""
    from pyVmomi import vim, vmodl

    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    pc = vmodl.query.PropertyCollector
    spec = pc.FilterSpec(
        objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[
            pc.TraversalSpec(path="view", skip=False, type=vim.view.ContainerView)])],
        propSet=[pc.PropertySpec(type=vim.VirtualMachine, pathSet=[path])])
    try:
        result = content.propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
        found: list[tuple[Any, Any]] = []
        while result is not None:
            for obj in result.objects or ():
                values = [prop.val for prop in obj.propSet or ()]
                found.append((obj.obj, values[0] if values else None))
            if not result.token:
                break
            result = content.propertyCollector.ContinueRetrievePropertiesEx(token=result.token)
        return found
    finally:
        view.Destroy()


def vms_with_identity(si: Any, identity: str) -> list[Any]:
    """Every VM in vCenter whose extraConfig carries vmlet identity ``identity``."""
    return [
        vm
        for vm, option in vm_property(si, 'config.extraConfig["vmlet.identity"]')
        if option is not None and option.value == identity
    ]


def nic_networks(si: Any, vm: Any) -> list[str]:
    """The networks of ``vm``'s NICs in device order, by name (a port group's for a
    distributed port, the backing's device name otherwise)."""
    from pyVmomi import vim

    dc = si.RetrieveContent().rootFolder.childEntity[0]
    portgroups = {n.key: n.name for n in dc.network
                  if isinstance(n, vim.dvs.DistributedVirtualPortgroup)}
    out = []
    for device in vm.config.hardware.device:
        if isinstance(device, vim.vm.device.VirtualEthernetCard):
            backing: Any = device.backing
            port = getattr(backing, "port", None)
            out.append(portgroups[port.portgroupKey] if port is not None else backing.deviceName)
    return out


def set_guest_ip(sim: VcSim, identity: str, ip: str) -> bool:
    """Report ``ip`` as the guest address of the VM of ``identity`` the way VMware Tools would
    (vcsim's SET.guest.ipAddress extraConfig key); False when there is no such VM."""
    from pyVmomi import vim

    with sim.connect() as si:
        found = vms_with_identity(si, identity)
        if len(found) != 1:
            return False
        spec = vim.vm.ConfigSpec(
            extraConfig=[vim.option.OptionValue(key="SET.guest.ipAddress", value=ip)])
        task = found[0].ReconfigVM_Task(spec=spec)
        deadline = time.monotonic() + 30
        while task.info.state not in ("success", "error") and time.monotonic() < deadline:
            time.sleep(0.05)
        return bool(task.info.state == "success")


def report_guest_ip(sim: VcSim, identity: str, ip: str, *, timeout: float = 120.0) -> None:
    """Wait until the VM of ``identity`` is powered on in vCenter, then report ``ip`` as its
    guest address (`set_guest_ip`), as VMware Tools would once the guest booted."""
    def powered_on() -> bool:
        with sim.connect() as si:
            found = vms_with_identity(si, identity)
            return len(found) == 1 and found[0].runtime.powerState == "poweredOn"

    eventually(lambda: powered_on() and set_guest_ip(sim, identity, ip), timeout=timeout,
               interval=0.3, what=f"the VM of identity {identity} powered on, with guest IP {ip}")


def metric_total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of metric ``name`` in Prometheus ``text`` that carry ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def kubelet_api_args(cp: ControlPlane, host: Netns, port: int = KUBELET_PORT) -> list[str]:
    """Facade arguments to serve the kubelet API in ``host``'s namespace, taking client
    certificates of the cluster CA: at its address, which the nodes advertise, or, when
    ``host`` has a pool, at every address of it, each node advertising its own (the
    namespace's address when the pool runs out)."""
    args = [f"--kubelet-port={port}", f"--kubelet-netns={host.name}", f"--node-ip={host.ip}",
            f"--client-ca-file={cp.pki.ca.cert}"]
    if host.pool is None:
        return [*args, f"--kubelet-address={host.ip}"]
    return [*args, "--kubelet-address=0.0.0.0", f"--node-ip-pool={host.pool}"]


def _csr_ips(csr: dict[str, Any]) -> set[str]:
    request = x509.load_pem_x509_csr(base64.b64decode(csr["spec"]["request"]))
    try:
        san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


class Stack:
    """Providers (one per name; memory ones unless ``kinds`` names another kind) and a facade
    serving all of them. A ``vsphere`` provider runs against ``vcsim``."""

    def __init__(self, cp: ControlPlane, directory: Path, providers: dict[str, list[str]],
                 facade_args: list[str] | None = None, *, kinds: dict[str, str] | None = None,
                 vcsim: VcSim | None = None, pki: ProviderPki | None = None) -> None:
        self.cp = cp
        self.pki = pki or default_pki()
        self.dir = directory
        self.vcsim = vcsim
        self.metrics_ports = {name: free_port() for name in providers}
        self.providers: dict[str, ProviderProcess] = {}
        for name, args in providers.items():
            kind = (kinds or {}).get(name, "memory")
            metrics = ["--metrics-listen", f"127.0.0.1:{self.metrics_ports[name]}"]
            if kind == "vsphere":
                if vcsim is None:
                    raise ValueError(f"provider {name} is a vsphere one: give the vcsim")
                self.providers[name] = vsphere_provider(vcsim, directory / name, name=name,
                                                        args=[*metrics, *args], pki=self.pki)
            elif kind == "memory":
                self.providers[name] = ProviderProcess(kind, directory / name, name=name, args=[
                    "--node-prefix", name, "--state-file", str(directory / f"{name}.json"),
                    *metrics, *args], pki=self.pki)
            else:
                raise ValueError(f"provider {name}: the Stack runs memory and vsphere providers, "
                                 f"not {kind}")
        self.facade_args = facade_args or []
        self.facade: FacadeProcess | None = None

    def start(self) -> Stack:
        apply_crds(self.cp)
        for provider in self.providers.values():
            provider.start()
        self.start_facade()
        return self

    def start_facade(self) -> FacadeProcess:
        self.facade = FacadeProcess({n: p.address for n, p in self.providers.items()},
                                    facade_kubeconfig(self.cp), self.dir / "facade",
                                    args=self.facade_args, pki=self.pki).start()
        return self.facade

    def stop(self) -> None:
        if self.facade is not None:
            self.facade.stop()
        for provider in self.providers.values():
            provider.stop()

    def print_logs(self, lines: int = 40) -> None:
        """Print the last ``lines`` of each provider's and the facade's log (for a failed
        test's captured output)."""
        for name, provider in self.providers.items():
            if provider.process is not None:
                print(f"--- provider {name}:\n{provider.process.tail(lines)}")
        if self.facade is not None and self.facade.process is not None:
            print(f"--- facade:\n{self.facade.process.tail(lines)}")

    def channel(self, provider: str) -> grpc.Channel:
        """A channel to ``provider``, with the facade's client certificate."""
        return self.pki.channel(self.providers[provider].address)

    def provider_metrics(self, provider: str) -> str:
        """``provider``'s Prometheus metrics, as text."""
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_ports[provider]}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def provider_calls(self, provider: str, method: str) -> float:
        """How often ``method`` was called on ``provider``, from its Prometheus metrics."""
        return metric_total(self.provider_metrics(provider), "grpc_server_started_total",
                            grpc_method=method)

    def provider_open_streams(self, provider: str, method: str) -> float:
        """Calls (streams) of ``method`` that ``provider`` started and has not finished."""
        text = self.provider_metrics(provider)
        return (metric_total(text, "grpc_server_started_total", grpc_method=method)
                - metric_total(text, "grpc_server_handled_total", grpc_method=method))

    def approve_serving_csrs(self, ip: str) -> list[str]:
        """Approve the facade's pending kubelet-serving CSRs that name ``ip`` and that a
        careful operator would (`csrapprover.decide`); return their names."""
        approved = []
        nodes: list[dict[str, Any]] | None = None
        for csr in self.kubectl_json("get", "csr")["items"]:
            if not pending(csr) or csr["spec"].get("signerName") != SIGNER \
                    or ip not in _csr_ips(csr):
                continue
            if nodes is None:
                nodes = self.kubectl_json("get", "nodes")["items"]
            if not decide(csr, nodes or [], requester=FACADE_USER).approve:
                continue
            self.cp.kubectl("certificate", "approve", csr["metadata"]["name"])
            approved.append(csr["metadata"]["name"])
        return approved

    def wait_kubelet_api(self, ip: str, port: int = KUBELET_PORT, timeout: float = 90) -> None:
        """Approve the facade's serving certificate for ``ip`` until its kubelet API there
        completes a TLS handshake checked against the cluster CA."""
        context = ssl.create_default_context(cafile=str(self.cp.pki.ca.cert))

        def serving() -> bool:
            self.approve_serving_csrs(ip)
            with socket.create_connection((ip, port), timeout=3) as raw, \
                    context.wrap_socket(raw, server_hostname=ip):
                return True

        eventually(serving, timeout=timeout,
                   what=f"the kubelet API serving at {ip}:{port} with an approved certificate")

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.cp.kubectl(*args, "-o", "json").stdout)

    def nodes(self, provider: str) -> list[dict[str, Any]]:
        items = self.kubectl_json("get", "nodes", "-l", f"{PROVIDER_LABEL}={provider}")["items"]
        return list(items)

    def ready_nodes(self, provider: str) -> list[str]:
        return [n["metadata"]["name"] for n in self.nodes(provider)
                if any(c["type"] == "Ready" and c["status"] == "True"
                       for c in n["status"].get("conditions", []))]

    def vm_pod(self, name: str, provider: str, *, env: list[dict[str, Any]] | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """A pod manifest that tolerates ``provider``'s taint and asks for one of its nodes."""
        pod: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {
                "nodeSelector": {PROVIDER_LABEL: provider},
                "tolerations": [{"key": PROVIDER_TAINT, "operator": "Equal",
                                 "value": provider, "effect": "NoSchedule"}],
                "containers": [{"name": "vm", "image": "debian-12", "env": env or [],
                                "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                              "limits": {"cpu": "2", "memory": "2Gi"}}}],
            },
        }
        for key, value in (extra or {}).items():
            pod["spec"][key] = value
        return pod
