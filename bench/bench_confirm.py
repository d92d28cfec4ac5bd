"""Spoken confirmation: who and what can confirm a pending release, for several enrolled phrases.

For each phrase, enrols 3 takes of one espeak-ng voice (as `guard enroll --from`
does; the voice is in neither the calibration nor the cohort list), then plays,
each into a fresh pending window after 1 s of room tone:

- the phrase by that voice at other speeds and pitches, clean and at 10 dB SNR room noise (should confirm);
- partial phrases, and hand-written near-phrases (real words, not the calibration's
  generated sound-alikes) at 3 speeds, in the enrolled voice and 7 others (must not);
- the exact phrase in 8 other voices at 3 speeds (at most 10 % may);
- >= 1 hour of ordinary speech in rotating voices, including sentences that share
  words with the phrases (must not), streamed through one long pending window;
- the phrase inside the captured utterance, ending as pending begins (must not).

    .venv/bin/python bench/bench_confirm.py [--minutes 60] [--quick]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import speech  # noqa: E402

from guard import confirm  # noqa: E402
from guard.config import WakeModelSettings  # noqa: E402
from guard.dsp import FRAME_SAMPLES, RATE_HZ, level_dbfs  # noqa: E402
from guard.wake import FeatureExtractor, WakeDetector  # noqa: E402

PHRASES = {  # phrase: (enrolled voice, hand-written near-phrases)
    "please send it now, guard": ("en-us+m2", [
        "please spend it now, god", "police end it now, guard", "please send it now, guys",
        "please sent it now, card", "please lend it now, guard", "please send it out, guard",
        "these send it now, guard", "please mend it now, guard",
        "please send it now, garden", "please send it now, guarded", "please send it now, guard it",
    ]),
    "okay then, send my request": ("en-gb-x-rp+m5", [
        "okay then, spend my request", "okay then, send my regrets", "okay Ben, send my request",
        "okay then, end my request", "okay then, send your request", "hey then, send my request",
        "okay then, lend my request", "okay then, send my quest",
        "okay then, send my requester", "okay then, send my requests", "okay then, send my request in",
    ]),
    "guard, release the recording": ("en+f3", [
        "guard, release the recorder", "god, release the recording", "guard, replace the recording",
        "card, release the recording", "guard, relieve the recording", "guard, please the recording",
        "guard, release a recording", "guard, receive the recording",
        "guard, release the recordings", "guard, release the recording it", "guard, release the recording now",
    ]),
}
OTHER_VOICES = ("en-us+Alex", "en-us+Mike", "en-us+max", "en+m3", "en-gb-x-rp", "en-us+Andy", "en-gb-x-gbcwmd+m1",
                "en-us", "en-029+f4", "en+f3", "en-us+m2", "en-gb-x-rp+m5")
ENROL_SPEEDS = (150, 165, 180)
TRIAL_SPEEDS = (120, 140, 160, 180, 200, 220)
TRIAL_PITCHES = (30, 45, 60, 70)
NOISY = [(s, p) for s in (130, 160, 190) for p in (35, 50, 65)]
OTHER_SPEEDS = (140, 165, 190)
NEAR_SPEEDS = (120, 160, 200)
SHARED_WORDS = [
    "please pass the salt and the pepper", "could you send the letter tomorrow morning",
    "it is now or never for the team", "the night guard walked along the fence",
    "send me a postcard from the coast", "not now, I am busy with the dishes",
    "okay then, we will see you on Sunday", "my request was turned down again",
    "release the brakes slowly on the hill", "the recording of the concert was lovely",
    "right, okay then", "yes, send it", "do it now", "okay, guard the door",
]


def room(audio: np.ndarray) -> np.ndarray:
    return np.concatenate([speech.silence(1.0), audio, speech.silence(0.5)])


class Trials:
    """Fresh pending windows for one enrolment; counts what confirms."""

    def __init__(self, enrolment: confirm.Enrolment, features: FeatureExtractor) -> None:
        self.listener = confirm.SpokenConfirmation(enrolment)
        self.features = features

    def confirms(self, audio: np.ndarray, skip_frames: int = 0) -> bool:
        self.listener.reset()
        self.features.wipe()
        frames = audio[:len(audio) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
        hit = False
        for i, frame in enumerate(frames):
            self.features.push(frame)
            if i >= skip_frames and self.listener.listen(self.features, frame, level_dbfs(frame)):
                hit = True
                break
        self.features.wipe()
        return hit

    def stream_hits(self, embeddings: np.ndarray, floored: np.ndarray, frames: np.ndarray) -> tuple[int, float]:
        """Confirmations in one long pending window (restarting after each), and CPU s per frame of matching."""
        self.listener.reset()
        hits = 0
        started = time.process_time()
        for embedding, floor, frame in zip(embeddings, floored, frames, strict=True):
            if self.listener.push(embedding, frame, floor if self.listener.floored_matchers else None):
                hits += 1
                self.listener.reset()
        return hits, (time.process_time() - started) / len(frames)


def enrol(phrase: str, voice: str, features: FeatureExtractor) -> confirm.Enrolment:
    takes = [room(speech.say(phrase, voice, speed_wpm=s)) for s in ENROL_SPEEDS]
    return confirm.calibrate(phrase, takes, features)


def partials(phrase: str) -> list[str]:
    words = phrase.replace(",", "").split()
    return [" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)
            if (i, j) != (0, len(words))]


def ordinary_speech(minutes: float) -> tuple[np.ndarray, float]:
    parts, seconds = [], 0.0
    texts = [s for s in SHARED_WORDS for _ in range(2)] + speech.paragraphs() * 3
    for i, text in enumerate(texts):
        audio = speech.say(text, speech.VOICES[i % len(speech.VOICES)], speed_wpm=140 + 10 * (i % 6),
                           pitch=30 + 10 * (i % 5))
        parts += [audio, speech.silence(0.3)]
        seconds += len(audio) / RATE_HZ + 0.3
        if seconds >= minutes * 60:
            break
    return np.concatenate(parts), seconds


def evaluate(phrase: str, voice: str, near: list[str], features: FeatureExtractor, quick: bool) -> dict:
    started = time.monotonic()
    enrolment = enrol(phrase, voice, features)
    enrol_seconds = time.monotonic() - started
    trials = Trials(enrolment, features)
    speeds, pitches = (TRIAL_SPEEDS[::2], TRIAL_PITCHES[::2]) if quick else (TRIAL_SPEEDS, TRIAL_PITCHES)
    clean = [trials.confirms(room(speech.say(phrase, voice, speed_wpm=s, pitch=p))) for s in speeds for p in pitches]
    noisy = [trials.confirms(speech.with_room_noise(room(speech.say(phrase, voice, speed_wpm=s, pitch=p)), 10, s + p))
             for s, p in (NOISY[::3] if quick else NOISY)]
    others = [v for v in OTHER_VOICES if v != voice][:4 if quick else 8]
    confusable_voices = [voice] + others[:7]
    confusable = {kind: [(text, v, s) for text in texts for v in confusable_voices for s in speeds
                         if trials.confirms(room(speech.say(text, v, speed_wpm=s)))]
                  for kind, texts, speeds in (("partial", partials(phrase), (160,)), ("near", near, NEAR_SPEEDS))}
    n_confusable = (len(partials(phrase)) + len(near) * len(NEAR_SPEEDS)) * len(confusable_voices)
    per_voice = {v: sum(trials.confirms(room(speech.say(phrase, v, speed_wpm=s))) for s in OTHER_SPEEDS)
                 for v in others}
    said = speech.say(phrase, voice)
    inside = sum(trials.confirms(np.concatenate([speech.silence(1.0), said, speech.silence(1.0)]),
                                 skip_frames=(RATE_HZ + len(said)) // FRAME_SAMPLES - k) for k in range(0, 4))
    return {"enrolment": enrolment, "enrol_seconds": enrol_seconds, "clean": clean, "noisy": noisy,
            "confusable": confusable, "n_confusable": n_confusable, "voices": len(confusable_voices),
            "per_voice": per_voice, "inside": inside, "trials": trials}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="minutes of ordinary speech (default 60)")
    parser.add_argument("--quick", action="store_true", help="fewer trials, for a look while tuning")
    args = parser.parse_args()
    features = FeatureExtractor(16)
    audio, seconds = ordinary_speech(args.minutes)
    frames = audio[:len(audio) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    embeddings = confirm.embed(audio, features)
    floored = confirm.embed(audio, features, confirm.PHRASE_FLOOR)
    print(f"| phrase (enrolled voice) | accepted clean | accepted 10 dB SNR | partials + near-phrases confirmed "
          f"| exact phrase by other voices | ordinary speech ({seconds / 3600:.2f} h) | inside utterance "
          f"| content thr / closest confusable | speaker thr / nearest cohort |")
    print("|---|---|---|---|---|---|---|---|---|")
    totals = {"confusable": 0, "n": 0, "other": 0, "n_other": 0}
    match_cpu = []
    for phrase, (voice, near) in PHRASES.items():
        r = evaluate(phrase, voice, near, features, args.quick)
        e = r["enrolment"]
        false_hits, cpu = r["trials"].stream_hits(embeddings, floored, frames)
        match_cpu.append(cpu)
        wrong = sum(len(v) for v in r["confusable"].values())
        other_hits, other_n = sum(r["per_voice"].values()), len(OTHER_SPEEDS) * len(r["per_voice"])
        totals["confusable"] += wrong
        totals["n"] += r["n_confusable"]
        totals["other"] += other_hits
        totals["n_other"] += other_n
        print(f"| {phrase!r} ({voice}) | {sum(r['clean'])}/{len(r['clean'])} | {sum(r['noisy'])}/{len(r['noisy'])} "
              f"| {wrong}/{r['n_confusable']} ({r['voices']} voices) "
              f"| {other_hits}/{other_n}: "
              + ", ".join(f"{v} {n}/{len(OTHER_SPEEDS)}" for v, n in r["per_voice"].items())
              + f" | {false_hits} | {r['inside']}/4 | {e.threshold:.3f} / {e.negative_min:.3f} ({e.closest}) "
              f"| {e.speaker_threshold:.2f} / {e.speaker_negative_min:.2f} |")
        for kind, hits in r["confusable"].items():
            for text, v, s in hits:
                print(f"    confirmed by {kind}: {text!r} in {v} at {s} wpm")
        print(f"    enrolment took {r['enrol_seconds']:.1f} s")
    detector = WakeDetector([WakeModelSettings("alexa")])
    detect_cpu, floor_cpu = [], []
    for _ in range(5):  # interleaved: the wake detector on 600 frames, then the floored embedding of the same
        for start in range(0, 3000, 600):
            began = time.process_time()
            for frame in frames[start:start + 600]:
                detector.process(frame)
            detect_cpu.append((time.process_time() - began) / 600)
            began = time.process_time()
            for _ in frames[start:start + 600]:
                detector.features.floored_embedding(confirm.PHRASE_FLOOR)
            floor_cpu.append((time.process_time() - began) / 600)
    print(f"\nconfusables: {totals['confusable']}/{totals['n']} confirmed; exact phrase by other voices: "
          f"{totals['other']}/{totals['n_other']} = {totals['other'] / totals['n_other']:.0%}")
    print(f"cost per 80 ms frame while pending: matching {np.median(match_cpu) * 1e6:.0f} us "
          f"(range {min(match_cpu) * 1e6:.0f}-{max(match_cpu) * 1e6:.0f}); the floored embedding "
          f"{np.median(floor_cpu) * 1e6:.0f} us (range {min(floor_cpu) * 1e6:.0f}-{max(floor_cpu) * 1e6:.0f}), "
          f"beside the wake detector's {np.median(detect_cpu) * 1e6:.0f} us "
          f"(range {min(detect_cpu) * 1e6:.0f}-{max(detect_cpu) * 1e6:.0f}) in the same run")


if __name__ == "__main__":
    main()
