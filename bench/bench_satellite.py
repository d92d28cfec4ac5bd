"""Consent to Home Assistant: from the button press to the released audio at the satellite's client.

Plays requests ("Alexa, turn on the light", 6 espeak-ng voices) at real-time pace through `guard run`'s
daemon with a wyoming sink; presses the (mock) button as soon as the LED shows each pending request; a
stand-in for Home Assistant (the `wyoming` library's client) on loopback times what arrives. Per release:
  (a) consent -> run-pipeline at the client;
  (b) consent -> first audio-chunk at the client (the target: p95 <= 50 ms).
Consent is the moment the button comes back up (a press counts once it ends short of a long press), taken
when the pin is driven, so gpiozero's callback, the audit record (written and fsynced before any audio
leaves) and the delivery thread are all inside the figure.

    .venv/bin/python bench/bench_satellite.py [--requests 30]
"""

import argparse
import dataclasses
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import speech  # noqa: E402
from assist import HomeAssistant  # noqa: E402
from conftest import consent_window_open, until  # noqa: E402
from mqtt_broker import free_port  # noqa: E402
from wyoming.audio import AudioChunk  # noqa: E402
from wyoming.pipeline import RunPipeline  # noqa: E402

from guard import config, parts  # noqa: E402
from guard.assembly import assemble  # noqa: E402
from guard.daemon import RunOptions  # noqa: E402


def _audio(requests: int) -> np.ndarray:
    parts = [speech.silence(1.0)]
    for i in range(requests):
        voice = speech.VOICES[i % len(speech.VOICES)]
        parts += [speech.say("Alexa", voice), speech.silence(0.3), speech.say("turn on the light", voice),
                  speech.silence(2.5)]
    return np.concatenate(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30, help="requests to play (default 30)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wav = speech.write_wav(tmp / "requests.wav", _audio(args.requests))
        port = free_port()
        base = config.Config()
        cfg = dataclasses.replace(
            base, device=config.DeviceConfig("bench"), wake=dataclasses.replace(base.wake, models=("alexa",)),
            gpio=dataclasses.replace(base.gpio, bounce_seconds=0.0),
            audit=config.AuditConfig(str(tmp / "audit.jsonl")),
            wyoming=config.WyomingConfig(uri=f"tcp://127.0.0.1:{port}", zeroconf=False),
            sinks={"assist": config.SinkConfig(type="wyoming")})
        presses: list[float] = []

        def press() -> None:
            until(lambda: consent_window_open(daemon), 5)
            pin = daemon.pin_factory.pin(cfg.gpio.button_pin)
            pin.drive_low()
            time.sleep(0.1)
            presses.append(time.monotonic())
            pin.drive_high()

        def hook(event) -> None:
            if event.kind == "pending":
                threading.Thread(target=press, daemon=True).start()

        daemon = assemble(cfg, RunOptions(str(wav), "mock", publish=hook), parts.detector(cfg))
        thread = threading.Thread(target=daemon.run)
        thread.start()
        home_assistant = HomeAssistant(port)
        thread.join()
        time.sleep(0.5)
        home_assistant.close()
    runs = [t for t, e in home_assistant.events if RunPipeline.is_type(e.type)]
    firsts, last = [], None
    for t, e in home_assistant.events:
        if RunPipeline.is_type(e.type):
            last = None
        elif AudioChunk.is_type(e.type) and last is None:
            last = t
            firsts.append(t)
    pipeline = [(r - p) * 1000 for p, r in zip(presses, runs, strict=False)]
    audio = [(a - p) * 1000 for p, a in zip(presses, firsts, strict=False)]
    print(f"{len(runs)} releases of {args.requests} requests ({len(presses)} presses), real-time pace, loopback")
    print(f"{'latency (ms)':<46}{'p50':>8}{'p95':>8}{'max':>8}")
    for name, values in (("(a) consent -> run-pipeline at the client", pipeline),
                         ("(b) consent -> first audio-chunk at the client", audio)):
        print(f"{name:<46}{statistics.median(values):8.1f}{float(np.percentile(values, 95)):8.1f}"
              f"{max(values):8.1f}")


if __name__ == "__main__":
    main()
