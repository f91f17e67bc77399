"""One configuration convention for every provider: flag, environment, TOML file, default.

A provider declares its settings as `Option`s of an `Options` table named for it ("vsphere").
The option "node-prefix" of provider "vsphere" is then, from strongest to weakest:

  1. the flag            --node-prefix
  2. the environment     VMLET_VSPHERE_NODE_PREFIX (empty counts as unset)
  3. the TOML file       key node-prefix (or node_prefix), at the top or in a [vsphere] table,
                         of the file named by --config or VMLET_VSPHERE_CONFIG
  4. the option's default.

A repeatable option (`multiple`) takes the flag again, or a comma-separated list in the
environment, or a list (or comma-separated string) in the file.

Two kinds of option step outside the ladder on purpose. A `secret` (a password) has no flag and
no file key, so it never shows in `ps` or in a checked-in file: it comes from its environment
variable only, and is held in a `Secret` whose repr is "[redacted]"; a provider offers a
companion "<name>-file" option for a mounted Secret. A `flag_only` switch (TLS verification
off) is a flag and nothing else, so nobody turns it on by accident. `fallback_env` names another
standard's variables (OpenStack's OS_CLOUD) read after ours.

Every bad value is a `ConfigError` naming where it came from (`--workers: ...`,
`VMLET_VSPHERE_WORKERS: ...`), which a provider's `__main__` reports in one line with exit
status 2 (`vmlet_contract.cli.run_provider`).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ConfigError",
    "Option",
    "Options",
    "Secret",
    "at_least",
    "positive_float",
    "positive_int",
]


class ConfigError(ValueError):
    """The configuration is incomplete, malformed or contradicts itself."""


class Secret:
    """A credential that never shows itself by accident: repr/str print "[redacted]"."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The credential itself, for the one call that needs it."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('[redacted]')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def at_least(kind: type[int] | type[float], minimum: float) -> Callable[[Any], Any]:
    """A converter to `kind` that refuses values under `minimum`."""

    def convert(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{value!r} is not a {'whole ' if kind is int else ''}number"
            ) from None
        if number < minimum:
            raise ValueError(f"{value} is under the minimum of {minimum}")
        return number

    return convert


def positive_int(value: Any) -> int:
    """A whole number of at least 1."""
    number: int = at_least(int, 1)(value)
    return number


def positive_float(value: Any) -> float:
    """A number above 0."""
    number: float = at_least(float, 0)(value)
    if number == 0:
        raise ValueError(f"{value} is not a positive number")
    return number


@dataclass(frozen=True)
class Option:
    """One setting; see the module docstring for where its value comes from."""

    name: str  # the flag without its dashes, e.g. "node-prefix"
    help: str
    convert: Callable[[Any], Any] = str
    default: Any = None
    multiple: bool = False
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    secret: bool = False
    flag_only: bool = False
    fallback_env: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        """The attribute name: dashes become underscores."""
        return self.name.replace("-", "_")


_CONFIG: Final = "config"


class Options:
    """The settings of one provider, named `provider` (VMLET_<PROVIDER>_*, [provider] table)."""

    def __init__(self, provider: str, options: Sequence[Option]) -> None:
        self.provider = provider
        self.prefix = f"VMLET_{provider.upper()}_"
        self.options = tuple(options)

    def env_name(self, option: Option | str) -> str:
        """The environment variable of `option` (an Option or its name)."""
        name = option.name if isinstance(option, Option) else option
        return self.prefix + name.replace("-", "_").upper()

    def environment(self) -> frozenset[str]:
        """Every environment variable these options read (--config's included)."""
        names = {self.env_name(_CONFIG)}
        for option in self.options:
            if not option.flag_only:
                names.update((self.env_name(option), *option.fallback_env))
        return frozenset(names)

    def source_of(self, name: str) -> str:
        """How to give option `name` in a message: its flag, or its variable for a secret."""
        option = next((o for o in self.options if o.name == name), None)
        if option is not None and option.secret:
            return self.env_name(option)
        return f"--{name} or {self.env_name(name)}"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Adds --config and a flag per option (secrets have none) in a group of their own."""
        group = parser.add_argument_group(
            self.provider,
            f"flag > env VMLET_{self.provider.upper()}_<NAME> > key in the --config file > default",
        )
        group.add_argument(
            f"--{_CONFIG}",
            default=None,
            metavar="TOML",
            help=f"file with any of these settings (env {self.env_name(_CONFIG)})",
        )
        for option in self.options:
            if option.secret:
                continue
            if option.flag_only:
                group.add_argument(
                    f"--{option.name}",
                    dest=option.dest,
                    action="store_true",
                    default=False,
                    help=f"{option.help} (a flag only: never from env or file)",
                )
                continue
            extra = f"; one of {', '.join(option.choices)}" if option.choices else ""
            default = f"; default {option.default}" if option.default not in (None, "", ()) else ""
            group.add_argument(
                f"--{option.name}",
                dest=option.dest,
                default=None,
                action="append" if option.multiple else "store",
                metavar=option.metavar,
                help=f"{option.help} (env {self.env_name(option)}{extra}{default})",
            )

    def resolve(
        self, args: argparse.Namespace, env: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Every option's value by `dest`, flag over environment over file over default.

        Secrets come back as `Secret` (or None when unset). ConfigError when a value is
        malformed or the file is unreadable, not TOML, or holds unknown keys.
        """
        env = os.environ if env is None else env
        path = getattr(args, _CONFIG, None) or env.get(self.env_name(_CONFIG)) or None
        file = self.read_file(path) if path else {}
        return {option.dest: self._resolve(option, args, env, file) for option in self.options}

    def read_file(self, path: str) -> dict[str, Any]:
        """The settings in TOML file `path`, by option name; ConfigError when unusable."""
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        table = data.get(self.provider, data)
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: [{self.provider}] must be a table")
        values = {str(k).replace("_", "-"): v for k, v in table.items()}
        by_name = {o.name: o for o in self.options}
        for name in values:
            option = by_name.get(name)
            if option is None:
                continue
            if option.secret:
                raise ConfigError(
                    f"config file {path} sets {name!r}, which only {self.env_name(option)} "
                    f"(or {name}-file) may give"
                )
            if option.flag_only:
                raise ConfigError(
                    f"config file {path} sets {name!r}, which only the --{name} flag may turn on"
                )
        unknown = sorted(set(values) - set(by_name))
        if unknown:
            raise ConfigError(f"config file {path} has unknown keys: {', '.join(unknown)}")
        return values

    def _resolve(
        self,
        option: Option,
        args: argparse.Namespace,
        env: Mapping[str, str],
        file: Mapping[str, Any],
    ) -> Any:
        if option.flag_only:
            return bool(getattr(args, option.dest, False))
        if option.secret:
            value = env.get(self.env_name(option))
            return Secret(value) if value else None
        value, source = getattr(args, option.dest, None), f"--{option.name}"
        for name in (self.env_name(option), *option.fallback_env):
            if value is None and env.get(name):
                value, source = env[name], name
        if value is None and option.name in file:
            value, source = file[option.name], f"config key {option.name}"
        if value is None:
            return () if option.multiple and option.default is None else option.default
        if option.multiple:
            return tuple(item for part in _listed(value) for item in _split(part))
        try:
            out = option.convert(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if option.choices and out not in option.choices:
            raise ConfigError(f"{source}: {out!r} is not one of {', '.join(option.choices)}")
        return out


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _split(value: Any) -> list[str]:
    return [item.strip() for item in str(value).split(",") if item.strip()]
