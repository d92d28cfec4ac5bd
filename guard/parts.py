"""The one place that builds parts from the config: the wake detector, the microphone, the button and LED,
and the enrolled spoken confirmation.

`guard run`, the CLI's verbs (scan, listen, enroll) and the benchmarks all build them here, so each listens
the way the daemon does (its models, engine, second opinion and resting).
"""

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from guard.audio import MicSource
from guard.config import AudioConfig, Config
from guard.confirm import EnrollError, Enrolment, SpokenConfirmation
from guard.errors import UsageError
from guard.hardware import Apa102Leds, ConsentButton, StatusLed, UsbRing, pin_factory
from guard.inbox import ButtonMove
from guard.wake import WakeDetector

log = logging.getLogger(__name__)

NEVER_REST_DBFS = -120.0  # [wake] rest_below_dbfs at its floor: the models never rest


def models_dir(cfg: Config) -> Path | None:
    """Where the owner's own .onnx wake-word models live, if anywhere."""
    return Path(cfg.wake.models_dir).expanduser() if cfg.wake.models_dir else None


def detector(cfg: Config, names: list[str] | None = None, threshold: float | None = None,
             engine: str | None = None) -> WakeDetector:
    """The detector `guard run` listens with; `names`, `threshold` and `engine` override the config for one run
    (a threshold or an engine given by hand drops the per-model overrides)."""
    wake = dataclasses.replace(cfg.wake, models=tuple(names)) if names else cfg.wake
    if threshold is not None or engine is not None:
        wake = dataclasses.replace(wake, threshold=threshold if threshold is not None else wake.threshold,
                                   engine=engine or wake.engine, overrides={})
    voice = any("voice" in sink.confirm for sink in cfg.sinks.values())
    rest = wake.rest_below_dbfs if wake.rest_below_dbfs > NEVER_REST_DBFS else None
    return WakeDetector(wake.settings(), wake.vad_threshold, models_dir(cfg), embeddings=voice, rest_below_dbfs=rest)


def microphone(audio: AudioConfig) -> MicSource:
    """The configured microphone, opened (DeviceError, naming the device, when it is not there)."""
    return MicSource(audio.device or None, audio.channels, audio.channel, audio.rate_hz or None)


def gpio(cfg: Config, mode: str, on_move: Callable[[ButtonMove], None]) \
        -> tuple[object | None, ConsentButton | None, StatusLed | Apa102Leds | UsbRing | None]:
    """The pin factory (tests press its mock pins), the consent button and the status LED; none with
    `--gpio none`, which the config must allow (a voice consent needs the LED to show pending)."""
    if mode == "none":
        voice = [name for name, sink in cfg.sinks.items() if "voice" in sink.confirm]
        if voice:
            raise UsageError(f"[sinks.{voice[0]}] accepts spoken confirmation, but --gpio none has no LED to "
                             "show that a release is pending; use --gpio auto, or remove \"voice\" from its "
                             "confirm list")
        log.warning("no GPIO (--gpio none): nothing can be released by button; every utterance is wiped")
        return None, None, None
    factory = pin_factory(mode)
    led = {"apa102": lambda: Apa102Leds(cfg.gpio, factory), "usb-ring": lambda: UsbRing(cfg.gpio)}.get(
        cfg.gpio.led_type, lambda: StatusLed(cfg.gpio, factory))()
    return factory, ConsentButton(cfg.gpio, on_move, factory), led


def spoken_confirmation(cfg: Config) -> SpokenConfirmation | None:
    """The enrolled phrase if some sink accepts voice; fails closed (button only) on any problem."""
    if not any("voice" in sink.confirm for sink in cfg.sinks.values()):
        return None
    try:
        return SpokenConfirmation(Enrolment.load(cfg.confirm.resolved_path()))
    except EnrollError as e:
        log.warning("spoken confirmation off: %s; the button still works", e)
        return None
