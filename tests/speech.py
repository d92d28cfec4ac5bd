"""Synthesized test speech: espeak-ng voices converted by sox to 16 kHz mono int16.

Used by the tests and by bench/. Nothing here is shipped with guard.
"""

import subprocess
import wave
from pathlib import Path

import numpy as np

from guard.confusables import espeak_repeatable

RATE_HZ = 16000
VOICES = ("en", "en-us", "en+m3", "en-us+f2", "en-gb-x-rp", "en+f4")
WAKE_PHRASES = {"alexa": "Alexa", "hey_jarvis": "hey Jarvis"}
LICENSES = Path("/usr/share/common-licenses")
PROSE = ("GPL-3", "Apache-2.0", "MPL-2.0", "Artistic", "LGPL-2.1", "GFDL-1.3")
SPEECH_LEVEL = 300  # samples above this magnitude count as voiced when finding where a phrase ends


def say(text: str, voice: str = "en", speed_wpm: int = 160, pitch: int = 50) -> np.ndarray:
    """Speak `text` with espeak-ng; returns 16 kHz mono int16 samples, the same every time (espeak-ng -D where it
    has random breath noise, sox -R)."""
    espeak = subprocess.run(["espeak-ng", *espeak_repeatable(), "-v", voice, "-s", str(speed_wpm), "-p", str(pitch),
                             "--stdout", text], check=True, capture_output=True).stdout
    raw = subprocess.run(["sox", "-R", "-t", "wav", "-", "-t", "raw", "-r", str(RATE_HZ), "-e", "signed", "-b", "16",
                          "-c", "1", "-"], input=espeak, check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.int16).copy()


