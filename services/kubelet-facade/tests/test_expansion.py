"""$(VAR) in command and args, expanded with a kubelet's rules."""

from __future__ import annotations

import pytest

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_facade.expansion import expand
from vmlet_facade.ownership import Ownership
from vmlet_facade.podconvert import to_provider_pod
from vmlet_facade.references import Resolved

ENV = {"VAR_A": "A", "VAR_B": "B", "EMPTY": ""}


@pytest.mark.parametrize(("text", "expanded"), [
    ("$(VAR_A)", "A"),
    ("___$(VAR_B)___", "___B___"),
    ("$(VAR_A)-$(VAR_A)", "A-A"),
    ("x$(EMPTY)y", "xy"),
    ("$$(VAR_B)", "$(VAR_B)"),  # an escaped reference is not expanded
    ("$$$(VAR_A)", "$A"),
    ("$(VAR_DNE)", "$(VAR_DNE)"),  # undefined: left as written
    ("$(VAR_A", "$(VAR_A"),  # unterminated
    ("$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"),  # the name runs to the first ")"
    ("$VAR_A", "$VAR_A"),  # no parenthesis: a shell's variable, not a reference
    ("$", "$"),
    ("$()", "$()"),
    ("f000-$$VAR_A", "f000-$VAR_A"),
    ("$$$$", "$$"),
    ("$$$$$$(BIG_MONEY)", "$$$(BIG_MONEY)"),
    ("no references", "no references"),
])
def test_references_expand_as_a_kubelet_expands_them(text: str, expanded: str) -> None:
    assert expand(text, ENV) == expanded


def test_command_and_args_reach_the_provider_expanded_with_the_containers_env() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
           "spec": {"containers": [{"name": "vm", "image": "debian-12",
                                    "command": ["serve", "--port=$(PORT)"],
                                    "args": ["$(HOST)", "$$(HOST)", "$(UNSET)"]}],
                    "initContainers": [{"name": "prep", "image": "debian-12",
                                        "command": ["mkdir", "$(DIR)"]}]}}
    resolved = Resolved(env={"vm": [("PORT", "80"), ("HOST", "a"), ("HOST", "b")],
                             "prep": [("DIR", "/srv")]})
    out = to_provider_pod(pod, resolved, Ownership("u", keep_on_delete=False))
    vm: pb.Container = out.containers[0]
    assert list(vm.command) == ["serve", "--port=80"]
    assert list(vm.args) == ["b", "$(HOST)", "$(UNSET)"]  # the last HOST wins, as in env
    assert list(out.init_containers[0].command) == ["mkdir", "/srv"]
