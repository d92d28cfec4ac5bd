"""A seeded, labelled wake-word corpus made offline with espeak-ng and sox (via tests/speech.py).

Positives: each shared wake word in 12 voices x 3 speeds x 2 pitches, alone and inside carrier
sentences, clean and with room noise or babble at 20/10/5 dB SNR. Negatives: hours of prose in
rotating voices, near-phrases, music-like tones and a quiet room. Cached under bench/.eval/.
"""

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import speech  # noqa: E402

RATE = speech.RATE_HZ
WORDS = {"alexa": "Alexa", "hey_jarvis": "hey Jarvis", "hey_mycroft": "hey Mycroft"}
VOICES = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan",
          "en-gb-x-gbcwmd", "en+m3", "en-us+f2", "en+f4", "en+m7")
SPEEDS = (140, 175, 210)
PITCHES = (35, 65)
CARRIERS = ("{}, what is the weather like tomorrow", "okay so {}, turn off the kitchen light")
CONDITIONS = (("clean", None), ("room", 20), ("room", 10), ("room", 5), ("babble", 20), ("babble", 10),
              ("babble", 5))
NEAR = ("a Lexus", "Alexandra", "election", "Alex, uh", "hey Travis", "hey Jarvik", "hey Harvey",
        "hey Microsoft", "hey micro", "hey my craft", "hey Minecraft", "the jar is", "my croft", "Alaska")


@dataclass(frozen=True)
class Spec:
    """What the corpus is made of; its hash names the cache."""

    words: tuple = tuple(WORDS)
    voices: tuple = VOICES
    speeds: tuple = SPEEDS
    pitches: tuple = PITCHES
    carriers: tuple = CARRIERS
    conditions: tuple = CONDITIONS
    negative_minutes: float = 120.0
    seed: int = 7
    generator: int = 2  # bumped when the making changes (2: sox -R, repeatable dither)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self)).encode()).hexdigest()[:12]


QUICK = Spec(voices=VOICES[::3], speeds=(175,), pitches=(50,), carriers=CARRIERS[:1],
             conditions=(("clean", None), ("room", 10), ("babble", 10)), negative_minutes=10.0)


def _noisy(samples: np.ndarray, kind: str, snr_db: float | None, babble: np.ndarray, rng) -> np.ndarray:
    if kind == "clean":
        return samples
    if kind == "room":
        return speech.with_room_noise(samples, snr_db, seed=int(rng.integers(1 << 30)))
    start = int(rng.integers(0, len(babble) - len(samples)))
    return speech.in_noise(samples, babble[start:], snr_db)


def _positives(spec: Spec, babble: np.ndarray, rng) -> tuple[list[np.ndarray], list[dict]]:
    clips, labels = [], []
    lead, tail = speech.silence(0.6), speech.silence(1.2)
    for word in spec.words:
        for voice in spec.voices:
            for speed in spec.speeds:
                for pitch in spec.pitches:
                    for carrier in ("{}",) + spec.carriers:
                        said = speech.say(carrier.format(WORDS[word]), voice, speed, pitch)
                        clean = np.concatenate([lead, said, tail])
                        for kind, snr in spec.conditions:
                            clips.append(_noisy(clean, kind, snr, babble, rng))
                            labels.append({"word": word, "voice": voice, "speed": speed, "pitch": pitch,
                                           "carrier": carrier != "{}", "noise": kind, "snr_db": snr})
    return clips, labels


def _tones(seconds: float, rng) -> np.ndarray:
    """Music-like: a random melody of chords with harmonics and a beat."""
    out, t = [], np.arange(int(0.25 * RATE)) / RATE
    for _ in range(int(seconds / 0.25)):
        root = 110 * 2 ** (int(rng.integers(0, 24)) / 12)
        chord = sum(np.sin(2 * np.pi * root * r * h * t) / h for r in (1, 1.26, 1.5) for h in (1, 2, 3))
        out.append(chord * np.exp(-3 * t) * 2500)
    return np.concatenate(out).astype(np.int16)


def _negatives(spec: Spec, babble: np.ndarray, rng) -> dict[str, np.ndarray]:
    texts = speech.paragraphs()
    prose, total, i = [], 0, 0
    target = spec.negative_minutes * 60 * RATE * 0.8
    while total < target:
        said = speech.say(texts[i % len(texts)], VOICES[i % len(VOICES)], SPEEDS[i % 3] - 10, PITCHES[i % 2])
        prose += [said, speech.silence(0.4)]
        total += len(said) + int(0.4 * RATE)
        i += 1
    near = []
    for j, phrase in enumerate(NEAR * 4):
        near += [speech.say(phrase, VOICES[j % len(VOICES)], SPEEDS[j % 3], PITCHES[j % 2]), speech.silence(1.0)]
    rest = spec.negative_minutes * 60 * RATE * 0.2
    room = speech.with_room_noise(np.zeros(int(rest / 2), np.int16) + 1, 0, seed=spec.seed)
    return {"prose": np.concatenate(prose), "near_phrases": np.concatenate(near),
            "tones": _tones(rest / 2 / RATE, rng), "quiet_room": (room.astype(np.float64) * 0.02).astype(np.int16),
            "babble": babble}


def load(spec: Spec) -> tuple[list[np.ndarray], list[dict], dict[str, np.ndarray]]:
    """The corpus for `spec`, made once and cached by its hash."""
    cache = ROOT / "bench" / ".eval" / spec.key()
    if (cache / "labels.json").exists():
        with np.load(cache / "positives.npz") as p, np.load(cache / "negatives.npz") as n:
            clips = [p[f"c{i}"] for i in range(len(p.files))]
            negatives = {k: n[k] for k in n.files}
        return clips, json.loads((cache / "labels.json").read_text()), negatives
    rng = np.random.default_rng(spec.seed)
    babble = speech.babble(min(600.0, spec.negative_minutes * 6), VOICES)
    clips, labels = _positives(spec, babble, rng)
    negatives = _negatives(spec, babble, rng)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(cache / "positives.npz", **{f"c{i}": c for i, c in enumerate(clips)})
    np.savez(cache / "negatives.npz", **negatives)
    (cache / "labels.json").write_text(json.dumps(labels))
    return clips, labels, negatives
