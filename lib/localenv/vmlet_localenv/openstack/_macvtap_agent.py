"""Runs neutron's own macvtap agent (``neutron-macvtap-agent``) on oslo.service's eventlet backend.

Run under the OpenStack virtualenv's Python: ``python _macvtap_agent.py --config-file ...``.
neutron 27.0.4's console script selects the threading backend, whose launcher forks the agent's
worker after ``main()`` has already started the privsep daemon; the worker's privsep calls then
never get their replies (the parent's reader takes them) and the agent never reports. On the
eventlet backend, still oslo.service's default (the console script overrides it), the launcher
runs the agent in this process. Nothing else differs: this is neutron's ``main()``.
"""

import sys

import oslo_service.backend as backend

backend.init_backend(backend.BackendType.EVENTLET)

from neutron.common import eventlet_utils  # noqa: E402

eventlet_utils.monkey_patch()

from neutron.plugins.ml2.drivers.macvtap.agent import macvtap_neutron_agent  # noqa: E402

if __name__ == "__main__":
    sys.exit(macvtap_neutron_agent.main())
