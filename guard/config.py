"""The TOML config: one frozen dataclass per table, validated with errors that name the key.

Defaults live only here; `guard config check` and the README table derive from
them. Audio destinations will come from this file alone, never from a flag or
a remote command.
"""

import difflib
import hashlib
import ipaddress
import json
import os
import re
import socket
import tomllib
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from guard import trust
from guard.errors import ConfigError

ENGINES = ("auto", "openwakeword", "micro")
# "auto": the engine that missed least without a false accept on bench/eval.py's full corpus (README,
# "How well they hear"); openWakeWord for every other word, a user's own .onnx models included
AUTO_ENGINE = {"alexa": "micro", "hey_mycroft": "micro", "okay_nabu": "micro"}
SECOND_OPINION_WORDS = ("alexa", "hey_jarvis", "hey_mycroft")  # bundled for both engines (models/manifest.toml)


@dataclass(frozen=True)
class WakeModelSettings:
    """How one wake word triggers.

    Args:
        name: bundled name, a stem in `models_dir`, or a path to `.onnx` (openWakeWord only).
        threshold: score that counts as a wake (0-1); None: the model's own default.
        patience_frames: consecutive 80 ms frames at or over threshold needed (1-25).
        refractory_seconds: quiet time after a wake before this model fires again (0-30).
        engine: "openwakeword" or "micro" (microWakeWord); `engine_for` turns "auto" into one of them.
        second_opinion: micro only: a score of 0.5 or more that falls short of the threshold is a wake if
            openWakeWord's model of the same name scores 0.7 or more within 0.4 s ([wake] second_opinion).
    """

    name: str
    threshold: float | None = None
    patience_frames: int = 1
    refractory_seconds: float = 2.0
    engine: str = "openwakeword"
    second_opinion: bool = False


def engine_for(name: str, engine: str) -> str:
    """The engine that hears `name`: the one asked for, or for "auto" the one the evaluation chose."""
    return AUTO_ENGINE.get(name, "openwakeword") if engine == "auto" else engine


SYSTEM_CONFIG = Path("/etc/guard/guard.toml")
CHECKOUT_MODELS = Path(__file__).resolve().parent.parent / "models"  # a checkout's models/, beside guard/


def _doc(text: str, lo: float | None = None, hi: float | None = None, **extra: Any) -> dict:
    return {"doc": text, "range": (lo, hi), **extra}


def _parse_channel(value: Any) -> int | None:
    if value == "mix":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 63:
        return value
    raise ValueError('must be "mix" or a channel number 0-63')


def _choice(value: Any, choices: tuple[str, ...]) -> str:
    if value in choices:
        return value
    raise ValueError(f"must be one of {', '.join(choices)}")


def _parse_threshold(value: Any) -> float | None:
    if value == "auto":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    raise ValueError('must be 0-1, or "auto" for the model\'s own')


def _parse_pins(value: Any) -> tuple[int, ...]:
    if (isinstance(value, list) and 1 <= len(value) <= 3
            and all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 27 for p in value)):
        return tuple(value)
    raise ValueError("must be a list of 1-3 BCM pin numbers 0-27")


def _parse_confirm(value: Any) -> tuple[str, ...]:
    if isinstance(value, list) and "button" in value and all(v in ("button", "voice") for v in value):
        return tuple(dict.fromkeys(value))
    if value == ["voice"]:
        raise ValueError('voice alone is refused: the button must always work, and the LED must show pending; '
                         'use ["button", "voice"]')
    raise ValueError('must be ["button"] or ["button", "voice"]')


def _parse_device(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str):
        return value
    raise ValueError("must be a device index (a whole number) or part of its name (a string)")


def _parse_device_id(value: Any) -> str:
    if isinstance(value, str) and (value == "" or re.fullmatch(DEVICE_ID_PATTERN, value)):
        return value
    raise ValueError("must be 1-64 characters of a-z 0-9 _ - (empty: derived from the hostname)")


DEVICE_ID_PATTERN = r"[a-z0-9_-]{1,64}"
MACHINE_ID = "/etc/machine-id"  # systemd's per-installation id; a hash of it, never the id itself, goes out


