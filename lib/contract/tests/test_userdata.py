"""Unit tests of the user data a cloud-init guest boots with (`vmlet_contract.userdata`)."""

from __future__ import annotations

import email
import hashlib
import json
import subprocess
from email.message import Message
from pathlib import Path
from typing import Any, cast

import pytest

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import userdata
from vmlet_contract.userdata import (
    ENV_DIR,
    MERGE_HOW,
    first_boot_commands,
    first_boot_user_data,
    user_data_content_type,
)

CLOUD_CONFIG = "#cloud-config\nruncmd:\n  - [echo, mine]\npackages: [nginx]\n"


def _container(
    name: str, command: list[str] | None = None, args: list[str] | None = None, **env: str
) -> pod_pb2.Container:
    return pod_pb2.Container(
        name=name, image="memory:ubuntu", command=command or [], args=args or [],
        env=[pod_pb2.EnvVar(name=k, value=v) for k, v in env.items()],
    )  # fmt: skip


def _pod(
    user_data: str = "",
    containers: list[pod_pb2.Container] | None = None,
    init: list[pod_pb2.Container] | None = None,
) -> pod_pb2.Pod:
    return pod_pb2.Pod(
        ref=pod_pb2.PodRef(namespace="ns", name="vm-0", uid="u-1"),
        identity="id-1",
        user_data=user_data,
        containers=containers if containers is not None else [_container("vm")],
        init_containers=init or [],
    )


def _parse(text: str) -> list[Message]:
    msg = email.message_from_string(text)
    assert msg.get_content_type() == "multipart/mixed"
    assert msg["MIME-Version"] == "1.0"
    parts = msg.get_payload()
    assert isinstance(parts, list)
    return cast(list[Message], parts)


def _text(part: Message) -> str:
    """A part's text as cloud-init reads it (util.fully_decoded_payload)."""
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode("utf-8")


def _config(part: Message) -> dict[str, Any]:
    assert part.get_content_type() == "text/cloud-config"
    text = _text(part)
    first, _, rest = text.partition("\n")
    assert first == "#cloud-config"
    doc = json.loads(rest)
    assert isinstance(doc, dict)
    return doc


def test_no_command_passes_the_user_data_through_unchanged() -> None:
    for data in ("", CLOUD_CONFIG, "#!/bin/sh\r\necho hi", "plain text é\n"):
        pod = _pod(data, [_container("vm", FOO="bar")], [_container("setup")])
        assert first_boot_user_data(pod) == data
    assert first_boot_commands(_pod(CLOUD_CONFIG)) == []


def test_runcmd_runs_init_containers_in_order_then_the_container_with_env() -> None:
    pod = _pod(
        CLOUD_CONFIG,
        [_container("vm", ["/usr/bin/serve"], ["--port", "8080"], MODE="prod", TOKEN="s e=c")],
        [
            _container("migrate", ["sh", "-c", "echo $HOME; exit 3"], DB="pg://x"),
            _container("nothing"),
            _container("warm", args=["/opt/warm", "it's"]),
        ],
    )
    user, first_boot = _parse(first_boot_user_data(pod))
    assert user.get_content_type() == "text/cloud-config"
    assert user.get_payload() == CLOUD_CONFIG
    assert user["Content-Transfer-Encoding"] == "7bit"
    config = _config(first_boot)
    assert config["merge_how"] == MERGE_HOW
    run = ["sh", "-c", '. "$0" && exec "$@"']
    assert config["runcmd"] == [
        [*run, f"{ENV_DIR}/migrate.env", "sh", "-c", "echo $HOME; exit 3"],
        ["/opt/warm", "it's"],  # args alone run as the command; no env, no env file
        [*run, f"{ENV_DIR}/vm.env", "/usr/bin/serve", "--port", "8080"],
    ]
    # Values only in root-only files, never on a command line.
    assert config["write_files"] == [
        {"path": f"{ENV_DIR}/migrate.env", "owner": "root:root", "permissions": "0600",
         "content": "export DB=pg://x\n"},
        {"path": f"{ENV_DIR}/vm.env", "owner": "root:root", "permissions": "0600",
         "content": "export MODE=prod\nexport TOKEN='s e=c'\n"},
    ]
    assert not any("prod" in arg for entry in config["runcmd"] for arg in entry)
    assert [(c.container, c.argv) for c in first_boot_commands(pod)] == [
        ("migrate", ("sh", "-c", "echo $HOME; exit 3")),
        ("warm", ("/opt/warm", "it's")),
        ("vm", ("/usr/bin/serve", "--port", "8080")),
    ]


def test_without_user_data_only_the_first_boot_part() -> None:
    (only,) = _parse(first_boot_user_data(_pod(containers=[_container("vm", ["true"])])))
    assert _config(only)["runcmd"] == [["true"]]
    assert only.get_filename() == "vmlet-first-boot"


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ("#cloud-config\nhostname: a\n", "text/cloud-config"),
        ("#!/bin/bash\necho hi\n", "text/x-shellscript"),
        ("#include\nhttps://example.com/a\n", "text/x-include-url"),
        ("#include-once\nhttps://example.com/a\n", "text/x-include-once-url"),
        ("## template: jinja\n#cloud-config\nhostname: {{ v1.local_hostname }}\n", "text/jinja2"),
        ("#cloud-config-archive\n- type: text/cloud-config\n", "text/cloud-config-archive"),
        ("#cloud-boothook\n#!/bin/sh\n", "text/cloud-boothook"),
        ("#part-handler\ndef list_types(): ...\n", "text/part-handler"),
        ("  #Cloud-Config\nhostname: a\n", "text/cloud-config"),  # as cloud-init: lstrip, lower
        ("hostname: a\n", "text/plain"),
    ],
)
def test_the_users_part_is_typed_as_cloud_init_types_it(data: str, content_type: str) -> None:
    assert user_data_content_type(data) == content_type
    user, _ = _parse(first_boot_user_data(_pod(data, [_container("vm", ["true"])])))
    assert user.get_content_type() == content_type
    assert user.get_payload() == data
    assert user.get_filename() == "user-data"


