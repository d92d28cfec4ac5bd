"""The TOML config: one frozen dataclass per table, validated with errors that name the key.

Defaults live only here; `guard config check` and the README table derive from
them. Audio destinations will come from this file alone, never from a flag or
a remote command.
"""

import difflib
import json
import os
import re
import socket
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from guard.errors import ConfigError
from guard.wake import WakeModelSettings

SYSTEM_CONFIG = Path("/etc/guard/guard.toml")


def _doc(text: str, lo: float | None = None, hi: float | None = None, **extra: Any) -> dict:
    return {"doc": text, "range": (lo, hi), **extra}


def _parse_channel(value: Any) -> int | None:
    if value == "mix":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 63:
        return value
    raise ValueError('must be "mix" or a channel number 0-63')


def _parse_device_id(value: Any) -> str:
    if isinstance(value, str) and (value == "" or re.fullmatch(DEVICE_ID_PATTERN, value)):
        return value
    raise ValueError("must be 1-64 characters of a-z 0-9 _ - (empty: derived from the hostname)")


DEVICE_ID_PATTERN = r"[a-z0-9_-]{1,64}"


@dataclass(frozen=True)
class DeviceConfig:
    """[device]: who this guard is, in audit records (and later topics and sink names)."""

    id: str = field(default="", metadata=_doc(
        "device id, a-z 0-9 _ -; empty derives it from the hostname", parse=_parse_device_id))

    def resolved_id(self) -> str:
        """The configured id, or the hostname squeezed into a-z 0-9 _ -."""
        if self.id:
            return self.id
        name = re.sub(r"[^a-z0-9_-]+", "-", socket.gethostname().lower()).strip("-")[:64]
        return name or "guard"


@dataclass(frozen=True)
class AuditConfig:
    """[audit]: where the hash-chained decision log lives."""

    path: str = field(default="", metadata=_doc(
        "audit log file; empty: $STATE_DIRECTORY/audit.jsonl under systemd, "
        "/var/lib/guard/audit.jsonl as root, else ~/.local/state/guard/audit.jsonl"))

    def resolved_path(self) -> Path:
        if self.path:
            return Path(self.path).expanduser()
        if os.environ.get("STATE_DIRECTORY"):
            return Path(os.environ["STATE_DIRECTORY"].split(":")[0]) / "audit.jsonl"
        if os.geteuid() == 0:
            return Path("/var/lib/guard/audit.jsonl")
        return Path.home() / ".local" / "state" / "guard" / "audit.jsonl"


@dataclass(frozen=True)
class AudioConfig:
    """[audio]: where sound comes from and how much pre-roll is kept."""

    device: str = field(default="", metadata=_doc(
        "microphone: index or part of its name from `guard devices`; empty for the system default"))
    channels: int = field(default=1, metadata=_doc("channels to open (ReSpeaker USB v2.0: 6)", 1, 64))
    channel: int | None = field(default=None, metadata=_doc(
        'channel to keep, 0-based, or "mix" to average them', parse=_parse_channel, none_text='"mix"'))
    rate_hz: int = field(default=0, metadata=_doc(
        "native rate to open the mic at; 0 tries 16000, 48000, 44100", 0, 192000))
    pre_roll_seconds: float = field(default=2.0, metadata=_doc(
        "audio kept in RAM before the wake word ends", 0.5, 10))


@dataclass(frozen=True)
class WakeConfig:
    """[wake]: which wake words, and how sure the models must be."""

    models: tuple[str, ...] = field(default=("alexa", "hey_jarvis"), metadata=_doc(
        "wake-word models: bundled names (alexa, hey_jarvis, hey_mycroft, hey_marvin), "
        "stems of .onnx files in models_dir, or paths"))
    threshold: float = field(default=0.5, metadata=_doc("score that counts as a wake", 0, 1))
    patience_frames: int = field(default=1, metadata=_doc(
        "consecutive 80 ms frames at or over threshold needed", 1, 25))
    refractory_seconds: float = field(default=2.0, metadata=_doc(
        "after a wake, how long the same model stays quiet", 0, 30))
    vad_threshold: float = field(default=0.0, metadata=_doc(
        "Silero speech probability needed just before a wake; 0 disables", 0, 1))
    models_dir: str = field(default="", metadata=_doc("folder of your own .onnx models; empty for models/"))
    overrides: dict = field(default_factory=dict, metadata=_doc(
        "per-model threshold, patience_frames, refractory_seconds: [wake.overrides.alexa]"))

    def settings(self) -> list[WakeModelSettings]:
        """One trigger rule per configured model, overrides applied."""
        base = {"threshold": self.threshold, "patience_frames": self.patience_frames,
                "refractory_seconds": self.refractory_seconds}
        return [WakeModelSettings(name, **{**base, **self.overrides.get(name, {})}) for name in self.models]


