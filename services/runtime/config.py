"""Role configuration: one frozen dataclass per role, read from TOML with
environment overrides, validated once at start with every error reported
together.

A settings class is a frozen dataclass whose fields are scalars, tuples of
scalars, nested settings dataclasses, or tuples of them (e.g. campaigns).
Environment overrides reach scalar and tuple-of-scalar fields: the variable
`ADCHAIN_<SECTION>_<FIELD>` (upper case, nested sections joined by `_`)
overrides `[section] field`; tuples take comma-separated values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ENV_PREFIX = "ADCHAIN"


class ConfigError(ValueError):
    """Every problem found in one configuration, listed together."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Where and how a role serves; shared by every role."""

    # The instance's name in logs, metrics and counts (e.g. "dsp-1").
    name: str = ""
    host: str = "127.0.0.1"
    # 0 picks a free port; the bound port is reported in the ready file.
    grpc_port: int = 0
    metrics_port: int = 0
    # In-flight RPCs the server takes before answering RESOURCE_EXHAUSTED (0: no limit).
    max_concurrent_rpcs: int = 0
    # Seconds in-flight RPCs get to finish after SIGTERM.
    grace_s: float = 5.0

    def validate(self, where: str) -> list[str]:
        problems = []
        for field in ("grpc_port", "metrics_port"):
            port = getattr(self, field)
            if not 0 <= port <= 65535:
                problems.append(f"{where}.{field}: {port} is not a port number")
        if self.max_concurrent_rpcs < 0:
            problems.append(f"{where}.max_concurrent_rpcs: must not be negative (0 is no limit)")
        if self.grace_s < 0:
            problems.append(f"{where}.grace_s: must not be negative")
        return problems


LEDGER_SYNCHRONOUS = ("normal", "full")


@dataclasses.dataclass(frozen=True)
class LedgerSettings:
    """Where a role keeps its counts across restarts; shared by every role."""

    # The SQLite file of the role's ledger; empty: no ledger, counts kept in
    # memory and lost when the process ends.
    path: str = ""
    # SQLite's `synchronous` pragma: in WAL mode "normal" keeps every commit
    # through a crash of the process, "full" also through a loss of power, at
    # an fsync per commit.
    synchronous: str = "normal"

    def validate(self, where: str) -> list[str]:
        problems = []
        if self.synchronous not in LEDGER_SYNCHRONOUS:
            problems.append(f"{where}.synchronous: {self.synchronous!r} is not one of {', '.join(LEDGER_SYNCHRONOUS)}")
        return problems


def load(cls: type[T], path: str | Path | None = None, env: Mapping[str, str] | None = None) -> T:
    """Build settings of type `cls` from a TOML file (optional) and the
    environment, then validate. Raises ConfigError listing every problem."""
    data: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as handle:
            # TOML for people; JSON for configs that programs write (adchain up).
            data = json.load(handle) if str(path).endswith(".json") else tomllib.load(handle)
    return from_mapping(cls, data, os.environ if env is None else env)


