"""Starts the real peers vmlet runs against, on loopback: control plane, vcsim, providers."""
