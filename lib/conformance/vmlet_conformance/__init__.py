"""The vmlet provider conformance suite, in the spirit of csi-sanity: checks that drive every
service of the provider contract over gRPC against an address, and nothing else.

A check is a function of a `Subject` (a channel and how to make a valid pod); `CHECKS` lists
them in the order they run. `python -m vmlet_conformance --address HOST:PORT ...` runs them with
pytest against any provider; a project's tests parametrise over `CHECKS` with their own
subjects (tests/test_conformance.py runs them against the memory, vSphere and OpenStack
providers).
"""

from . import (  # noqa: F401  (they register the checks)
    disks,
    endpoints,
    lifecycle,
    logs,
    notifications,
    requests,
    vmservice,
)
from .registry import CHECKS, Check, check
from .subject import PodFailed, PodStream, Subject, code_of, eventually, ready, running

__all__ = ["CHECKS", "Check", "PodFailed", "PodStream", "Subject", "check", "code_of",
           "eventually", "ready", "running"]
