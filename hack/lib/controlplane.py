"""make up's control plane for the end-to-end scripts (hack/compose-e2e.sh, hack/worker-e2e.sh).

Usage: python hack/lib/controlplane.py OUT_DIR                                 # compose's
       python hack/lib/controlplane.py OUT_DIR ADVERTISE_IP NODE_NAME NODE_IP  # a worker's

lib/localenv's ControlPlane (etcd, kube-apiserver, controller-manager, scheduler, on loopback)
with vmlet's CRDs and make up's approver of kubelet-serving CSRs, without make up's own facade
and providers. Writes ca.crt, admin.kubeconfig (loopback) and port into OUT_DIR, then `ready`
(the apiserver's URL); runs until SIGTERM, then stops the control plane.

Compose's (no other argument): the facade runs outside the cluster as make up's facade user,
whose kubeconfig is facade.kubeconfig; the approver approves that user's CSRs.

A worker's: the facade runs as its ServiceAccount (as k8s/base runs it), whose CSRs the approver
approves; the apiserver advertises ADVERTISE_IP (the host's end of the worker's link), so the
`kubernetes` Service's endpoint is one a pod can reach (hack/worker-e2e.sh relays that address's
port to the loopback one), and the worker's identities come from the cluster's CA:

- kubelet.kubeconfig: system:node:NODE_NAME in system:nodes (the Node authorizer's subject);
- kubelet-serving.crt/.key: the kubelet's serving pair for NODE_IP, which the apiserver verifies
  (--kubelet-certificate-authority) when it proxies logs and exec;
- kube-proxy.kubeconfig: system:kube-proxy (bound to system:node-proxier by default);
- vcsim.crt/.key: a serving pair for ADVERTISE_IP, for vcsim (the vSphere overlay's provider
  verifies it against the CA in its credentials Secret).
The worker's kubeconfigs name https://ADVERTISE_IP:PORT with tls-server-name `kubernetes` (a
name of the serving cert).
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
from pathlib import Path

import yaml

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.csrapprover import CsrApprover
from vmlet_localenv.kubeconfig import write_kubeconfig
from vmlet_localenv.pki import CertPair
from vmlet_localenv.services import FACADE_USER, apply_crds, facade_kubeconfig

FACADE_ACCOUNT = "system:serviceaccount:vmlet-system:vmlet-facade"


def _worker_kubeconfig(path: Path, server: str, ca: Path, pair: CertPair, user: str) -> None:
    write_kubeconfig(path, server=server, ca=ca, client=pair, user=user)
    doc = yaml.safe_load(path.read_text())
    doc["clusters"][0]["cluster"]["tls-server-name"] = "kubernetes"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _worker_identities(cp: ControlPlane, out: Path, advertise: str, node: str,
                       node_ip: str) -> None:
    ca = cp.pki.authority
    server = f"https://{advertise}:{cp.apiserver_port}"
    kubelet = ca.issue(f"node-{node}", common_name=f"system:node:{node}",
                       organizations=("system:nodes",), client=True)
    _worker_kubeconfig(out / "kubelet.kubeconfig", server, out / "ca.crt", kubelet,
                       f"system:node:{node}")
    serving = ca.issue(f"node-{node}-serving", common_name=f"system:node:{node}",
                       organizations=("system:nodes",), dns_names=(node,), ips=(node_ip,),
                       server=True)
    shutil.copy(serving.cert, out / "kubelet-serving.crt")
    shutil.copy(serving.key, out / "kubelet-serving.key")
    proxy = ca.issue("kube-proxy", common_name="system:kube-proxy", client=True)
    _worker_kubeconfig(out / "kube-proxy.kubeconfig", server, out / "ca.crt", proxy,
                       "system:kube-proxy")
    vcsim = ca.issue("vcsim", common_name="vcsim", ips=(advertise,), server=True)
    shutil.copy(vcsim.cert, out / "vcsim.crt")
    shutil.copy(vcsim.key, out / "vcsim.key")


def main() -> None:
    out, worker = Path(sys.argv[1]), sys.argv[2:5]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    args = (f"--advertise-address={worker[0]}",) if worker else ()
    cp = ControlPlane(state_dir=out / "state", apiserver_args=args).start()
    approver = None
    try:
        apply_crds(cp)
        shutil.copy(cp.pki.ca.cert, out / "ca.crt")
        shutil.copy(cp.kubeconfig, out / "admin.kubeconfig")
        if worker:
            _worker_identities(cp, out, *worker)
        else:
            shutil.copy(facade_kubeconfig(cp), out / "facade.kubeconfig")
        requester = FACADE_ACCOUNT if worker else FACADE_USER
        approver = CsrApprover(cp.server, cp.ssl_context(), requester=requester).start()
        (out / "port").write_text(str(cp.apiserver_port))
        (out / "ready").write_text(cp.server)
        print("control plane ready at", cp.server, flush=True)
        stop.wait()
    finally:
        if approver is not None:
            approver.stop()
        cp.stop()
        print("control plane stopped", flush=True)


if __name__ == "__main__":
    main()
