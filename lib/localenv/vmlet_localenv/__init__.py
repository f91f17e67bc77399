"""Starts the real peers vmlet runs against, on loopback: a Kubernetes control plane, vcsim, providers."""