def frames(samples: np.ndarray, frame_samples: int = 1280) -> np.ndarray:
    """`samples` as whole 80 ms frames, one per row (a trailing part frame is dropped)."""
    return samples[:len(samples) // frame_samples * frame_samples].reshape(-1, frame_samples)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE_HZ), np.int16)


def voiced_end_seconds(samples: np.ndarray) -> float:
    """Where the last voiced sample is: the end of the spoken phrase."""
    return (np.nonzero(np.abs(samples.astype(np.int32)) > SPEECH_LEVEL)[0][-1] + 1) / RATE_HZ


def write_wav(path: Path, samples: np.ndarray, rate_hz: int = RATE_HZ, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


def wake_clip(model: str, voice: str, lead_seconds: float = 0.5, tail_seconds: float = 1.0
              ) -> tuple[np.ndarray, float]:
    """A wake phrase between silences, and the time (s) the phrase ends."""
    speech = say(WAKE_PHRASES[model], voice)
    clip = np.concatenate([silence(lead_seconds), speech, silence(tail_seconds)])
    return clip, lead_seconds + voiced_end_seconds(speech)


def two_requests(first: str, second: str, lead: float = 1.0, gap: float = 3.0, tail: float = 1.5) -> np.ndarray:
    """ "Alexa, <first>", then after `gap` s "Alexa, <second>": one request to release, one to let time out."""
    return np.concatenate([silence(lead), say("Alexa"), silence(0.3), say(first), silence(gap), say("Alexa"),
                           silence(0.3), say(second), silence(tail)])


def paragraphs(min_words: int = 8) -> list[str]:
    """Ordinary English prose from the licence texts every Debian system carries."""
    out = []
    for name in PROSE:
        text = (LICENSES / name).read_text(errors="replace")
        for block in text.split("\n\n"):
            words = block.split()
            if len(words) >= min_words:
                out.append(" ".join(words))
    return out


def ordinary_speech(seconds: float) -> np.ndarray:
    """At least `seconds` of prose read by rotating voices, with short pauses between paragraphs."""
    parts, total, target = [], 0, int(seconds * RATE_HZ)
    for i, text in enumerate(paragraphs()):
        parts += [say(text, VOICES[i % len(VOICES)], speed_wpm=150 + 10 * (i % 5)), silence(0.4)]
        total += len(parts[-2]) + len(parts[-1])
        if total >= target:
            return np.concatenate(parts)
    raise RuntimeError(f"only {total / RATE_HZ:.0f} s of prose available, {seconds} s asked")


def with_room_noise(samples: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """`samples` in a room: low-frequency-heavy noise (HVAC, fridge) at `snr_db` below the speech's level."""
    rng = np.random.default_rng(seed)
    brown = np.cumsum(rng.standard_normal(len(samples) + 800))
    noise = (brown - np.convolve(brown, np.ones(400) / 400, "same"))[400:400 + len(samples)]  # no DC drift
    noise /= np.sqrt(np.mean(noise ** 2))
    voiced = samples[np.abs(samples.astype(np.int32)) > SPEECH_LEVEL].astype(np.float64)
    level = np.sqrt(np.mean(voiced ** 2)) if len(voiced) else 1000.0
    mixed = samples + noise * level / 10 ** (snr_db / 20)
    return np.clip(np.round(mixed), -32768, 32767).astype(np.int16)


def in_noise(samples: np.ndarray, noise: np.ndarray, below_db: float) -> np.ndarray:
    """`samples` over the start of `noise`, whose RMS is scaled to `below_db` under the speech's voiced level."""
    part = noise[:len(samples)].astype(np.float64)
    voiced = samples[np.abs(samples.astype(np.int32)) > SPEECH_LEVEL].astype(np.float64)
    gain = np.sqrt(np.mean(voiced ** 2)) / np.sqrt(np.mean(part ** 2)) / 10 ** (below_db / 20)
    return np.clip(np.round(samples + part * gain), -32768, 32767).astype(np.int16)


def babble(seconds: float, voices: tuple[str, ...] = VOICES) -> np.ndarray:
    """Three rotating prose voices talking over each other: a kitchen with people in it."""
    texts = paragraphs()[40:]
    tracks = []
    for shift in range(3):
        parts, total = [], 0
        for i, text in enumerate(texts[shift::3]):
            parts.append(say(text[:400], voices[(i + 4 * shift) % len(voices)]))
            total += len(parts[-1])
            if total >= seconds * RATE_HZ:
                break
        tracks.append(np.concatenate(parts)[:int(seconds * RATE_HZ)].astype(np.int32))
    return np.clip(sum(tracks), -32768, 32767).astype(np.int16)


def fan(seconds: float, rng) -> np.ndarray:
    """Steady broadband noise, gently low-passed: a fan or an extractor hood."""
    white = rng.standard_normal(int(seconds * RATE_HZ) + 8)
    return np.convolve(white, np.ones(8) / 8, "valid")[:int(seconds * RATE_HZ)] * 3000


QUIET_ROOM = 20  # sample RMS: about -64 dBFS, a quiet room through a USB mic


def day_profile(seconds: float = 240, seed: int = 3) -> np.ndarray:
    """Mostly a quiet room; now and then a wake word, a request, or people talking."""
    rng = np.random.default_rng(seed)
    events = [say("Alexa"), say("hey Jarvis", "en+f4"), say("hey Mycroft", "en-us"),
              say("Alexa, what time is it", "en-gb-x-rp"), say("the kettle is on, do you want tea"),
              say("okay Nabu", "en-us+f2"), say("hey Jarvis, lights off", "en+m3")]
    parts, total = [], 0
    while total < seconds * 16000:
        gap = np.zeros(int(rng.uniform(2.5, 30) * 16000), np.int16)  # quiet spells from 2.5 s (just past rest) up
        event = events[int(rng.integers(len(events)))]
        parts += [gap, event]
        total += len(gap) + len(event)
    audio = np.concatenate(parts + [np.zeros(3 * 16000, np.int16)]).astype(np.float64)
    audio += rng.normal(0, QUIET_ROOM, len(audio))
    return np.clip(np.round(audio), -32768, 32767).astype(np.int16)
