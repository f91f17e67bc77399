"""The shared command line: flags, their environment variables, TLS settings, logging."""

from __future__ import annotations

import argparse
import io
import json
import logging

import pytest

from vmlet_contract import (
    DEFAULT_CLIENT_IDENTITY,
    DEFAULT_LISTEN,
    TlsConfig,
    add_server_arguments,
    check_server_arguments,
    configure_logging,
    tls_from_args,
)
from vmlet_contract.logs import REDACTED


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    return parser.parse_args(argv)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VMLET_LISTEN", "VMLET_METRICS_LISTEN", "VMLET_TLS_CERT", "VMLET_TLS_KEY",
                 "VMLET_TLS_CLIENT_CA", "VMLET_TLS_CLIENT_IDENTITY", "VMLET_HEALTH_LISTEN",
                 "VMLET_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    args = _parse()
    assert args.listen == DEFAULT_LISTEN == "127.0.0.1:50051"
    assert args.metrics_listen is None
    assert args.port_file is None
    assert args.grace_seconds == 5.0
    assert args.log_level == "info"
    assert args.tls_client_identity == DEFAULT_CLIENT_IDENTITY == "vmlet-facade"
    assert args.health_listen is None
    with pytest.raises(ValueError, match="mutual TLS"):
        tls_from_args(args)  # no plaintext by default


def test_environment_sets_defaults_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMLET_LISTEN", "0.0.0.0:6000")
    monkeypatch.setenv("VMLET_METRICS_LISTEN", "0.0.0.0:9100")
    monkeypatch.setenv("VMLET_GRACE_SECONDS", "2.5")
    args = _parse()
    assert (args.listen, args.metrics_listen, args.grace_seconds) == (
        "0.0.0.0:6000",
        "0.0.0.0:9100",
        2.5,
    )
    assert _parse("--listen", "127.0.0.1:0").listen == "127.0.0.1:0"


def test_tls_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMLET_TLS_CLIENT_IDENTITY", raising=False)
    full = ("--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem")
    assert tls_from_args(_parse(*full)) == TlsConfig("c.pem", "k.pem", "ca.pem", "vmlet-facade")
    assert tls_from_args(_parse(*full, "--tls-client-identity", "f2")) == TlsConfig(
        "c.pem", "k.pem", "ca.pem", "f2")
    # Server-only TLS would serve anyone: it is refused like a half-given pair.
    for partial in (("--tls-cert", "c.pem"), ("--tls-client-ca", "ca.pem"), full[:4]):
        with pytest.raises(ValueError, match="mutual TLS"):
            tls_from_args(_parse(*partial))
    with pytest.raises(ValueError, match="must name"):
        tls_from_args(_parse(*full, "--tls-client-identity", ""))


def test_plaintext_only_behind_its_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMLET_TLS_CERT", raising=False)
    assert tls_from_args(_parse("--insecure-plaintext")) is None
    with pytest.raises(ValueError, match="contradicts --tls-cert"):
        tls_from_args(_parse("--insecure-plaintext", "--tls-cert", "c.pem"))
    # A flag, never an environment variable.
    monkeypatch.setenv("VMLET_INSECURE_PLAINTEXT", "1")
    with pytest.raises(ValueError):
        tls_from_args(_parse())
    parser = argparse.ArgumentParser(prog="p")
    add_server_arguments(parser)
    with pytest.raises(SystemExit) as info:
        check_server_arguments(parser, parser.parse_args([]))
    assert info.value.code == 2


@pytest.fixture
def restore_root_logger() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_with_fields_and_redaction(restore_root_logger: object) -> None:
    out = io.StringIO()
    configure_logging("info", fmt="json", stream=out)
    log = logging.getLogger("vmlet.test")
    log.debug("not shown")
    log.info(
        "created vm",
        extra={"pod": "ns/p", "user_data": "#cloud-config password: x", "api_token": "t0k"},
    )
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["msg"] == "created vm" and first["level"] == "info"
    assert first["pod"] == "ns/p"
    assert first["user_data"] == REDACTED and first["api_token"] == REDACTED
    assert "ValueError: boom" in lines[1]["exc"]


def test_text_logs_are_key_value(restore_root_logger: object) -> None:
    out = io.StringIO()
    configure_logging("debug", fmt="text", stream=out)
    logging.getLogger("vmlet.test").info("hello world", extra={"port": 5, "password": "x"})
    line = out.getvalue().strip()
    assert 'msg="hello world"' in line
    assert "port=5" in line
    assert f"password={REDACTED}" in line
    with pytest.raises(ValueError):
        configure_logging("info", fmt="xml")
