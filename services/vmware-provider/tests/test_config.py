"""Settings from flags, environment and file; credentials never show."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vmlet_vmware.__main__ import main
from vmlet_vmware.config import (
    ConfigError,
    Secret,
    VCenterAddress,
    add_vsphere_arguments,
    settings_from_args,
)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_vsphere_arguments(parser)
    return parser.parse_args(argv)


BASE_ENV = {"VMLET_VSPHERE_URL": "vc.example", "VMLET_VSPHERE_USERNAME": "u",
            "VMLET_VSPHERE_PASSWORD": "s3cret"}  # fmt: skip


def test_environment_then_flags() -> None:
    settings = settings_from_args(_parse(), BASE_ENV)
    assert settings.address == VCenterAddress("vc.example", 443, "/sdk")
    assert settings.password.reveal() == "s3cret"
    assert settings.vm_folder == "vmlet" and settings.clusters == ()
    flagged = settings_from_args(
        _parse("--url", "https://vc:8443/sdk", "--cluster", "a", "--cluster", "b,c"),
        {**BASE_ENV, "VMLET_VSPHERE_CLUSTER": "ignored"},
    )
    assert flagged.address == VCenterAddress("vc", 8443, "/sdk")
    assert flagged.clusters == ("a", "b", "c")


def test_file_is_the_last_resort(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("from-file\n")
    config = tmp_path / "vsphere.toml"
    config.write_text(
        f'[vsphere]\nurl = "vc.lab"\nusername = "svc"\npassword-file = "{password}"\n'
        'cluster = ["c1", "c2"]\nvm_folder = "/k8s/vms/"\nmax-pods = 40\n'
    )
    settings = settings_from_args(_parse("--config", str(config)), {})
    assert settings.address.host == "vc.lab" and settings.username == "svc"
    assert settings.password.reveal() == "from-file"
    assert settings.clusters == ("c1", "c2")
    assert settings.vm_folder == "k8s/vms" and settings.max_pods == 40
    env = settings_from_args(_parse("--config", str(config)), {"VMLET_VSPHERE_MAX_PODS": "7"})
    assert env.max_pods == 7


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('password = "x"', "password"),
        ("insecure = true", "--insecure"),
        ('color = "blue"', "unknown keys"),
    ],
)
def test_file_cannot_hold_password_or_insecure(tmp_path: Path, text: str, complaint: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=complaint):
        settings_from_args(_parse("--config", str(config)), BASE_ENV)


def test_missing_and_contradicting_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="URL"):
        settings_from_args(_parse(), {})
    with pytest.raises(ConfigError, match="password is missing"):
        settings_from_args(_parse("--url", "vc", "--username", "u"), {})
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ConfigError, match="contradict"):
        settings_from_args(_parse("--insecure", "--ca-file", str(ca)), BASE_ENV)
    with pytest.raises(ConfigError, match="http"):
        settings_from_args(_parse("--url", "http://vc"), BASE_ENV)
    with pytest.raises(ConfigError, match="--workers"):
        settings_from_args(_parse("--workers", "0"), BASE_ENV)
    with pytest.raises(ConfigError, match="--max-creates"):
        settings_from_args(_parse("--max-creates", "0"), BASE_ENV)
    assert settings_from_args(_parse(), BASE_ENV).max_creates == 16
    assert settings_from_args(_parse("--max-creates", "4"), BASE_ENV).max_creates == 4
    assert settings_from_args(_parse("--insecure"), BASE_ENV).insecure


def test_password_never_shows() -> None:
    settings = settings_from_args(_parse(), BASE_ENV)
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(Secret("s3cret"))


def test_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = tmp_path / "vsphere.toml"
    config.write_text('[vsphere]\nnode-prefix = "file"\n')
    env = {**BASE_ENV, "VMLET_VSPHERE_CONFIG": str(config)}
    assert settings_from_args(_parse(), BASE_ENV).node_prefix == "vsphere"
    assert settings_from_args(_parse(), env).node_prefix == "file"
    env["VMLET_VSPHERE_NODE_PREFIX"] = "env"
    assert settings_from_args(_parse(), env).node_prefix == "env"
    assert settings_from_args(_parse("--node-prefix", "flag"), env).node_prefix == "flag"


def test_bad_configuration_exits_2_with_one_line(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in BASE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VMLET_VSPHERE_PASSWORD", "s3cret")
    monkeypatch.setenv("VMLET_VSPHERE_WORKERS", "0")
    # Past the TLS flags (a missing one exits 2 too), to the vSphere configuration.
    assert main(["--insecure-plaintext", "--log-format", "text"]) == 2
    (line,) = capfd.readouterr().err.splitlines()
    assert "configuration error: VMLET_VSPHERE_WORKERS: 0 is under the minimum of 1" in line
    assert "s3cret" not in line
