"""Files and directories only their owner can read: where the local environment keeps secrets.

Passwords, keys, kubeconfigs, the env file and the peers' logs (which may quote a secret a peer
prints) go through these, so nothing the environment writes is readable by other users of the
machine: directories 0700, files 0600, set when the file is created (no window in which it is
world-readable) and again on a file that already existed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

__all__ = ["open_private_log", "private_dir", "write_private"]


def private_dir(path: Path) -> Path:
    """``path`` made (with its parents) and set to 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def write_private(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` as a 0600 file, replacing what was there."""
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, raw)
    finally:
        os.close(fd)
    return path


def open_private_log(path: Path) -> BinaryIO:
    """``path`` opened for appending as a 0600 file, in a 0700 directory."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")
