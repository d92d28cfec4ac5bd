"""Home Assistant's own Wyoming satellite code (`homeassistant.components.wyoming.satellite`) as a guard's client.

Run by Home Assistant's own Python (.venv-ha, made by the `home_assistant_python` fixture). Only the Assist
pipeline is stood in for (it needs speech-to-text engines): it keeps what HA's satellite code hands it and, when
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
from homeassistant.components.wyoming.satellite import WyomingSatellite
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
    assist_pipeline.async_get_pipeline = lambda hass, pipeline_id: types.SimpleNamespace(name="test", language="en")
    pipeline_select.get_chosen_pipeline = lambda hass, domain, satellite_id: None
    tts.async_get_media_source_audio = media_source_audio


async def main(host: str, port: int, out: Path, answer: bytes | None) -> None:
    _stand_in_pipeline(out, answer)
    hass = HomeAssistant(str(out / "config"))
    satellite = WyomingSatellite(hass, WyomingService(host, port, Info()), SatelliteDevice("guard", "guard"))
    (out / "ready").touch()
    await satellite.run()


if __name__ == "__main__":
    host, port, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    asyncio.run(main(host, port, out, Path(sys.argv[4]).read_bytes() if len(sys.argv) > 4 else None))
