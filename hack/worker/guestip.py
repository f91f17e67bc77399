"""Plays VMware Tools for vcsim's VMs (vcsim runs no guest), as `make demo` and
hack/compose-e2e.sh do: every powered-on VM that carries a vmlet identity and reports no guest
IP gets one (vcsim's SET.guest.ipAddress), from NETWORK (a test-host range: never routed).
Also answers `count`: the vmlet VMs in vcsim, by identity, as JSON.

Usage: python hack/worker/guestip.py serve NETWORK HOST PORT USER PASSWORD_FILE CA_FILE
       python hack/worker/guestip.py count HOST PORT USER PASSWORD_FILE CA_FILE
"""

from __future__ import annotations

import collections
import ipaddress
import json
import ssl
import sys
import time
from typing import Any

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

from vmlet_localenv.stack import vm_property


def _connect(host: str, port: str, user: str, password_file: str, ca_file: str) -> Any:
    """A session, once vcsim answers (it may still be making its inventory): 120 s at most."""
    password = open(password_file).read().strip()
    context = ssl.create_default_context(cafile=ca_file)
    deadline = time.monotonic() + 120
    while True:
        try:
            return SmartConnect(host=host, port=int(port), user=user, pwd=password,
                                sslContext=context)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _vmlet_vms(si: Any) -> list[tuple[Any, str]]:
    return [(vm, option.value)
            for vm, option in vm_property(si, 'config.extraConfig["vmlet.identity"]')
            if option is not None and option.value]


def serve(network: str, *conn: str) -> None:
    addresses = ipaddress.ip_network(network).hosts()
    si = _connect(*conn)
    try:
        while True:
            for vm, _identity in _vmlet_vms(si):
                try:
                    if vm.runtime.powerState != "poweredOn" or vm.guest.ipAddress:
                        continue
                    task = vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=[
                        vim.option.OptionValue(key="SET.guest.ipAddress",
                                               value=str(next(addresses)))]))
                    while task.info.state not in ("success", "error"):
                        time.sleep(0.05)
                except vim.fault.ManagedObjectNotFound:
                    continue  # deleted meanwhile
            time.sleep(0.3)
    finally:
        Disconnect(si)


def count(*conn: str) -> None:
    si = _connect(*conn)
    try:
        print(json.dumps(collections.Counter(identity for _vm, identity in _vmlet_vms(si))))
    finally:
        Disconnect(si)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(*sys.argv[2:9])
    else:
        count(*sys.argv[2:7])
