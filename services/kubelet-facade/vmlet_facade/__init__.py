"""The kubelet facade: virtual Nodes on the Kubernetes API, their pods made VMs by providers."""
