"""Wake-to-hub latency: audio at real-time pace through the daemon to an MQTT subscriber on loopback.

Starts its own mosquitto, plays >= 50 synthesized wake words (6 espeak-ng
voices) through `guard run`'s daemon, and prints, per wake:
  (a) pipeline: the detecting 80 ms frame entering the pipeline -> `event/wake` at the subscriber;
  (b) felt: the end of the spoken wake word (known from the audio) -> that message.

    .venv/bin/python bench/bench_mqtt_latency.py [--wakes 50]
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
from mqtt_broker import Broker, Subscriber  # noqa: E402

from guard import config, parts  # noqa: E402
from guard.assembly import assemble  # noqa: E402
from guard.daemon import RunOptions  # noqa: E402
from guard.dsp import FRAME_SAMPLES, RATE_HZ  # noqa: E402
from guard.vocabulary import EventKind  # noqa: E402

GAP_SECONDS = 3.6  # after each word: 1 s of quiet ends the capture, 1 s pending, then idle again


def _audio(wakes: int) -> tuple[np.ndarray, list[float]]:
    """Wake words separated by quiet, and where each spoken word ends (s)."""
    parts, ends, at = [speech.silence(1.0)], [], 1.0
    words = [speech.say("Alexa", voice) for voice in speech.VOICES]
    for i in range(wakes):
        word = words[i % len(words)]
        ends.append(at + speech.voiced_end_seconds(word))
        parts += [word, speech.silence(GAP_SECONDS)]
        at += len(word) / RATE_HZ + GAP_SECONDS
    return np.concatenate(parts), ends


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wakes", type=int, default=50, help="wake words to play (default 50)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        audio, word_ends = _audio(args.wakes)
        wav = speech.write_wav(tmp / "wakes.wav", audio)
        broker = Broker(tmp / "broker").start()
        base = config.Config()
        cfg = dataclasses.replace(
            base, device=config.DeviceConfig("bench"), wake=dataclasses.replace(base.wake, models=("alexa",)),
            gate=dataclasses.replace(base.gate, pending_timeout_seconds=1.0),
            audit=config.AuditConfig(str(tmp / "audit.jsonl")),
            mqtt=config.MqttConfig(host="127.0.0.1", port=broker.port, discovery=False))
        received: list[float] = []
        sub = Subscriber(broker.port, ["guard/bench/event/wake"])
        sub.client.on_message = lambda c, u, m: received.append(time.monotonic())
        entered: list[float] = []  # when frame i entered the pipeline
        fed = [0]  # frames the gate has been given
        wake_frames: list[int] = []
        daemon = assemble(cfg, RunOptions(str(wav), "none", publish=lambda e: wake_frames.append(fed[0] - 1)
                                        if e.kind is EventKind.WAKE else None), parts.detector(cfg))
        post, feed = daemon.audio.post, daemon.gate.feed
        daemon.audio.post = lambda frame: (entered.append(time.monotonic()), post(frame))

        def counted_feed(frame):
            fed[0] += 1
            feed(frame)

        daemon.gate.feed = counted_feed
        thread = threading.Thread(target=daemon.run)
        thread.start()
        assert daemon.mqtt.listening.wait(10), "no broker"
        thread.join()
        time.sleep(0.5)
        sub.close()
        broker.stop()
    audio_start = entered[0] - FRAME_SAMPLES / RATE_HZ  # frame 0 is posted once its 80 ms have passed
    pipeline = [(received[i] - entered[f]) * 1000 for i, f in enumerate(wake_frames[:len(received)])]
    heard = [audio_start + (f + 1) * FRAME_SAMPLES / RATE_HZ for f in wake_frames]
    felt = []
    for i, t in enumerate(received):
        end = min(word_ends, key=lambda e: abs(audio_start + e - heard[i]))
        felt.append((t - (audio_start + end)) * 1000)
    print(f"{len(received)} wakes of {args.wakes} words, audio at real-time pace, mosquitto on loopback")
    print(f"{'latency (ms)':<52}{'p50':>8}{'p95':>8}{'max':>8}")
    for name, values in (("(a) detecting frame enters pipeline -> event/wake at hub", pipeline),
                         ("(b) end of spoken wake word -> event/wake at hub", felt)):
        print(f"{name:<52}{statistics.median(values):8.1f}{_percentile(values, 95):8.1f}{max(values):8.1f}")


if __name__ == "__main__":
    main()
