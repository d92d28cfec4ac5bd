"""Home Assistant's own Wyoming satellite code as a guard's client: `wyoming.satellite.WyomingSatellite` up to
HA 2024.x (Python 3.11), `wyoming.assist_satellite.WyomingAssistSatellite` (an Assist satellite entity) after.

Run by Home Assistant's own Python (.venv-ha, made by the `home_assistant_python` fixture). Only the Assist
pipeline is stood in for (it needs speech-to-text engines), and for the entity the few parts of a running HA it
reaches for (its config entry's tasks, the entity registry, its state): the pipeline keeps what HA's satellite
code hands it and, when
given an answer WAV, lets that code stream it back as text-to-speech. Writes, as they happen:
OUT/runs.jsonl (one line per pipeline run: stages, bytes, the monotonic time of its first audio) and
OUT/run-N.raw (the audio of run N, as HA's speech-to-text would get it).

    python tests/home_assistant_satellite.py HOST PORT OUT [ANSWER.wav]
"""

import asyncio
import json
import sys
import time
import types
from pathlib import Path

from homeassistant.components import assist_pipeline, tts
from homeassistant.components.assist_pipeline import PipelineEvent, PipelineEventType
from homeassistant.components.assist_pipeline import select as pipeline_select
from homeassistant.components.wyoming.data import WyomingService
from homeassistant.components.wyoming.devices import SatelliteDevice
from homeassistant.core import HomeAssistant
from wyoming.info import Info


def _stand_in_pipeline(out: Path, answer: bytes | None):
    runs = 0

    async def run_pipeline(hass, *, event_callback, stt_stream, start_stage, end_stage, **_) -> None:
        nonlocal runs
        runs += 1
        audio, first = bytearray(), None
        async for chunk in stt_stream:
            first = first or time.monotonic()
            audio += chunk
        (out / f"run-{runs}.raw").write_bytes(audio)
        with (out / "runs.jsonl").open("a") as f:
            f.write(json.dumps({"run": runs, "start_stage": str(start_stage.value), "end_stage": str(end_stage.value),
                                "bytes": len(audio), "first_audio": first}) + "\n")
        if answer is not None and end_stage is assist_pipeline.PipelineStage.TTS:
            event_callback(PipelineEvent(PipelineEventType.TTS_END, {"tts_output": {"media_id": "answer"}}))
        event_callback(PipelineEvent(PipelineEventType.RUN_END))

    async def media_source_audio(hass, media_id: str) -> tuple[str, bytes]:
        return "wav", answer

    assist_pipeline.async_pipeline_from_audio_stream = run_pipeline
    try:  # HA 2024.10 on: the Assist satellite entity calls it from its own module
        from homeassistant.components.assist_satellite import entity as satellite_entity
        satellite_entity.async_pipeline_from_audio_stream = run_pipeline
    except ImportError:
        pass
    assist_pipeline.async_get_pipeline = lambda hass, pipeline_id: types.SimpleNamespace(name="test", language="en")
    pipeline_select.get_chosen_pipeline = lambda hass, domain, satellite_id: None
    tts.async_get_media_source_audio = media_source_audio


def _satellite(hass: HomeAssistant, service: WyomingService, device: SatelliteDevice):
    try:
        from homeassistant.components.wyoming.satellite import WyomingSatellite
    except ImportError:  # HA 2024.10 on: an Assist satellite entity of a config entry
        from homeassistant.components.wyoming import assist_satellite
        from homeassistant.components.wyoming.assist_satellite import WyomingAssistSatellite

        entry = types.SimpleNamespace(
            async_create_background_task=lambda hass, target, name: hass.async_create_background_task(target, name))
        satellite = WyomingAssistSatellite(hass, service, device, entry)
        satellite.hass, satellite.entity_id = hass, "assist_satellite.guard"
        satellite.platform = types.SimpleNamespace(config_entry=entry)
        satellite.async_write_ha_state = lambda: None
        satellite._resolve_pipeline = lambda: None  # the preferred pipeline, with no select entity registered
        satellite._resolve_vad_sensitivity = lambda: 1.0
        assist_satellite.intent.async_register_timer_handler = lambda hass, device_id, handler: lambda: None
        return satellite
    return WyomingSatellite(hass, service, device)


async def main(host: str, port: int, out: Path, answer: bytes | None) -> None:
    _stand_in_pipeline(out, answer)
    hass = HomeAssistant(str(out / "config"))
    satellite = _satellite(hass, WyomingService(host, port, Info()), SatelliteDevice("guard", "guard"))
    (out / "ready").touch()
    await satellite.run()


if __name__ == "__main__":
    host, port, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    asyncio.run(main(host, port, out, Path(sys.argv[4]).read_bytes() if len(sys.argv) > 4 else None))