@pytest.mark.parametrize(
    "data", ["#!/bin/sh\r\necho hi\r\n", "#!/bin/sh\necho hi", "#!/bin/sh\n\n"]
)
def test_the_users_part_keeps_its_exact_text(data: str) -> None:
    user, _ = _parse(first_boot_user_data(_pod(data, [_container("vm", ["true"])])))
    assert user.get_payload() == data


def test_non_ascii_parts_are_base64_so_cloud_init_reads_them_whole() -> None:
    data = "#cloud-config\nwrite_files: [{path: /etc/motd, content: \"héllo ✓ 🚀\"}]\n"
    pod = _pod(data, [_container("vm", ["echo", "grüß 🚀"], GREETING="✓\u2028x\x85y")])
    text = first_boot_user_data(pod)
    assert text.isascii()
    user, first_boot = _parse(text)
    assert user["Content-Transfer-Encoding"] == "base64"
    assert _text(user) == data
    config = _config(first_boot)
    assert config["runcmd"][0][-2:] == ["echo", "grüß 🚀"]
    assert config["write_files"][0]["content"] == "export GREETING='✓\u2028x\x85y'\n"


def test_the_first_boot_part_is_yaml_that_cloud_init_reads() -> None:
    yaml = pytest.importorskip("yaml")
    argv = ["echo", "a: b", "- c", "#d", "\"'"]
    pod = _pod(containers=[_container("vm", argv, X="\x7f\ufeff🚀")])
    (part,) = _parse(first_boot_user_data(pod))
    loaded = yaml.safe_load(_text(part))
    assert loaded["merge_how"] == MERGE_HOW
    assert loaded["runcmd"] == [["sh", "-c", '. "$0" && exec "$@"', f"{ENV_DIR}/vm.env",
                                 "echo", "a: b", "- c", "#d", "\"'"]]
    assert loaded["write_files"][0]["content"] == "export X='\x7f\ufeff🚀'\n"


def test_a_mime_user_data_is_nested_whole() -> None:
    inner = (
        'Content-Type: multipart/mixed; boundary="inner"\nMIME-Version: 1.0\n\n'
        "--inner\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho one\n"
        "--inner\nContent-Type: text/cloud-config\n\nruncmd: [[echo, two]]\n--inner--\n"
    )
    pod = _pod(inner, [_container("vm", ["echo", "three"])])
    msg = email.message_from_string(first_boot_user_data(pod))
    leaves = [p for p in msg.walk() if not p.is_multipart()]  # as cloud-init walks it
    assert [p.get_content_type() for p in leaves] == [
        "text/x-shellscript", "text/cloud-config", "text/cloud-config",
    ]  # fmt: skip
    assert leaves[0].get_payload() == "#!/bin/sh\necho one"
    assert _config(leaves[2])["runcmd"] == [["echo", "three"]]


def test_the_output_is_deterministic_and_follows_the_content() -> None:
    pod = _pod(CLOUD_CONFIG, [_container("vm", ["run"], A="1")], [_container("init", ["prep"])])
    again = pod_pb2.Pod()
    again.CopyFrom(pod)
    first = first_boot_user_data(pod)
    assert first_boot_user_data(again) == first
    boundary = email.message_from_string(first).get_boundary()
    assert boundary is not None and boundary.startswith("vmlet-")
    again.containers[0].env[0].value = "2"
    other = email.message_from_string(first_boot_user_data(again)).get_boundary()
    assert other != boundary


def test_a_boundary_found_in_a_part_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    class _Digest:
        def __init__(self, data: bytes) -> None:
            self.rounds = 0

        def update(self, data: bytes) -> None:
            self.rounds += 1

        def hexdigest(self) -> str:
            return str(self.rounds) * 64

    monkeypatch.setattr(hashlib, "sha256", _Digest)
    assert userdata._boundary(["plain"]) == "vmlet-" + "0" * 32
    assert userdata._boundary(["has vmlet-" + "0" * 32]) == "vmlet-" + "1" * 32


def test_a_shell_reading_the_env_file_runs_the_command_with_the_values_as_given(
        tmp_path: Path) -> None:
    """The env file and the runcmd entry, run by a real sh as cloud-init would: the command
    sees every value byte for byte (quotes, spaces, newlines, $ and backticks)."""
    values = {"PLAIN": "x", "QUOTED": "it's \"here\"", "LINES": "a\nb", "SHELLY": "$HOME `id` \\"}
    pod = _pod(containers=[_container("vm", ["printenv"], **values)])
    (command,) = first_boot_commands(pod)
    env_file = tmp_path / "vm.env"
    env_file.write_text(command.env_script())
    entry = [env_file.as_posix() if arg == command.env_file else arg for arg in command.runcmd()]
    out = subprocess.run(entry, capture_output=True, text=True, check=True, env={}).stdout
    for name, value in values.items():
        assert f"{name}={value}\n" in out
