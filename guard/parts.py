"""The one place that builds the listening parts from the config: the wake detector and the microphone.

`guard run`, the CLI's verbs (scan, listen, enroll) and the benchmarks all build them here, so each listens
the way the daemon does (its models, engine, second opinion and resting).
"""

import dataclasses
from pathlib import Path

from guard.audio import MicSource
from guard.config import AudioConfig, Config
from guard.wake import WakeDetector

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
