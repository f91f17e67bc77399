"""In-memory stand-ins for the facade's two peers, for fast controller unit tests.

`FakeKube` answers the subset of `vmlet_facade.kube.KubeClient` the controllers use, as the
apiserver would (404, 409, resourceVersions, graceful pod deletion, finalizers, watches).
`FakeProvider` implements every interface of `vmlet_facade.provider` in memory, records each call
and lets a test script the next answers or errors. `objects` builds what tests seed; `loop`
drives the event loop without waiting for time. Integration tests never use them: they run
against the real peers.
"""

from fakes.kube import FakeKube
from fakes.loop import Background, fire_retries, settle, until
from fakes.objects import running_vm_pod, vm_object
from fakes.provider import FakeProvider, running

__all__ = ["Background", "FakeKube", "FakeProvider", "fire_retries", "running",
           "running_vm_pod", "settle", "until", "vm_object"]