@dataclass(frozen=True)
class DeviceConfig:
    """[device]: who this guard is, in audit records (and later topics and sink names)."""

    id: str = field(default="", metadata=_doc(
        "device id, a-z 0-9 _ -; empty: the hostname plus 6 hex digits of /etc/machine-id (unique per device, "
        "stable across restarts)", parse=_parse_device_id))

    def resolved_id(self) -> str:
        """The configured id, or the hostname squeezed into a-z 0-9 _ - plus a short hash of the machine id.

        Two Pis left at the default hostname `raspberrypi` must not share a topic tree.
        """
        if self.id:
            return self.id
        name = re.sub(r"[^a-z0-9_-]+", "-", socket.gethostname().lower()).strip("-")[:57] or "guard"
        try:
            machine = Path(MACHINE_ID).read_text().strip()
        except OSError:
            return name
        return f"{name}-{hashlib.sha256(machine.encode()).hexdigest()[:6]}" if machine else name


@dataclass(frozen=True)
class AuditConfig:
    """[audit]: where the hash-chained decision log lives."""

    path: str = field(default="", metadata=_doc(
        "audit log file; empty: $STATE_DIRECTORY/audit.jsonl under systemd, "
        "/var/lib/guard/audit.jsonl as root, else ~/.local/state/guard/audit.jsonl"))

    def resolved_path(self) -> Path:
        return Path(self.path).expanduser() if self.path else state_dir() / "audit.jsonl"


