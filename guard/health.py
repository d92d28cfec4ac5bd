"""The guard's health: one line per part, logged at start and kept in the retained MQTT state for `guard status`.

Read-only: it describes the parts the daemon built and decides nothing.
"""

import logging

from guard.config import Config
from guard.gate import Gate
from guard.microphone import Microphone
from guard.satellite import AssistSatellite
from guard.sinks import Sink

log = logging.getLogger(__name__)

GPIO_MODES = {"none": "none: nothing can be released by button", "mock": "simulated pins"}


def lines(config: Config, gpio_mode: str, gate: Gate, audio: Microphone, mqtt_on: bool,
          satellite: AssistSatellite | None, sinks: list[Sink]) -> dict[str, str]:
    words = gate.detector.words
    return {
        "audio": audio.health(),
        "models": ", ".join(f"{w.name} ({w.settings.engine}, threshold {w.threshold:g})" for w in words),
        "buffers": buffers(gate),
        "gpio": GPIO_MODES.get(gpio_mode, f"button GPIO{config.gpio.button_pin}, " + _led(config.gpio)),
        "mqtt": f"{config.mqtt.host}:{config.mqtt.port}" if mqtt_on else "off",
        "assist satellite": _satellite(config, satellite),
        "sinks": ", ".join(f"{s.name} ({type(s).__name__}, by {' or '.join(gate.policy.accepted_by(s))})"
                           for s in sinks) or "none",
        "spoken confirmation": "listening while pending" if gate.confirmation else "off",
    }


def _satellite(config: Config, satellite: AssistSatellite | None) -> str:
    if satellite is None:
        return "off"
    speaker = satellite.speaker
    return f"{config.wyoming.uri} as {satellite.name!r}; answers " + (
        f"play on {speaker.name}" if speaker else "are not played (no [audio] output_device)")


def buffers(gate: Gate) -> str:
    """Every buffer that holds audio and could not be locked in RAM, by name and size."""
    held = {"pre-roll ring": gate.held.ring, "capture": gate.held.capture}
    if gate.confirmation is not None:
        held["spoken-confirmation window"] = gate.confirmation.heard
    unlocked = [f"{name} ({b.nbytes // 1024} KiB)" for name, b in held.items() if not b.locked]
    if not unlocked:
        return f"all {len(held)} locked in RAM"
    problem = (f"not locked in RAM: {', '.join(unlocked)}; they may swap to disk; "
               "raise LimitMEMLOCK or grant CAP_IPC_LOCK")
    log.warning("mlock refused: %s", problem)
    return problem


def _led(gpio) -> str:
    if gpio.led_type == "usb-ring":
        return "the ReSpeaker USB Mic Array v2.0's ring (USB 2886:0018)"
    if gpio.led_type == "apa102":
        return f"{gpio.led_count} APA102 LEDs on /dev/spidev{gpio.spi_bus}.{gpio.spi_device}"
    return f"{gpio.led_type} LED GPIO{list(gpio.led_pins)}"
