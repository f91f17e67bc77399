"""The configuration convention: flag > VMLET_<PROVIDER>_* > TOML file > default."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from vmlet_contract import ProviderCommand, ProviderServicers, run_provider
from vmlet_contract.settings import (
    ConfigError,
    Option,
    Options,
    Secret,
    at_least,
    positive_float,
    positive_int,
)

OPTIONS = Options(
    "toy",
    [
        Option("node-prefix", "prefix", default="toy"),
        Option("workers", "threads", positive_int, 8),
        Option("zone", "a zone", fallback_env=("OTHER_ZONE",)),
        Option("mode", "a mode", default="auto", choices=("auto", "cold")),
        Option("cluster", "clusters", multiple=True),
        Option("password", "secret", secret=True),
        Option("insecure", "no TLS checks", flag_only=True),
    ],
)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    OPTIONS.add_arguments(parser)
    return parser.parse_args(argv)


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "toy.toml"
    path.write_text(text)
    return str(path)


def test_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = _config(tmp_path, '[toy]\nnode_prefix = "file"\nworkers = 3\ncluster = ["a", "b"]\n')
    env = {"VMLET_TOY_NODE_PREFIX": "env", "VMLET_TOY_CONFIG": config}
    assert OPTIONS.resolve(_parse(), {})["node_prefix"] == "toy"
    assert OPTIONS.resolve(_parse(), {"VMLET_TOY_CONFIG": config})["node_prefix"] == "file"
    assert OPTIONS.resolve(_parse(), env)["node_prefix"] == "env"
    assert OPTIONS.resolve(_parse("--node-prefix", "flag"), env)["node_prefix"] == "flag"
    values = OPTIONS.resolve(_parse(), env)
    assert values["workers"] == 3 and values["cluster"] == ("a", "b")
    assert OPTIONS.resolve(_parse(), {**env, "VMLET_TOY_WORKERS": ""})["workers"] == 3
    flagged = OPTIONS.resolve(_parse("--cluster", "x", "--cluster", "y,z"), env)
    assert flagged["cluster"] == ("x", "y", "z")
    assert OPTIONS.resolve(_parse(), {"VMLET_TOY_CLUSTER": "p, q"})["cluster"] == ("p", "q")
    assert OPTIONS.resolve(_parse(), {})["cluster"] == ()


def test_environment_lists_every_variable_read() -> None:
    assert OPTIONS.environment() == {
        "VMLET_TOY_CONFIG", "VMLET_TOY_NODE_PREFIX", "VMLET_TOY_WORKERS", "VMLET_TOY_ZONE",
        "OTHER_ZONE", "VMLET_TOY_MODE", "VMLET_TOY_CLUSTER", "VMLET_TOY_PASSWORD",
    }  # fmt: skip


def test_fallback_env_comes_after_ours() -> None:
    assert OPTIONS.resolve(_parse(), {"OTHER_ZONE": "o"})["zone"] == "o"
    both = {"OTHER_ZONE": "o", "VMLET_TOY_ZONE": "ours"}
    assert OPTIONS.resolve(_parse(), both)["zone"] == "ours"


def test_bad_values_name_their_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--workers: "):
        OPTIONS.resolve(_parse("--workers", "0"), {})
    with pytest.raises(ConfigError, match=r"^VMLET_TOY_WORKERS: 'many' is not a whole number"):
        OPTIONS.resolve(_parse(), {"VMLET_TOY_WORKERS": "many"})
    with pytest.raises(ConfigError, match="config key mode: 'hot' is not one of auto, cold"):
        OPTIONS.resolve(_parse("--config", _config(tmp_path, 'mode = "hot"')), {})


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('password = "x"', "only VMLET_TOY_PASSWORD"),
        ("insecure = true", "only the --insecure flag"),
        ('color = "blue"', "unknown keys: color"),
        ("workers = ", "not valid TOML"),
        ("toy = 3", r"\[toy\] must be a table"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        OPTIONS.resolve(_parse("--config", _config(tmp_path, text)), {})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file /nonexistent\.toml"):
        OPTIONS.resolve(_parse(), {"VMLET_TOY_CONFIG": "/nonexistent.toml"})


def test_secrets_only_from_env_and_switches_only_from_flags() -> None:
    with pytest.raises(SystemExit):
        _parse("--password", "x")  # no such flag
    values = OPTIONS.resolve(_parse(), {"VMLET_TOY_PASSWORD": "s3cret", "VMLET_TOY_INSECURE": "1"})
    assert values["password"] == Secret("s3cret") and "s3cret" not in repr(values)
    assert values["insecure"] is False
    assert OPTIONS.resolve(_parse("--insecure"), {})["insecure"] is True
    assert OPTIONS.resolve(_parse(), {})["password"] is None


def test_converters() -> None:
    assert at_least(float, 0.5)("0.5") == 0.5
    with pytest.raises(ValueError, match="under the minimum"):
        at_least(float, 0.5)(0.4)
    with pytest.raises(ValueError, match="not a number"):
        at_least(int, 1)(True)
    with pytest.raises(ValueError, match="not a positive number"):
        positive_float("0")
    assert positive_int("7") == 7


def _load(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    return OPTIONS.resolve(args, env)


@contextlib.asynccontextmanager
async def _never(settings: dict[str, Any]) -> AsyncIterator[ProviderServicers]:
    raise AssertionError("a bad configuration must not build the provider")
    yield  # pragma: no cover


COMMAND = ProviderCommand(
    prog="toy", description="toy", kind="toy", options=OPTIONS, load=_load, running=_never,
    describe=dict,
)  # fmt: skip


def test_run_provider_exits_2_with_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    env = {"VMLET_TOY_WORKERS": "0", "VMLET_TOY_PASSWORD": "s3cret"}
    assert run_provider(COMMAND, ["--insecure-plaintext"], env) == 2
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["level"] == "error"
    assert record["msg"] == "configuration error: VMLET_TOY_WORKERS: 0 is under the minimum of 1"
    assert "s3cret" not in lines[0]
    # Incomplete server TLS flags are a configuration error of the same shape.
    assert run_provider(COMMAND, ["--log-format", "text"], {}) == 2
    (line,) = capfd.readouterr().err.splitlines()
    assert "configuration error: a provider serves mutual TLS" in line