def state_dir() -> Path:
    """$STATE_DIRECTORY under systemd, /var/lib/guard as root, else ~/.local/state/guard."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/guard")
    return Path.home() / ".local" / "state" / "guard"


@dataclass(frozen=True)
class ConfirmConfig:
    """[confirm]: where the enrolled spoken-confirmation phrase lives."""

    templates_path: str = field(default="", metadata=_doc(
        "enrolled phrase templates (.npz, embeddings only); empty: confirm.npz in the state directory"))

    def resolved_path(self) -> Path:
        return Path(self.templates_path).expanduser() if self.templates_path else state_dir() / "confirm.npz"


@dataclass(frozen=True)
class AudioConfig:
    """[audio]: where sound comes from and how much pre-roll is kept."""

    device: str = field(default="", metadata=_doc(
        "microphone: index (2 or \"2\") or part of its name from `guard devices`; empty for the system default",
        parse=_parse_device))
    channels: int = field(default=1, metadata=_doc("channels to open (ReSpeaker USB v2.0: 6)", 1, 64))
    channel: int | None = field(default=None, metadata=_doc(
        'channel to keep, 0-based, or "mix" to average them', parse=_parse_channel, none_text='"mix"'))
    rate_hz: int = field(default=0, metadata=_doc(
        "native rate to open the mic at; 0 tries 16000, 48000, 44100", 0, 192000))
    pre_roll_seconds: float = field(default=2.0, metadata=_doc(
        "audio kept in RAM before the wake word ends", 0.5, 10))
    output_device: str = field(default="", metadata=_doc(
        "speaker for Home Assistant's spoken answers: index or part of its name (`guard devices --output`); "
        "empty: none", parse=_parse_device))
    chimes: bool = field(default=False, metadata=_doc(
        "play a short sound on the output device at wake, pending, released and discarded"))
    chime_volume: float = field(default=0.5, metadata=_doc("loudness of the chimes, 0-1", 0, 1))
    zeros_fault_seconds: float = field(default=30.0, metadata=_doc(
        "a microphone that delivers nothing but exact digital zeros this long has failed (unplugged under "
        "ALSA, or a dead driver): a `fault` that wipes and opens it afresh with backoff until it delivers sound; "
        "0: never", 0, 3600))


@dataclass(frozen=True)
class WakeConfig:
    """[wake]: which wake words, and how sure the models must be."""

    models: tuple[str, ...] = field(default=("alexa",), metadata=_doc(
        "wake words, each adding CPU and its own false wakes: bundled names (openwakeword: alexa, hey_jarvis, "
        "hey_mycroft, hey_marvin; micro: alexa, hey_jarvis, hey_mycroft, okay_nabu), or for openwakeword stems of "
        ".onnx files in models_dir, or paths"))
    engine: str = field(default="auto", metadata=_doc(
        "which models hear them: openwakeword, micro (microWakeWord, as Home Assistant's Voice PE runs), or "
        "auto: micro for alexa, hey_mycroft and okay_nabu, openwakeword for the rest (the evaluation's pick)",
        parse=lambda v: _choice(v, ENGINES)))
    threshold: float | None = field(default=None, metadata=_doc(
        'score that counts as a wake, 0-1; "auto": the model\'s own (openwakeword 0.5, micro the cutoff its '
        "model publishes, 0.85-0.97)", parse=_parse_threshold, none_text='"auto"'))
    patience_frames: int = field(default=1, metadata=_doc(
        "consecutive 80 ms frames at or over threshold needed", 1, 25))
    refractory_seconds: float = field(default=2.0, metadata=_doc(
        "after a wake, how long the same model stays quiet", 0, 30))
    second_opinion: tuple[str, ...] = field(default=("alexa",), metadata=_doc(
        "micro words that still wake when noise keeps their score between 0.5 and the cutoff, if openWakeWord's "
        "model of the same word scores 0.7 or more within 0.4 s (alexa, hey_jarvis, hey_mycroft); it is asked "
        "only then, so it costs CPU only near a wake. The evaluation's pick: alexa (hey_mycroft's openWakeWord "
        "model wakes on near-phrases); []: micro alone"))
    vad_threshold: float = field(default=0.0, metadata=_doc(
        "Silero speech probability needed just before a wake; 0 disables", 0, 1))
    rest_below_dbfs: float = field(default=-60.0, metadata=_doc(
        "after 2 s of frames quieter than this, in which nothing rose 10 dB over the room's own floor in speech's "
        "bands, the models rest (a quiet room costs almost no CPU); the first louder or rising frame replays the "
        "skipped ones through the features (up to 3.2 s; 9.6 s with micro) and the "
        "newest through the models (what each remembers, at most 2 s), so no wake is lost or late; "
        "-120: never rest", -120, 0))
    models_dir: str = field(default="", metadata=_doc(
        "folder of your own .onnx models, used by name; empty: models/ beside the config file in use "
        "(/etc/guard/models for the service), else a checkout's models/"))
    overrides: dict = field(default_factory=dict, metadata=_doc(
        "per-model engine, threshold, patience_frames, refractory_seconds: [wake.overrides.alexa]"))

    def settings(self) -> list[WakeModelSettings]:
        """One trigger rule per configured model, overrides applied."""
        return [self._rule(name) for name in self.models]

    def _rule(self, name: str) -> WakeModelSettings:
        rule = {"engine": self.engine, "threshold": self.threshold, "patience_frames": self.patience_frames,
                "refractory_seconds": self.refractory_seconds, **self.overrides.get(name, {})}
        engine = engine_for(name, rule["engine"])
        return WakeModelSettings(name, **{**rule, "engine": engine},
                                 second_opinion=engine == "micro" and name in self.second_opinion)


@dataclass(frozen=True)
class GateConfig:
    """[gate]: how an utterance is captured and how long consent is waited for."""

    pending_timeout_seconds: float = field(default=10.0, metadata=_doc(
        "how long the LED shows pending and a press can release; then the audio is wiped", 1, 60))
    max_utterance_seconds: float = field(default=10.0, metadata=_doc(
        "longest capture after the wake word", 1, 30))
    end_silence_seconds: float = field(default=1.0, metadata=_doc(
        "how long the person who said the wake word must have stopped (one stray background peak allowed) for "
        "the request to end; the release ends 240 ms after their last word", 0.3, 5))
    silence_dbfs: float = field(default=-45.0, metadata=_doc(
        "frames quieter than this are never the talker's, however quiet the room (the talker's level and the "
        "room's, learned from the wake word and the pre-roll, set the line above it)", -90, 0))
    button_quiet_seconds: float = field(default=0.05, metadata=_doc(
        "a press counts only if the button was up this long before it: contact bounce and chatter never do",
        0.01, 1))


@dataclass(frozen=True)
class GpioConfig:
    """[gpio]: the consent button and the status LED (BCM pin numbers)."""

    button_pin: int = field(default=17, metadata=_doc("BCM pin of the button, wired to GND", 0, 27))
    button_pull_up: bool = field(default=True, metadata=_doc(
        "true: internal pull-up, button to GND; false: pull-down, button to 3V3"))
    bounce_seconds: float = field(default=0.05, metadata=_doc("contact bounce ignored", 0, 0.5))
    long_press_seconds: float = field(default=2.0, metadata=_doc("hold this long to mute or unmute", 0.2, 10))
    led_type: str = field(default="plain", metadata=_doc(
        "plain, pwm or rgb on GPIO pins; apa102: the ReSpeaker 2-Mic and 4-Mic HATs' LEDs on SPI; "
        "usb-ring: the ReSpeaker USB Mic Array v2.0's ring", parse=lambda v: _choice(
            v, ("plain", "pwm", "rgb", "apa102", "usb-ring"))))
    led_pins: tuple[int, ...] = field(default=(27,), metadata=_doc(
        "BCM pin of the LED; rgb takes three: [red, green, blue]", parse=_parse_pins))
    led_active_high: bool = field(default=True, metadata=_doc("false for an LED wired from 3V3 to the pin"))
    led_count: int = field(default=3, metadata=_doc(
        "apa102: how many LEDs (ReSpeaker 2-Mic HAT 3, 4-Mic HAT 12)", 1, 255))
    led_brightness: int = field(default=8, metadata=_doc("apa102, usb-ring: brightness of every LED (1-31)", 1, 31))
    spi_bus: int = field(default=0, metadata=_doc("apa102: the SPI bus (/dev/spidevBUS.DEVICE)", 0, 6))
    spi_device: int = field(default=1, metadata=_doc(
        "apa102: the SPI chip select; the ReSpeaker HATs use 1", 0, 3))
    led_power_pin: int = field(default=-1, metadata=_doc(
        "apa102: a BCM pin that powers the LEDs, driven high (the 4-Mic HAT's 5, the 2-Mic HAT v2's 12); "
        "-1: none", -1, 27))


@dataclass(frozen=True)
class MqttConfig:
    """[mqtt]: the broker the hub listens on. Empty host: no MQTT at all."""

    host: str = field(default="", metadata=_doc("broker host name or address; empty disables MQTT"))
    port: int = field(default=1883, metadata=_doc("broker port (8883 is usual with TLS)", 1, 65535))
    tls: bool = field(default=False, metadata=_doc("connect with TLS"))
    ca_file: str = field(default="", metadata=_doc("CA certificate (PEM) for TLS; empty: the system CAs"))
    cert_file: str = field(default="", metadata=_doc("client certificate (PEM) for TLS, if the broker wants one"))
    key_file: str = field(default="", metadata=_doc("client key (PEM) for cert_file"))
    username: str = field(default="", metadata=_doc("user name; empty connects anonymously"))
    password_file: str = field(default="", metadata=_doc(
        "file holding the password; must not be readable by group or others (chmod 600)"))
    keepalive_seconds: int = field(default=30, metadata=_doc(
        "MQTT keepalive; the broker declares the guard offline after 1.5 times this", 2, 600))
    reconnect_max_seconds: int = field(default=60, metadata=_doc("longest wait between reconnect tries", 1, 3600))
    outbox_events: int = field(default=1000, metadata=_doc(
        "events kept while the broker is away; older ones are dropped and counted in the audit log (at most "
        "10000: paho numbers messages in flight with 16 bits)", 10, 10000))
    discovery: bool = field(default=True, metadata=_doc("publish Home Assistant discovery"))
    discovery_prefix: str = field(default="homeassistant", metadata=_doc("Home Assistant's discovery prefix"))
    discovery_style: str = field(default="entities", metadata=_doc(
        "entities: a config topic per entity (every Home Assistant); device: one topic for all of them "
        "(Home Assistant 2024.11 or newer); a change withdraws the other style's topics",
        parse=lambda v: _choice(v, ("entities", "device"))))
    hermes: bool = field(default=False, metadata=_doc(
        "Rhasspy/Hermes: publish hermes/hotword/<device id>/detected; toggleOff/toggleOn act as remote mute "
        "(except for Rhasspy's own dialogue sessions and playback)"))


def _parse_uri(value: Any) -> str:
    if value == "" or (isinstance(value, str) and re.fullmatch(r"tcp://[^:/\s]+:\d{1,5}", value)
                       and int(value.rsplit(":", 1)[1]) <= 65535):
        return value
    raise ValueError('must be "tcp://HOST:PORT", e.g. "tcp://0.0.0.0:10700", or empty (off)')


def _parse_hosts(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError('must be a list of IP addresses, e.g. ["192.168.1.10"]')
    for host in value:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address (a connection shows its address, never its "
                             "name); give your Home Assistant's address, e.g. \"192.168.1.10\"") from None
    return tuple(value)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class WyomingConfig:
    """[wyoming]: be a Home Assistant voice satellite; audio reaches it only through a wyoming sink."""

    uri: str = field(default="", metadata=_doc(
        'where Home Assistant connects, e.g. "tcp://0.0.0.0:10700"; empty: no satellite', parse=_parse_uri))
    name: str = field(default="", metadata=_doc("the satellite's name in Home Assistant; empty: pi-guard <device id>"))
    zeroconf: bool = field(default=True, metadata=_doc(
        "announce the satellite on the local network (_wyoming._tcp), so Home Assistant discovers it"))
    allowed_hosts: tuple[str, ...] = field(default=(), metadata=_doc(
        'the only addresses that may connect, e.g. ["192.168.1.10"] (your Home Assistant), since the hub '
        "receives released requests; others are closed unread. Needed unless uri listens on loopback only",
        parse=_parse_hosts))


@dataclass(frozen=True)
class EsphomeConfig:
    """[esphome]: be a device Home Assistant's ESPHome integration adds, keyed with the owner's encryption key."""

    port: int = field(default=0, metadata=_doc(
        "the ESPHome API's port (6053 is ESPHome's own); 0: off", 0, 65535))
    host: str = field(default="0.0.0.0", metadata=_doc(
        "the address it listens on; every client must hold the key (Noise encryption), others are refused"))
    zeroconf: bool = field(default=True, metadata=_doc(
        "announce the device on the local network (_esphomelib._tcp), so Home Assistant offers to add it"))
    key_file: str = field(default="", metadata=_doc(
        "the 32-byte key Home Assistant asks for when it adds the device, made by guard esphome-key; "
        "empty: esphome.key in the state directory"))

    def resolved_key_file(self) -> Path:
        return Path(self.key_file).expanduser() if self.key_file else state_dir() / "esphome.key"


@dataclass(frozen=True)
class SinkConfig:
    """[sinks.NAME]: one place released audio may go. Only this file can name one."""

    type: str = field(default="directory", metadata=_doc(
        "directory (a WAV file per release), command (the WAV on its stdin), mqtt (guard/<id>/audio/<utterance>) "
        "hermes (Rhasspy's ASR: hermes/audioServer/<id>/audioFrame; needs [mqtt] hermes = true) "
        "wyoming (Home Assistant Assist, through the [wyoming] satellite) or esphome (Home Assistant Assist, "
        "through the encrypted [esphome] API)",
        parse=lambda v: _choice(v, ("directory", "command", "mqtt", "hermes", "wyoming", "esphome"))))
    path: str = field(default="", metadata=_doc("directory sink: the folder the WAV files go to"))
    command: tuple[str, ...] = field(default=(), metadata=_doc(
        'command sink: argv, run without a shell, e.g. ["/usr/local/bin/upload", "--quiet"]'))
    timeout_seconds: float = field(default=30.0, metadata=_doc(
        "command sink: killed after this long; mqtt and hermes sinks: wait this long for the broker's ack; "
        "wyoming and esphome sinks: for the audio to be written to Home Assistant", 1, 600))
    confirm: tuple[str, ...] = field(default=("button",), metadata=_doc(
        'which consent releases to this sink: ["button"] or ["button", "voice"] (voice needs guard enroll)',
        parse=_parse_confirm))


@dataclass(frozen=True)
class Config:
    """The whole config file; each attribute is one TOML table."""

    device: DeviceConfig = field(default_factory=DeviceConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    wake: WakeConfig = field(default_factory=WakeConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    gpio: GpioConfig = field(default_factory=GpioConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    wyoming: WyomingConfig = field(default_factory=WyomingConfig)
    esphome: EsphomeConfig = field(default_factory=EsphomeConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig)
    sinks: dict[str, SinkConfig] = field(default_factory=dict)


_OVERRIDE_KEYS = ("engine", "threshold", "patience_frames", "refractory_seconds")


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
    if annotation is bool:
        return isinstance(value, bool)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _type_name(annotation: Any) -> str:
    return {float: "a number", int: "a whole number", str: "a string", dict: "a table", bool: "true or false"}.get(
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
            table[key] = _value(source, where, defaults[key], value)


def _sink(source: str, name: str, raw: Any) -> SinkConfig:
    table = f"sinks.{name}"
    if not re.fullmatch(DEVICE_ID_PATTERN, name):
        raise ConfigError(f"{source}: [{table}]: sink names are 1-64 characters of a-z 0-9 _ -")
    sink = _build(SinkConfig, source, table, raw)
    if sink.type == "directory" and not sink.path:
        raise ConfigError(f"{source}: [{table}] path: a directory sink needs path = \"/folder/for/wavs\"")
    if sink.type == "command" and not sink.command:
        raise ConfigError(f"{source}: [{table}] command: a command sink needs command = [\"/path/to/program\", ...]")
    return sink


def parse(raw: dict, source: str) -> Config:
    """Validate a parsed TOML document; the first problem raises ConfigError naming the key."""
    tables = {f.name: f for f in fields(Config)}
    for key in raw:
        if key not in tables:
            raise _unknown(source, "", key, list(tables))
    sinks = raw.get("sinks", {})
    if not isinstance(sinks, dict):
        raise ConfigError(f"{source}: [sinks] must hold tables like [sinks.archive]")
    built = {k: _build(tables[k].default_factory, source, k, v) for k, v in raw.items() if k != "sinks"}
    config = Config(**built, sinks={name: _sink(source, name, table) for name, table in sinks.items()})
    _check_overrides(source, config.wake)
    for name in config.wake.second_opinion:
        if name not in SECOND_OPINION_WORDS:
            raise ConfigError(f"{source}: [wake] second_opinion: {name!r} has no model in both engines; "
                              f"choose from {', '.join(SECOND_OPINION_WORDS)}")
    for name, sink in config.sinks.items():
        if sink.type in ("mqtt", "hermes") and not config.mqtt.host:
            raise ConfigError(f"{source}: [sinks.{name}] is an {sink.type} sink; it needs [mqtt] host")
        if sink.type == "wyoming" and not config.wyoming.uri:
            raise ConfigError(f"{source}: [sinks.{name}] is a wyoming sink; it needs [wyoming] uri, "
                              'e.g. "tcp://0.0.0.0:10700"')
        if sink.type == "esphome" and not config.esphome.port:
            raise ConfigError(f"{source}: [sinks.{name}] is an esphome sink; it needs [esphome] port, e.g. 6053")
        if sink.type == "hermes" and not config.mqtt.hermes:
            raise ConfigError(f"{source}: [sinks.{name}] is a hermes sink; it needs [mqtt] hermes = true, "
                              "so that Rhasspy hears of the wake and starts listening")
    _check_wyoming(source, config.wyoming)
    if config.audio.chimes and not config.audio.output_device:
        raise ConfigError(f"{source}: [audio] chimes = true needs [audio] output_device, a speaker to play them on")
    wanted = 3 if config.gpio.led_type == "rgb" else 1
    if len(config.gpio.led_pins) != wanted:
        raise ConfigError(f"{source}: [gpio] led_pins = {list(config.gpio.led_pins)}: "
                          f"a {config.gpio.led_type} LED takes {wanted} pin(s)")
    return config


def _check_wyoming(source: str, wyoming: WyomingConfig) -> None:
    """A satellite reachable from the network names its hub: whoever is the hub receives released requests."""
    if not wyoming.uri or wyoming.allowed_hosts:
        return
    host = wyoming.uri.removeprefix("tcp://").rsplit(":", 1)[0]
    if not _loopback(host):
        raise ConfigError(f'{source}: [wyoming] uri = "{wyoming.uri}" listens on the network, so whoever '
                          "connects could become the hub that receives released requests; add allowed_hosts = "
                          '["<your Home Assistant\'s IP address>"] under [wyoming] (and the same address to the '
                          'service\'s IPAddressAllow), or listen on "tcp://127.0.0.1:10700" only')


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
        return _with_models_dir(Config(), None), None
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (IsADirectoryError, PermissionError) as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    config = _with_models_dir(parse(raw, str(path)), path)
    _check_trust(path, config)
    return config, path


def _with_models_dir(config: Config, path: Path | None) -> Config:
    """An empty [wake] models_dir becomes the `models` folder beside the config file, else a checkout's."""
    if config.wake.models_dir:
        return config
    for folder in ([path.parent / "models"] if path else []) + [CHECKOUT_MODELS]:
        if folder.is_dir():
            return replace(config, wake=replace(config.wake, models_dir=str(folder)))
    return config


