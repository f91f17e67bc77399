"""metrics-server next to the local control plane, as a plain process, behind the aggregation
layer: ``kubectl top node|pod`` and ``/apis/metrics.k8s.io/v1beta1`` work as in any cluster.

It scrapes each node's kubelet API (the facade) at the node's InternalIP and the port of its
daemonEndpoints, with a client certificate of the cluster CA, checking the kubelet's serving
certificate (issued through the kubelet-serving CSR) against the cluster CA: no insecure TLS.
Its identity holds what the upstream manifests grant (nodes/metrics, nodes and pods read,
delegated authentication and authorization, the extension-apiserver-authentication ConfigMap).

How the apiserver reaches it: an APIService needs a Service. The apiserver rejects loopback
addresses in Endpoints and EndpointSlices, and without kube-proxy a ClusterIP leads nowhere, so
the Service is an ExternalName one naming 127.0.0.1, which the aggregator dials directly (its
default routing, without --enable-aggregator-routing). The aggregator checks the serving
certificate against the APIService's caBundle (the cluster CA) for the Service's DNS name,
``metrics-server.kube-system.svc``. `stop` withdraws the APIService, so a control plane that
outlives this process keeps a clean discovery.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.kubeconfig import write_kubeconfig
from vmlet_localenv.private import private_dir
from vmlet_localenv.processes import Process, free_port, wait_for
from vmlet_localenv.tools import binary

__all__ = ["APISERVICE", "MetricsServer"]

APISERVICE = "v1beta1.metrics.k8s.io"
NAMESPACE = "kube-system"
NAME = "metrics-server"
USER = "system:vmlet:metrics-server"

_RBAC = "rbac.authorization.k8s.io"


def _rbac_objects() -> list[dict[str, Any]]:
    """metrics-server's rights, and `kubectl top` for whoever may view pods (aggregated into
    the view, edit and admin ClusterRoles)."""
    subject = [{"apiGroup": _RBAC, "kind": "User", "name": USER}]
    aggregate = {f"rbac.authorization.k8s.io/aggregate-to-{r}": "true"
                 for r in ("view", "edit", "admin")}
    return [
        {"apiVersion": f"{_RBAC}/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:aggregated-metrics-reader", "labels": aggregate},
         "rules": [{"apiGroups": ["metrics.k8s.io"], "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": f"{_RBAC}/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:metrics-server"},
         "rules": [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                   {"apiGroups": [""], "resources": ["pods", "nodes", "namespaces"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": f"{_RBAC}/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:metrics-server"},
         "roleRef": {"apiGroup": _RBAC, "kind": "ClusterRole", "name": "system:metrics-server"},
         "subjects": subject},
        {"apiVersion": f"{_RBAC}/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "metrics-server:system:auth-delegator"},
         "roleRef": {"apiGroup": _RBAC, "kind": "ClusterRole",
                     "name": "system:auth-delegator"},
         "subjects": subject},
        {"apiVersion": f"{_RBAC}/v1", "kind": "RoleBinding",
         "metadata": {"name": "metrics-server-auth-reader", "namespace": NAMESPACE},
         "roleRef": {"apiGroup": _RBAC, "kind": "Role",
                     "name": "extension-apiserver-authentication-reader"},
         "subjects": subject},
    ]


class MetricsServer:
    """A metrics-server process for ``cp``, registered as ``v1beta1.metrics.k8s.io``.

    ``resolution`` is how often it scrapes every node (seconds, at least 10); a figure shows
    once a node or pod has been scraped twice. Its log is ``<state_dir>/logs/metrics-server.log``.
    """

    def __init__(self, cp: ControlPlane, state_dir: Path | None = None, *,
                 resolution: int = 15) -> None:
        self.cp = cp
        self.resolution = resolution
        self._own_dir = state_dir is None
        self.dir = private_dir(Path(state_dir or tempfile.mkdtemp(prefix="vmlet-ms-")))
        self.port = free_port()
        self.process: Process | None = None

    def start(self, timeout: float = 60.0) -> MetricsServer:
        cp = self.cp
        try:
            cp.kubectl("apply", "-f", "-", input=_list(_rbac_objects()))
            serving = cp.pki.authority.issue(
                "metrics-server-serving", common_name=NAME, server=True,
                dns_names=(f"{NAME}.{NAMESPACE}.svc", f"{NAME}.{NAMESPACE}.svc.cluster.local",
                           "localhost"),
                ips=("127.0.0.1",))
            client = cp.pki.authority.issue("metrics-server-client", common_name=USER,
                                            client=True)
            kubeconfig = write_kubeconfig(self.dir / "metrics-server.kubeconfig",
                                          server=cp.server, ca=cp.pki.ca.cert, client=client,
                                          user=USER)
            self.process = Process(NAME, [
                str(binary("metrics-server")),
                "--bind-address=127.0.0.1", f"--secure-port={self.port}",
                f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
                f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--kubelet-preferred-address-types=InternalIP",
                "--kubelet-use-node-status-port",
                f"--kubelet-certificate-authority={cp.pki.ca.cert}",
                f"--metric-resolution={self.resolution}s",
                # Below the resolution (it refuses to start otherwise): every peer is local.
                "--kubelet-request-timeout=5s",
                "--v=1",
            ], log_dir=self.dir / "logs").start()
            cp.kubectl("apply", "-f", "-", input=_list(self._registration()))
            wait_for(self.available, timeout=timeout, what="metrics-server (APIService "
                     f"{APISERVICE} Available)", alive=self.process.check_alive, interval=0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def _registration(self) -> list[dict[str, Any]]:
        ca = base64.b64encode(self.cp.pki.ca.cert.read_bytes()).decode()
        return [
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": NAME, "namespace": NAMESPACE},
             "spec": {"type": "ExternalName", "externalName": "127.0.0.1",
                      "ports": [{"name": "https", "port": self.port, "protocol": "TCP"}]}},
            {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
             "metadata": {"name": APISERVICE},
             "spec": {"group": "metrics.k8s.io", "version": "v1beta1",
                      "groupPriorityMinimum": 100, "versionPriority": 100,
                      "caBundle": ca,
                      "service": {"namespace": NAMESPACE, "name": NAME, "port": self.port}}},
        ]

    def available(self) -> bool:
        """Whether the apiserver reports the APIService Available."""
        doc = json.loads(self.cp.kubectl("get", "apiservice", APISERVICE, "-o", "json").stdout)
        return any(c["type"] == "Available" and c["status"] == "True"
                   for c in doc.get("status", {}).get("conditions", []))

    def stop(self) -> None:
        """Withdraw the APIService and its Service (when the control plane still answers), then
        stop the process."""
        if self.process is not None:
            quick = ("--ignore-not-found", "--wait=false", "--request-timeout=5s")
            self.cp.kubectl("delete", *quick, "apiservice", APISERVICE, check=False)
            self.cp.kubectl("delete", *quick, "-n", NAMESPACE, "service", NAME, check=False)
            self.process.stop()
            self.process = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def _list(items: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
