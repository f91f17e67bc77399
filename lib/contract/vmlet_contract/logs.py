"""Structured logging for providers: one JSON object (or one key=value line) per record, on stderr.

Fields passed with `extra=` become fields of the record. Any field whose name suggests a
credential (password, token, secret, user data, private key, ...) is replaced by "[redacted]"
before it is written, so a careless `extra={"user_data": ...}` cannot leak a cloud-init secret.
Messages themselves are not scanned: never format credentials into them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Final, TextIO

__all__ = ["JsonFormatter", "KeyValueFormatter", "configure_logging", "redact"]

REDACTED: Final = "[redacted]"

_SENSITIVE = re.compile(
    r"pass(word|wd)?|secret|token|credential|private[_-]?key|user[_-]?data|authorization|api[_-]?key",
    re.IGNORECASE,
)

# Attributes every LogRecord has; whatever else is on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def redact(fields: dict[str, Any]) -> dict[str, Any]:
    """Returns `fields` with the values of credential-like keys replaced."""
    return {k: (REDACTED if _SENSITIVE.search(k) else v) for k, v in fields.items()}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    out.update(redact({k: v for k, v in vars(record).items() if k not in _STANDARD}))
    if record.exc_info:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    return out


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str, ensure_ascii=False)


def _kv(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


class KeyValueFormatter(logging.Formatter):
    """Formats a record as `time=... level=... msg="..." key=value` (logfmt)."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_kv(v)}" for k, v in _fields(record).items())


def configure_logging(
    level: str | int = "info", *, fmt: str = "json", stream: TextIO | None = None
) -> None:
    """Sends every log record at `level` or above to `stream` (stderr), formatted as `fmt`
    ("json" or "text"), replacing whatever handlers the root logger had."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "text":
        handler.setFormatter(KeyValueFormatter())
    else:
        raise ValueError(f"unknown log format {fmt!r}: want json or text")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
