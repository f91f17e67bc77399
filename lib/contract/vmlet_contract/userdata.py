"""The user data a cloud-init guest boots with: the pod's own, plus its first-boot commands.

The contract has a guest that takes cloud-init user data run each init container's command and
args, in order, then each container's, once at first boot, with that container's env set.
`first_boot_user_data` composes what a provider delivers:

- no container or init container has a command or args: `Pod.user_data`, unchanged;
- otherwise a MIME multipart (multipart/mixed) document, as cloud-init reads it: the pod's own
  user data as the first part when there is any (typed by its first line as cloud-init types it:
  `#cloud-config` is text/cloud-config, `#!` text/x-shellscript, ...; a MIME document is nested
  whole), then a text/cloud-config part whose `runcmd` holds one exec-form entry per command,
  `[*command, *args]`; a command with env runs as `["sh", "-c", '. "$0" && exec "$@"', FILE,
  *command, *args]`, FILE a root-only file of `export NAME='value'` lines the part's
  `write_files` puts under ENV_DIR, so no value is ever on a command line. Its `merge_how`
  appends to the runcmd and write_files the pod's own cloud-config may have (cloud-init's
  default merge replaces lists).

The cloud-config is written as JSON (JSON is YAML); the boundary is derived from the content, so
a retried CreatePod delivers the same bytes. Parts are 7bit when ASCII, else base64: cloud-init
reads a MIME document as text, where an 8bit part would lose its non-ASCII characters.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from typing import Final

from vmlet.provider.v1 import pod_pb2

__all__ = [
    "ENV_DIR",
    "MERGE_HOW",
    "FirstBootCommand",
    "first_boot_commands",
    "first_boot_user_data",
    "user_data_content_type",
]

#: How the first-boot part merges into the cloud-config before it: lists append (runcmd).
MERGE_HOW: Final = "list(append)+dict(no_replace,recurse_list)+str()"

# cloud-init's headers (cloudinit/handlers INCLUSION_TYPES_MAP), matched longest first.
_HEADERS: Final = sorted(
    {
        "#include": "text/x-include-url",
        "#include-once": "text/x-include-once-url",
        "#!": "text/x-shellscript",
        "#cloud-config": "text/cloud-config",
        "#upstart-job": "text/upstart-job",
        "#part-handler": "text/part-handler",
        "#cloud-boothook": "text/cloud-boothook",
        "#cloud-config-archive": "text/cloud-config-archive",
        "#cloud-config-jsonp": "text/cloud-config-jsonp",
        "## template: jinja": "text/jinja2",
    }.items(),
    key=lambda item: -len(item[0]),
)
# cloud-init types a part without a known header itself, as it does text/plain.
_UNTYPED: Final = "text/plain"
# cloud-init treats user data as MIME when this occurs in its first 4096 characters.
_MIME_MARK: Final = "mime-version:"
_MIME_SCAN: Final = 4096
#: The guest directory of the first-boot commands' env files (tmpfs: gone at the next boot).
ENV_DIR: Final = "/run/vmlet/first-boot"
# `sh -c SCRIPT FILE ARGV...`: $0 is the env file, "$@" the command.
_RUN_WITH_ENV: Final = '. "$0" && exec "$@"'
_SHELL_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Characters PyYAML refuses raw or reads as line breaks, escaped inside JSON strings.
_NOT_YAML_SAFE: Final = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")


@dataclass(frozen=True)
class FirstBootCommand:
    """One command a guest runs once at first boot: a container's command and args, with env."""

    container: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    @property
    def env_file(self) -> str:
        """Where the guest keeps this command's env (root only, on tmpfs), when it has env."""
        return f"{ENV_DIR}/{self.container}.env"

    def env_script(self) -> str:
        """The env file's text: one `export NAME='value'` line per variable a shell can name;
        a name it cannot (`a.b`) is left out, as no shell can export it."""
        return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in self.env
                       if _SHELL_NAME.fullmatch(name))

    def runcmd(self) -> list[str]:
        """The exec-form runcmd entry: argv, run by a shell that first reads the env file when
        there is env (values never on a command line, where any guest user sees them)."""
        if not self.env:
            return list(self.argv)
        return ["sh", "-c", _RUN_WITH_ENV, self.env_file, *self.argv]


def first_boot_commands(pod: pod_pb2.Pod) -> list[FirstBootCommand]:
    """The pod's first-boot commands in the order a guest runs them: its init containers', then
    its containers'. A container with neither command nor args has none."""
    return [
        FirstBootCommand(
            container=c.name,
            argv=(*c.command, *c.args),
            env=tuple((e.name, e.value) for e in c.env),
        )
        for c in (*pod.init_containers, *pod.containers)
        if c.command or c.args
    ]


def user_data_content_type(user_data: str) -> str:
    """The MIME type cloud-init gives user data by its first line (text/plain when unknown)."""
    start = user_data.lstrip().lower()
    for header, content_type in _HEADERS:
        if start.startswith(header):
            return content_type
    return _UNTYPED


def first_boot_user_data(pod: pod_pb2.Pod) -> str:
    """The user data a provider delivers for `pod`; see the module docstring."""
    commands = first_boot_commands(pod)
    if not commands:
        return pod.user_data
    parts: list[str] = []
    if pod.user_data:
        if _MIME_MARK in pod.user_data[:_MIME_SCAN].lower():
            parts.append(pod.user_data)  # headers and body: a part as it stands
        else:
            parts.append(_part(pod.user_data, user_data_content_type(pod.user_data), "user-data"))
    parts.append(_part(_runcmd_config(commands), "text/cloud-config", "vmlet-first-boot"))
    boundary = _boundary(parts)
    lines = [
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        "MIME-Version: 1.0",
        "",
    ]
    for part in parts:
        # The line break before a delimiter belongs to it: each part keeps its exact text.
        lines += [f"--{boundary}", part]
    lines += [f"--{boundary}--", ""]
    return "\n".join(lines)


def _runcmd_config(commands: list[FirstBootCommand]) -> str:
    entries = ",\n  ".join(_json(c.runcmd()) for c in commands)
    files = ",\n  ".join(
        _json({"path": c.env_file, "owner": "root:root", "permissions": "0600",
               "content": c.env_script()})
        for c in commands if c.env)
    return (
        "#cloud-config\n"
        f'{{"merge_how": {_json(MERGE_HOW)},\n'
        + (f' "write_files": [\n  {files}\n ],\n' if files else "")
        + f' "runcmd": [\n  {entries}\n ]}}\n'
    )


def _json(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return _NOT_YAML_SAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _part(text: str, content_type: str, filename: str) -> str:
    ascii_only = text.isascii()
    headers = [
        f'Content-Type: {content_type}; charset="{"us-ascii" if ascii_only else "utf-8"}"',
        "MIME-Version: 1.0",
        f"Content-Transfer-Encoding: {'7bit' if ascii_only else 'base64'}",
        f'Content-Disposition: attachment; filename="{filename}"',
        "",
    ]
    body = text if ascii_only else base64.encodebytes(text.encode()).decode().rstrip("\n")
    return "\n".join([*headers, body])


def _boundary(parts: list[str]) -> str:
    digest = hashlib.sha256("\0".join(parts).encode())
    while True:
        boundary = f"vmlet-{digest.hexdigest()[:32]}"
        if not any(boundary in part for part in parts):
            return boundary
        digest.update(b"\0")