@dataclass(frozen=True)
class Config:
    """The whole config file; each attribute is one TOML table."""

    device: DeviceConfig = field(default_factory=DeviceConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    wake: WakeConfig = field(default_factory=WakeConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)


_OVERRIDE_KEYS = ("threshold", "patience_frames", "refractory_seconds")


def _where(source: str, table: str, key: str, value: Any) -> str:
    return f"{source}: [{table}] {key} = {value!r}"


def value_text(f, value: Any) -> str:
    """A setting's value as TOML text; None is written the way the field spells it ("mix")."""
    if value is None:
        return f.metadata["none_text"]
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _default_text(f) -> str:
    return value_text(f, f.default if f.default is not MISSING else f.default_factory())


def _check_type(value: Any, annotation: Any) -> bool:
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation is dict:
        return isinstance(value, dict)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _type_name(annotation: Any) -> str:
    return {float: "a number", int: "a whole number", str: "a string", dict: "a table"}.get(
        annotation, "a list of strings")


def _value(source: str, table: str, f, value: Any) -> Any:
    where = _where(source, table, f.name, value)
    fix = f"fix it or delete the line for the default ({_default_text(f)})"
    if "parse" in f.metadata:
        try:
            return f.metadata["parse"](value)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}; {fix}") from None
    if not _check_type(value, f.type):
        raise ConfigError(f"{where}: must be {_type_name(f.type)}; {fix}")
    lo, hi = f.metadata["range"]
    if lo is not None and not lo <= value <= hi:
        raise ConfigError(f"{where}: must be {lo}-{hi}; {fix}")
    return tuple(value) if isinstance(value, list) else value


def _unknown(source: str, table: str, key: str, known: list[str]) -> ConfigError:
    near = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {near[0]}?" if near else f"known: {', '.join(known)}"
    where = f"[{table}] {key}" if table else f"[{key}]"
    return ConfigError(f"{source}: {where}: unknown key; {hint}")


def _build(cls: type, source: str, table: str, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [{table}] must be a table")
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            raise _unknown(source, table, key, list(known))
    return cls(**{k: _value(source, table, known[k], v) for k, v in raw.items()})


def _check_overrides(source: str, wake: WakeConfig) -> None:
    defaults = {f.name: f for f in fields(WakeConfig)}
    for name, table in wake.overrides.items():
        where = f"wake.overrides.{name}"
        if name not in wake.models:
            raise ConfigError(f"{source}: [{where}]: {name} is not in [wake] models; add it there or remove the table")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{where}] must be a table")
        for key, value in table.items():
            if key not in _OVERRIDE_KEYS:
                raise _unknown(source, where, key, list(_OVERRIDE_KEYS))
            _value(source, where, defaults[key], value)


def parse(raw: dict, source: str) -> Config:
    """Validate a parsed TOML document; the first problem raises ConfigError naming the key."""
    tables = {f.name: f for f in fields(Config)}
    for key in raw:
        if key not in tables:
            raise _unknown(source, "", key, list(tables))
    config = Config(**{k: _build(tables[k].default_factory, source, k, v) for k, v in raw.items()})
    _check_overrides(source, config.wake)
    return config


def find_path(explicit: str | None) -> Path | None:
    """--config, else $GUARD_CONFIG, else /etc/guard/guard.toml if present, else None (defaults)."""
    if explicit:
        return Path(explicit)
    if os.environ.get("GUARD_CONFIG"):
        return Path(os.environ["GUARD_CONFIG"])
    return SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None


def load(explicit: str | None = None) -> tuple[Config, Path | None]:
    """Find, read and validate the config; returns it and the file it came from."""
    path = find_path(explicit)
    if path is None:
        return Config(), None
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (IsADirectoryError, PermissionError) as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    return parse(raw, str(path)), path


def reference() -> list[tuple[str, str, str, str]]:
    """(table, key, default, doc with range) for every setting: the README table and `config check`."""
    rows = []
    for table in fields(Config):
        for f in fields(table.default_factory):
            lo, hi = f.metadata["range"]
            span = f" ({lo}-{hi})" if lo is not None else ""
            rows.append((table.name, f.name, _default_text(f), f.metadata["doc"] + span))
    return rows
