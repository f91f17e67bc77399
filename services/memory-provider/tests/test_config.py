"""Settings from flags, environment and file; a bad one stops the process with one line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vmlet_memory.__main__ import main
from vmlet_memory.config import OPTIONS, ConfigError, settings_from_args


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    OPTIONS.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = tmp_path / "memory.toml"
    config.write_text('nodes = 3\ncpu = "8"\nimages = ["debian-12", "alpine"]\n')
    env = {"VMLET_MEMORY_CONFIG": str(config)}
    assert settings_from_args(_parse(), {}).cloud.nodes == 2
    from_file = settings_from_args(_parse(), env)
    assert (from_file.cloud.nodes, from_file.cloud.cpu) == (3, "8")
    assert from_file.cloud.images == ("debian-12", "alpine")
    env["VMLET_MEMORY_NODES"] = "4"
    assert settings_from_args(_parse(), env).cloud.nodes == 4
    assert settings_from_args(_parse("--nodes", "5"), env).cloud.nodes == 5
    assert settings_from_args(_parse("--state-file", "s.json"), {}).state_file == Path("s.json")


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (("--nodes", "0"), "--nodes: 0 is under the minimum of 1"),
        (("--memory", "lots"), "--memory: 'lots' is not a quantity"),
        (("--ip-base", "10.0.0.0/99"), "--ip-base: "),
        (("--start-delay-seconds", "-1"), "--start-delay-seconds: "),
    ],
)
def test_bad_values(argv: tuple[str, ...], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        settings_from_args(_parse(*argv), {})


def test_bad_configuration_exits_2_with_one_line(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMLET_MEMORY_PODS", "-3")
    assert main(["--insecure-plaintext"]) == 2
    (line,) = capfd.readouterr().err.splitlines()
    assert '"configuration error: VMLET_MEMORY_PODS: -3 is under the minimum of 1"' in line
