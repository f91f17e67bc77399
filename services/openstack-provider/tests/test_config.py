"""Settings from flags, environment and file: the vmlet convention, clouds.yaml for the cloud."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vmlet_openstack.__main__ import main
from vmlet_openstack.config import ConfigError, add_openstack_arguments, settings_from_args


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_openstack_arguments(parser)
    return parser.parse_args(list(argv))


def test_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = tmp_path / "openstack.toml"
    config.write_text('[openstack]\nnode-prefix = "file"\npoll_seconds = 3\nnetwork = ["a", "b"]\n')
    env = {"VMLET_OPENSTACK_CONFIG": str(config)}
    assert settings_from_args(_parse(), {}).node_prefix == "openstack"
    from_file = settings_from_args(_parse(), env)
    assert (from_file.node_prefix, from_file.poll_seconds) == ("file", 3.0)
    assert from_file.network == ("a", "b")
    env["VMLET_OPENSTACK_NODE_PREFIX"] = "env"
    assert settings_from_args(_parse(), env).node_prefix == "env"
    assert settings_from_args(_parse("--node-prefix", "flag"), env).node_prefix == "flag"


def test_openstack_own_variables_come_after_ours() -> None:
    env = {"OS_CLOUD": "sdk", "OS_REGION_NAME": "r1"}
    settings = settings_from_args(_parse(), env)
    assert (settings.cloud, settings.region) == ("sdk", "r1")
    assert settings_from_args(_parse(), {**env, "VMLET_OPENSTACK_CLOUD": "ours"}).cloud == "ours"


def test_no_credential_in_the_file(tmp_path: Path) -> None:
    config = tmp_path / "openstack.toml"
    config.write_text('password = "x"\n')
    with pytest.raises(ConfigError, match="unknown keys: password"):
        settings_from_args(_parse("--config", str(config)), {})


def test_bad_configuration_exits_2_with_one_line(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMLET_OPENSTACK_MIGRATION", "teleport")
    assert main(["--insecure-plaintext", "--log-format", "text"]) == 2
    (line,) = capfd.readouterr().err.splitlines()
    assert "configuration error: VMLET_OPENSTACK_MIGRATION: 'teleport' is not one of" in line