def from_mapping(cls: type[T], data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> T:
    problems: list[str] = []
    settings = _build(cls, data, (), env or {}, problems)
    # Validate what could be built too (bad values fell back to defaults), so
    # one run reports every problem.
    problems.extend(_validate(settings, ()))
    if problems:
        raise ConfigError(problems)
    return settings


def _build(cls: type, data: Mapping[str, Any], path: tuple[str, ...], env: Mapping[str, str], problems: list[str]):
    where = ".".join(path) or "<root>"
    if not isinstance(data, Mapping):
        problems.append(f"{where}: expected a table, got {type(data).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            problems.append(f"{'.'.join((*path, key))}: unknown setting")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        hint = hints[name]
        key_path = (*path, name)
        env_name = "_".join((ENV_PREFIX, *key_path)).upper()
        if _is_settings(hint):
            values[name] = _build(hint, data.get(name, {}), key_path, env, problems)
            continue
        item = _settings_item(hint)
        if item is not None:
            rows = data.get(name, [])
            if not isinstance(rows, list):
                problems.append(f"{'.'.join(key_path)}: expected an array of tables")
                continue
            values[name] = tuple(_build(item, row, (*key_path, str(i)), env, problems) for i, row in enumerate(rows))
            continue
        if env_name in env:
            raw: Any = env[env_name]
            from_env = True
        elif name in data:
            raw, from_env = data[name], False
        else:
            continue  # the dataclass default applies
        try:
            values[name] = _coerce(hint, raw, from_env)
        except (TypeError, ValueError) as error:
            source = env_name if from_env else ".".join(key_path)
            problems.append(f"{source}: {error}")
    try:
        return cls(**values)
    except TypeError as error:
        problems.append(f"{where}: {error}")
        return None


def _validate(settings: Any, path: tuple[str, ...]) -> list[str]:
    """Call every settings object's `validate(where)`, where `where` is its
    dotted path in the file (e.g. "dsp.campaigns.0"), depth first."""
    problems: list[str] = []
    if settings is None:
        return problems
    validate = getattr(settings, "validate", None)
    if validate is not None:
        problems.extend(validate(".".join(path)))
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if dataclasses.is_dataclass(value):
            problems.extend(_validate(value, (*path, field.name)))
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                problems.extend(_validate(item, (*path, field.name, str(i))))
    return problems


def _is_settings(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _settings_item(hint: Any) -> type | None:
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if args and _is_settings(args[0]):
            return args[0]
    return None


def _coerce(hint: Any, raw: Any, from_env: bool) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(hint)
        if from_env:
            raw = [part.strip() for part in raw.split(",") if part.strip()]
        if not isinstance(raw, list):
            raise TypeError(f"expected an array, got {type(raw).__name__}")
        return tuple(_coerce(item_type, item, from_env) for item in raw)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(inner[0], raw, from_env)
    if hint is bool:
        if from_env:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{raw!r} is not a boolean")
        if not isinstance(raw, bool):
            raise TypeError(f"expected true or false, got {raw!r}")
        return raw
    if hint is int:
        if from_env:
            return int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise TypeError(f"expected an integer, got {raw!r}")
        return raw
    if hint is float:
        if from_env:
            return float(raw)
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise TypeError(f"expected a number, got {raw!r}")
        return float(raw)
    if hint is str:
        if not isinstance(raw, str):
            raise TypeError(f"expected a string, got {raw!r}")
        return raw
    raise TypeError(f"unsupported setting type {hint!r}")


@dataclasses.dataclass(frozen=True)
class Peer:
    """Another role this one calls, by instance name and gRPC address."""

    name: str = ""
    address: str = ""

    def validate(self, where: str) -> list[str]:
        problems = []
        if not self.name:
            problems.append(f"{where}.name: is required")
        if not self.address:
            problems.append(f"{where}.address: is required")
        return problems


def duplicate_names(where: str, peers: tuple[Peer, ...]) -> list[str]:
    names = [p.name for p in peers]
    return [f"{where}: duplicate name {n!r}" for n in sorted({n for n in names if names.count(n) > 1})]


@dataclasses.dataclass(frozen=True)
class RetrySettings:
    """How notices to another role are retried when it cannot take them."""

    # A notice the receiver did not take is retried every interval...
    retry_interval_s: float = 10.0
    # ...for this long after the first try, then counted as failed.
    retry_for_s: float = 60.0
    timeout_ms: int = 1000
    # Notices to one receiver go in batches of at most this many...
    batch_max_items: int = 256
    # ...sent once the oldest has waited this long, if the batch is not full sooner.
    batch_max_delay_ms: int = 20

    def validate(self, where: str) -> list[str]:
        problems = []
        if self.retry_interval_s <= 0:
            problems.append(f"{where}.retry_interval_s: must be positive")
        if self.retry_for_s < 0:
            problems.append(f"{where}.retry_for_s: must not be negative")
        if self.timeout_ms <= 0:
            problems.append(f"{where}.timeout_ms: must be positive")
        if self.batch_max_items < 1:
            problems.append(f"{where}.batch_max_items: must be at least 1")
        if self.batch_max_delay_ms < 0:
            problems.append(f"{where}.batch_max_delay_ms: must not be negative")
        return problems
