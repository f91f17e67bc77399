"""Argument parsing: verbs, connection flags anywhere, quantities and durations checked up front."""

from __future__ import annotations

import pytest

from vmlet_kubectl import Invocation, build_parser, parse
from vmlet_kubectl.cli import main
from vmlet_kubectl.invocation import DEFAULT_TIMEOUT


def test_each_verb_takes_a_name() -> None:
    for verb in ("start", "stop", "restart", "migrate", "backup", "status"):
        assert parse([verb, "web"]) == Invocation(verb=verb, name="web")


def test_wait_and_timeout() -> None:
    assert parse(["start", "web", "--wait"]).wait is True
    assert parse(["start", "web", "--wait"]).timeout == DEFAULT_TIMEOUT == 300
    inv = parse(["stop", "web", "--wait", "--timeout", "90s"])
    assert (inv.wait, inv.timeout) == (True, 90)
    assert parse(["restart", "web", "--timeout=1h30m"]).timeout == 5400
    assert parse(["restart", "web", "--timeout", "2m"]).wait is True, "--timeout implies --wait"
    assert parse(["restore", "web", "--backup", "b", "--timeout", "45"]).timeout == 45


def test_connection_flags_before_or_after_the_verb() -> None:
    after = parse(["start", "web", "-n", "prod", "--kubeconfig", "/k", "--context", "c1"])
    before = parse(["-n", "prod", "--kubeconfig=/k", "--context=c1", "start", "web"])
    assert after == before
    assert (after.namespace, after.kubeconfig, after.context) == ("prod", "/k", "c1")
    assert parse(["--namespace=prod", "status", "web"]).namespace == "prod"
    assert parse(["status", "web", "-nprod"]).namespace == "prod"
    mixed = parse(["-n", "a", "status", "web", "--context", "c"])
    assert (mixed.namespace, mixed.context) == ("a", "c")
    plain = parse(["status", "web"])
    assert (plain.namespace, plain.kubeconfig, plain.context) == (None, None, None)


def test_resize() -> None:
    inv = parse(["resize", "web", "--cpu", "4", "--memory", "8Gi", "--wait"])
    assert (inv.cpu, inv.memory, inv.wait) == (4, "8Gi", True)
    assert parse(["resize", "web", "--cpu", "500m"]).cpu == "500m"
    only_memory = parse(["resize", "web", "--memory", "512Mi"])
    assert (only_memory.cpu, only_memory.memory) == (None, "512Mi")


def test_migrate_backup_restore_options() -> None:
    assert parse(["migrate", "web", "--to", "esx-2"]).target_node == "esx-2"
    assert parse(["migrate", "web"]).target_node is None
    assert parse(["backup", "web", "--name", "b1"]).resource_name == "b1"
    inv = parse(["restore", "web", "--backup", "b1", "--name", "r1", "--wait"])
    assert (inv.backup, inv.resource_name, inv.wait) == ("b1", "r1", True)


@pytest.mark.parametrize(("argv", "message"), [
    ([], "required: COMMAND"),
    (["fly", "web"], "invalid choice: 'fly'"),
    (["start"], "required: NAME"),
    (["start", "a", "b"], "unrecognized arguments: b"),
    (["resize", "web"], "resize needs --cpu, --memory or both"),
    (["resize", "web", "--cpu", "two"], "invalid quantity 'two'"),
    (["resize", "web", "--cpu", "0"], "must be more than 0"),
    (["resize", "web", "--memory=-1Gi"], "must be more than 0"),
    (["resize", "web", "--cpu", "-1"], "must be more than 0"),
    (["resize", "web", "--memory", "4GB"], "invalid quantity '4GB'"),
    (["start", "web", "--timeout", "soon"], "invalid duration 'soon'"),
    (["start", "web", "--timeout", "0s"], "must be more than 0"),
    (["restore", "web"], "required: --backup"),
    (["status", "web", "--wait"], "unrecognized arguments: --wait"),
    (["start", "web", "-n"], "expected one argument"),
])
def test_usage_errors_exit_2(argv: list[str], message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_help_lists_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: kubectl vm COMMAND NAME [options]")
    for verb in ("start", "stop", "restart", "resize", "migrate", "backup", "restore", "status"):
        assert f"\n    {verb} " in out
    for flag in ("--namespace", "--kubeconfig", "--context"):
        assert flag in out
    help_text = build_parser().format_help()
    assert "exit status" in help_text


def test_verb_help_names_the_verb(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["migrate", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: kubectl vm migrate NAME [options]")
    assert "--to NODE" in out and "--wait" in out and "--namespace" in out