def _check_trust(path: Path, config: Config) -> None:
    """The config, every file and folder a sink depends on, the broker's TLS files and the ESPHome key may be
    changed only by root or this user, all the way up (see trust.py)."""
    problem = trust.untrusted(path)
    if problem:
        raise ConfigError(problem)
    named: list[tuple[str, str | None]] = []
    for name, sink in config.sinks.items():
        if sink.type == "directory":
            named.append((f"[sinks.{name}] path", trust.untrusted(Path(sink.path).expanduser())))
        elif sink.type == "command":
            named.append((f"[sinks.{name}] command", trust.untrusted_command(sink.command)))
    if config.mqtt.host and config.mqtt.tls:  # the CA decides which broker is believed to be the broker
        named += [(f"[mqtt] {key}", trust.untrusted(Path(getattr(config.mqtt, key)).expanduser()))
                  for key in ("ca_file", "cert_file", "key_file") if getattr(config.mqtt, key)]
    if config.esphome.port:  # whoever holds the key is Home Assistant, the one that receives released requests
        named.append(("[esphome] key_file", trust.untrusted(config.esphome.resolved_key_file())))
    for key, problem in named:
        if problem:
            raise ConfigError(f"{path}: {key}: {problem}")


def _table_toml(name: str, section: Any) -> list[str]:
    lines, subtables = [f"[{name}]"], []
    for f in fields(section):
        value = getattr(section, f.name)
        if isinstance(value, dict):
            subtables += [(f"{name}.{f.name}.{k}", v) for k, v in value.items()]
        else:
            lines.append(f"{f.name} = {value_text(f, value)}")
    for sub, values in subtables:
        lines += ["", f"[{sub}]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return lines + [""]


def to_toml(config: Config) -> str:
    """The settings in effect, as a TOML file that would load back to the same Config."""
    lines = []
    for table in fields(Config):
        if table.name == "sinks":
            for name, sink in config.sinks.items():
                lines += _table_toml(f"sinks.{name}", sink)
        else:
            lines += _table_toml(table.name, getattr(config, table.name))
    return "\n".join(lines)


def reference() -> list[tuple[str, str, str, str]]:
    """(table, key, default, doc with range) for every setting: the README table and `config check`."""
    rows = []
    for table in fields(Config):
        cls, name = (SinkConfig, "sinks.NAME") if table.name == "sinks" else (table.default_factory, table.name)
        for f in fields(cls):
            lo, hi = f.metadata["range"]
            span = f" ({lo}-{hi})" if lo is not None else ""
            rows.append((name, f.name, _default_text(f), f.metadata["doc"] + span))
    return rows
