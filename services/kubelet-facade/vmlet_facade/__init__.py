"""The kubelet facade: virtual Nodes on the Kubernetes API, their pods turned into VMs by providers."""
