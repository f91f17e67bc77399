"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler of one pinned release, with certificates made for the run.

The apiserver runs with ``--authorization-mode=Node,RBAC`` and NodeRestriction on top of the
default admission plugins, so everything vmlet does here it does with the rights it would get in
a real cluster. The aggregation layer is configured (front-proxy CA and client cert), so an
aggregated API server such as metrics-server (`vmlet_localenv.metricsserver`) can be added.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmlet_localenv.kubeconfig import write_kubeconfig
from vmlet_localenv.pki import FRONT_PROXY_CLIENT, ClusterPki
from vmlet_localenv.private import private_dir
from vmlet_localenv.processes import Process, free_port, wait_for
from vmlet_localenv.tools import binary

__all__ = ["ControlPlane"]

SERVICE_CIDR = "10.0.0.0/24"

# The apiserver presents this identity to kubelets; kubeadm binds it the same way.
_KUBELET_CLIENT_BINDING = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRoleBinding",
    "metadata": {"name": "kube-apiserver-kubelet-api-admin"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                "name": "system:kubelet-api-admin"},
    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                  "name": "kube-apiserver-kubelet-client"}],
}


@dataclass
class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler, as one."""

    state_dir: Path | None = None
    processes: list[Process] = field(default_factory=list)
    #: More flags for kube-apiserver and kube-controller-manager (a test's shorter timings).
    apiserver_args: tuple[str, ...] = ()
    controller_manager_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self._own_dir = self.state_dir is None
        self.dir = private_dir(Path(self.state_dir or tempfile.mkdtemp(prefix="vmlet-cp-")))
        self.log_dir = self.dir / "logs"
        self.pki = ClusterPki.create(self.dir / "pki")
        self.apiserver_port = free_port()
        self.server = f"https://127.0.0.1:{self.apiserver_port}"
        self.kubeconfig = write_kubeconfig(
            self.dir / "admin.kubeconfig", server=self.server, ca=self.pki.ca.cert,
            client=self.pki.admin, user="vmlet-admin",
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> ControlPlane:
        try:
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
            self._bootstrap()
            self._start_controller_manager()
            self._start_scheduler()
            wait_for(self._default_service_account_exists, timeout=timeout,
                     what="controller-manager (default ServiceAccount)", alive=self._alive)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _alive(self) -> None:
        for proc in self.processes:
            proc.check_alive()

    def _spawn(self, name: str, argv: list[str]) -> Process:
        proc = Process(name, argv, log_dir=self.log_dir).start()
        self.processes.append(proc)
        return proc

    def _start_etcd(self, timeout: float) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn("etcd", [
            str(binary("etcd")), "--name=vmlet", f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=vmlet=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=4294967296",
        ])
        wait_for(lambda: _http_ok(f"{self.etcd_url}/health"), timeout=timeout, what="etcd",
                 alive=self._alive)

    def _start_apiserver(self, timeout: float) -> None:
        p = self.pki
        self._spawn("kube-apiserver", [
            str(binary("kube-apiserver")),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={self.dir / 'apiserver-certs'}",
            f"--client-ca-file={p.ca.cert}",
            f"--tls-cert-file={p.apiserver.cert}", f"--tls-private-key-file={p.apiserver.key}",
            f"--kubelet-client-certificate={p.kubelet_client.cert}",
            f"--kubelet-client-key={p.kubelet_client.key}",
            f"--kubelet-certificate-authority={p.ca.cert}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--service-account-key-file={p.service_account_pub}",
            f"--service-account-signing-key-file={p.service_account_key}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            # The aggregation layer (metrics-server behind metrics.k8s.io), as kubeadm sets it.
            f"--requestheader-client-ca-file={p.front_proxy_ca.cert}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={p.front_proxy_client.cert}",
            f"--proxy-client-key-file={p.front_proxy_client.key}",
            "--allow-privileged=true",
            "--profiling=false",
            # ConfigMaps bypass the watch cache, so a test can provoke a real 410 Gone by
            # compacting etcd (compact_etcd) and watching from an old resourceVersion.
            "--watch-cache-sizes=configmaps#0",
            "--max-requests-inflight=1000", "--max-mutating-requests-inflight=500",
            "--v=1", *self.apiserver_args,
        ])
        wait_for(lambda: self.get("/readyz") == "ok", timeout=timeout, what="kube-apiserver",
                 alive=self._alive)

    def _bootstrap(self) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(_KUBELET_CLIENT_BINDING))

    def _component_kubeconfig(self, name: str, pair: Any) -> Path:
        return write_kubeconfig(self.dir / f"{name}.kubeconfig", server=self.server,
                                ca=self.pki.ca.cert, client=pair, user=name)

    def _start_controller_manager(self) -> None:
        kc = self._component_kubeconfig("controller-manager", self.pki.controller_manager)
        self._spawn("kube-controller-manager", [
            str(binary("kube-controller-manager")),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            f"--cert-dir={self.dir / 'kcm-certs'}",
            f"--service-account-private-key-file={self.pki.service_account_key}",
            f"--root-ca-file={self.pki.ca.cert}",
            f"--cluster-signing-cert-file={self.pki.ca.cert}",
            f"--cluster-signing-key-file={self.pki.ca.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--use-service-account-credentials=true",
            "--controllers=*,bootstrapsigner,tokencleaner",
            "--leader-elect=false", "--v=1", *self.controller_manager_args,
        ])

    def _start_scheduler(self) -> None:
        kc = self._component_kubeconfig("scheduler", self.pki.scheduler)
        self._spawn("kube-scheduler", [
            str(binary("kube-scheduler")),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            f"--cert-dir={self.dir / 'scheduler-certs'}",
            "--leader-elect=false", "--v=1",
        ])

    def _default_service_account_exists(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", "-n", "default",
                            check=False).returncode == 0

    # -- clients -----------------------------------------------------------------------------

    def compact_etcd(self) -> int:
        """Compact etcd up to its current revision; return that revision."""
        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            req = urllib.request.Request(self.etcd_url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                return dict(json.loads(resp.read()))

        revision = int(post("/v3/kv/range", {"key": "Lw=="})["header"]["revision"])
        post("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for ``user`` (a client cert of the run's CA), with no rights of its own."""
        pair = self.pki.authority.issue(f"user-{user}", common_name=user, organizations=groups,
                                        client=True)
        return write_kubeconfig(self.dir / f"{user}.kubeconfig", server=self.server,
                                ca=self.pki.ca.cert, client=pair, user=user)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        ctx.load_cert_chain(str(self.pki.admin.cert), str(self.pki.admin.key))
        return ctx

    def get(self, path: str) -> str:
        """GET ``path`` from the apiserver as the admin; return the body."""
        with urllib.request.urlopen(self.server + path, context=self.ssl_context(),
                                    timeout=10) as resp:
            return str(resp.read().decode())

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (of the control plane's version, built by hack/build-tools.sh) against
        this control plane, as a user would."""
        return subprocess.run(
            [str(binary("kubectl")), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, check=check, timeout=120,
        )


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)
