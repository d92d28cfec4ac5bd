"""Builds `guard run` from the config: every part, and who calls whom.

The one place where the parts meet: producers (PortAudio's thread, gpiozero, paho, the Home Assistant servers)
get only the inbox; the gate gets what it may drive (sinks through `Deliveries`, the outputs, the microphone's
listening); the daemon gets them all and only runs the loop.
"""

import threading
import time

from guard import esphome, health, parts, sinks
from guard.audit import AuditLog
from guard.config import Config
from guard.daemon import AudioClock, Daemon, Deliveries, RunOptions
from guard.esphome import EsphomeServer
from guard.gate import Gate
from guard.inbox import ButtonMove, ButtonMoved, Command, Inbox
from guard.microphone import Microphone
from guard.mqtt import MqttLink
from guard.outputs import Outputs
from guard.satellite import AssistSatellite
from guard.sound import Chimes, Speaker
from guard.systemd import Notifier
from guard.timers import Ringer
from guard.wake import WakeDetector


def assemble(config: Config, options: RunOptions, detector: WakeDetector) -> Daemon:
    """The daemon and its parts, built from `config` for one run (nothing is started or opened but the microphone).

    Raises:
        ConfigError: a file the config names (the ESPHome key, a TLS file) cannot be read.
        UsageError: `--gpio none` while a sink accepts spoken confirmation (no LED to show pending).
    """
    inbox, clock = Inbox(), AudioClock() if options.fast else time.monotonic
    listening, stopping = threading.Event(), threading.Event()
    listening.set()
    device_id = config.device.resolved_id()
    audit = AuditLog(config.audit.resolved_path(), device_id)
    mqtt = MqttLink(config.mqtt, device_id, lambda by, verb: inbox.post(Command(by, verb)), audit,
                    config.audit.resolved_path().parent / "mqtt-discovered") if config.mqtt.host else None
    speaker = Speaker(config.audio.output_device) if config.audio.output_device else None
    satellite = AssistSatellite(config.wyoming, device_id, inbox.post, list(config.wake.models), speaker) \
        if config.wyoming.uri else None
    home_assistant = EsphomeServer(esphome.read_key(config.esphome.resolved_key_file()), device_id, inbox.post,
                                   config.esphome.host, config.esphome.port, announce=config.esphome.zeroconf,
                                   speaker=speaker, wake_words=config.wake.models) if config.esphome.port else None
    released_to = sinks.build(config.sinks, device_id, mqtt, satellite, home_assistant)
    pin_factory, button, led = parts.gpio(config, options.gpio, lambda move: _post_move(inbox, clock, move))
    chimes = Chimes(speaker, config.audio.chime_volume) if config.audio.chimes else None
    ringer = Ringer(speaker, config.audio.chime_volume) if speaker else None
    outputs = Outputs(options.publish, led, chimes, mqtt, satellite, home_assistant, ringer, clock)
    deliveries = Deliveries(inbox.post)
    health_lines: dict[str, str] = {}
    gate = Gate(config.gate, detector, config.audio.pre_roll_seconds, released_to, audit,
                accepts={name: sink.confirm for name, sink in config.sinks.items()},
                confirmation=parts.spoken_confirmation(config), publish=outputs.publish, show=outputs.show,
                set_listening=lambda on: daemon.set_listening(on),  # the daemon is built last, from the gate
                hold_playback=outputs.hold_playback, clock=clock, deliver=deliveries.put)
    audio = Microphone(config.audio, options.source, options.fast, inbox, listening, stopping, gate.fault,
                       gate.recovered, health_lines)
    health_lines.update(health.lines(config, options.gpio, gate, audio, mqtt is not None, satellite, released_to))
    if mqtt is not None:
        mqtt.health = health_lines
    daemon = Daemon(config=config, options=options, inbox=inbox, clock=clock, listening=listening,
                    stopping=stopping, audit=audit, mqtt=mqtt, speaker=speaker, satellite=satellite,
                    esphome=home_assistant, sinks=released_to, pin_factory=pin_factory, button=button,
                    outputs=outputs, deliveries=deliveries, gate=gate, audio=audio, health=health_lines,
                    notifier=Notifier())
    return daemon


def _post_move(inbox: Inbox, clock, move: ButtonMove) -> None:
    """The button moved (gpiozero's thread), stamped with the time it happened."""
    inbox.post(ButtonMoved(move, clock()))
