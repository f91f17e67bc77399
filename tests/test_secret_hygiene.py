"""No secret on a command line, in a log, or in a file others can read: the local environment's
vcsim and control plane, checked the way another user of the machine would look (``ps``, the
files' modes)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pyVim.connect import SmartConnect

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.vcsim import VcSim


def command_lines() -> list[str]:
    """Every process's command line, as ``ps -ef`` shows them to any user."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace"))
            except OSError:
                continue
    return out


def exposed(root: Path, *secrets: str) -> list[str]:
    """What under ``root`` another user could read: ``root`` itself unless it is 0700, and any
    file holding a private key or one of ``secrets`` that is not owner-only (certificates and
    public keys are public)."""
    found = []
    if root.stat().st_mode & 0o777 != 0o700:
        found.append(f"{root} {stat.filemode(root.stat().st_mode)}")
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if b"PRIVATE KEY" in data or any(s.encode() in data for s in secrets):
            if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                found.append(f"{path} {stat.filemode(path.stat().st_mode)}")
    return found


def holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_vcsim_password_is_on_no_command_line_in_no_log_and_owner_only(vcsim: VcSim) -> None:
    assert vcsim.process is not None and vcsim.process.running()
    assert not [c for c in command_lines() if vcsim.password in c]
    assert not [p for p in holding(vcsim.dir, vcsim.password) if p.suffix == ".log"]
    assert exposed(vcsim.dir, vcsim.password) == []
    # vcsim really checks the password it read from the file: its path is no password.
    with vcsim.connect() as si:
        assert si.content.about.name
    with pytest.raises(Exception, match=r"(?i)login|password|incorrect"):
        SmartConnect(host="127.0.0.1", port=vcsim.port, user=vcsim.username,
                     pwd=str(vcsim.dir / "password"), sslContext=vcsim.ssl_context())


def test_control_plane_keys_kubeconfigs_and_logs_are_owner_only(
    control_plane: ControlPlane,
) -> None:
    assert exposed(control_plane.dir) == []
    kubeconfigs = list(control_plane.dir.glob("*.kubeconfig"))
    assert kubeconfigs and all(p.stat().st_mode & 0o777 == 0o600 for p in kubeconfigs)
    keys = [p for p in control_plane.dir.rglob("*.key")]
    assert keys and all(p.stat().st_mode & 0o777 == 0o600 for p in keys)
    private = [p.read_text() for p in keys if "PRIVATE KEY" in p.read_text()]
    assert not [c for c in command_lines() for k in private if k.strip() in c]
    tokens = [p.read_text().strip() for p in control_plane.dir.rglob("*token*") if p.is_file()]
    assert exposed(control_plane.dir, *tokens) == []
