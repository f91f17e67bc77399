"""The kubelet HTTPS API of the facade's virtual nodes: logs, exec, attach, port-forward, stats.

What the apiserver (and kubectl, metrics-server, the Python client through it) calls on a
kubelet, served from the providers' KubeletEndpointService streams: HTTPS with the client
certificate and token checks of a kubelet, SPDY/3.1 and WebSocket channel protocols for the
streams, and the Summary and resource-metrics shapes for stats. It sits beside the controllers:
it knows providers only through `vmlet_facade.provider.Provider` and the cluster through
`vmlet_facade.kube`.
"""

from vmlet_facade.kubeletapi.addressing import AddressPool, advertise, cluster_addresses
from vmlet_facade.kubeletapi.admission import ConnectionLimits
from vmlet_facade.kubeletapi.server import KubeletApi, KubeletApiConfig

__all__ = ["AddressPool", "ConnectionLimits", "KubeletApi", "KubeletApiConfig", "advertise",
           "cluster_addresses"]
