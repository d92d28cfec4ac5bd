"""Spoken confirmation: accept rate, false confirmations per hour, margin, and matching cost.

Enrols a phrase from 3 takes of one espeak-ng voice (as `guard enroll --from` does),
then plays: the phrase by that voice at other speeds and pitches (should confirm);
>= 1 hour of other speech in six voices, including sentences that share a word
with the phrase (must not); and the phrase inside the captured utterance, i.e.
just before pending starts (must not).

    .venv/bin/python bench/bench_confirm.py [--minutes 60]
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
from guard.audio import FRAME_SAMPLES, RATE_HZ  # noqa: E402
from guard.wake import FeatureExtractor, WakeDetector, WakeModelSettings  # noqa: E402

PHRASE = "please send it now, guard"
VOICE = "en-us"
ENROL_SPEEDS = (150, 165, 180)
TRIAL_SPEEDS = (120, 135, 150, 165, 180, 195, 210)
TRIAL_PITCHES = (25, 40, 55, 70)
SHARED_WORDS = [  # each shares one word with the phrase
    "please pass the salt and the pepper", "could you send the letter tomorrow morning",
    "it is now or never for the team", "the night guard walked along the fence",
    "send me a postcard from the coast", "not now, I am busy with the dishes",
    "please close the window, it is cold", "we should send it by train instead",
    "the guard dog barked at the mailman", "right now the kettle is boiling",
]


def enrol(features: FeatureExtractor) -> confirm.Enrolment:
    takes = []
    for speed in ENROL_SPEEDS:
        audio = np.concatenate([speech.silence(0.5), speech.say(PHRASE, VOICE, speed_wpm=speed), speech.silence(0.5)])
        takes.append(confirm.embed(audio, features)[confirm.voiced_frames(audio)])
    return confirm.calibrate(takes, confirm.load_negatives())


def heard(listener: confirm.SpokenConfirmation, stream: np.ndarray) -> tuple[int, float]:
    """Confirmations in a stream (resetting after each) and the lowest score seen."""
    hits, lowest = 0, np.inf
    for embedding in stream:
        confirmed = listener.push(embedding)
        lowest = min(lowest, listener.score)
        if confirmed:
            hits += 1
            listener.reset()
    return hits, lowest


def negative_speech(minutes: float) -> tuple[np.ndarray, float]:
    """Prose from every licence text but the one the shipped negatives use, plus shared-word sentences."""
    parts, seconds = [], 0.0
    sentences = [s for s in SHARED_WORDS for _ in range(3)]
    prose = [p for name in speech.PROSE if name != "GFDL-1.3"
             for p in [" ".join(b.split()) for b in (speech.LICENSES / name).read_text().split("\n\n")]
             if len(p.split()) >= 8]
    for i, text in enumerate(sentences + prose * 3):
        audio = speech.say(text, speech.VOICES[i % len(speech.VOICES)], speed_wpm=140 + 10 * (i % 6),
                           pitch=30 + 10 * (i % 5))
        parts += [audio, speech.silence(0.3)]
        seconds += len(audio) / RATE_HZ + 0.3
        if seconds >= minutes * 60:
            break
    return np.concatenate(parts), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="minutes of other speech (default 60)")
    args = parser.parse_args()
    features = FeatureExtractor(16)
    enrolment = enrol(features)
    listener = confirm.SpokenConfirmation(enrolment)

    accepted, inside, worst = 0, 0, 0.0
    trials = [(s, p) for s in TRIAL_SPEEDS for p in TRIAL_PITCHES]
    for speed, pitch in trials:
        said = speech.say(PHRASE, VOICE, speed_wpm=speed, pitch=pitch)
        listener.reset()
        hits, score = heard(listener, confirm.embed(np.concatenate([speech.silence(1.0), said, speech.silence(1.0)]),
                                                    features))
        accepted += hits > 0
        worst = max(worst, score)
        # the phrase as the end of the captured utterance: pending starts right after it
        stream = confirm.embed(np.concatenate([speech.silence(1.0), said, speech.silence(1.5)]), features)
        listener.reset()
        pending_at = (RATE_HZ + len(said)) // FRAME_SAMPLES  # the frame where the phrase ends
        inside += heard(listener, stream[pending_at:])[0]

    audio, seconds = negative_speech(args.minutes)
    stream = confirm.embed(audio, features)
    listener.reset()
    started = time.process_time()
    false_hits, closest = heard(listener, stream)
    match_cpu = (time.process_time() - started) / len(stream)

    detector = WakeDetector([WakeModelSettings("alexa")])
    frames = audio[:len(audio) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)[:3000]
    started = time.process_time()
    for frame in frames:
        detector.process(frame)
    detect_cpu = (time.process_time() - started) / len(frames)

    print(f"phrase {PHRASE!r}, enrolled from 3 takes of {VOICE} at {ENROL_SPEEDS} wpm; threshold "
          f"{enrolment.threshold:.3f}")
    print(f"accepted: {accepted}/{len(trials)} = {accepted / len(trials):.0%} "
          f"(same voice at {TRIAL_SPEEDS} wpm x pitch {TRIAL_PITCHES}); farthest trial's best "
          f"score {worst:.3f}")
    print(f"false confirmations: {false_hits} in {seconds / 3600:.2f} h of other speech "
          f"= {false_hits / (seconds / 3600):.1f} per hour")
    print(f"closest other speech: {closest:.3f}; margin to threshold {closest - enrolment.threshold:+.3f}")
    print(f"phrase inside the captured utterance: {inside} confirmations in {len(trials)} trials")
    print(f"cost per 80 ms frame: matching {match_cpu * 1e6:.0f} us (only while pending), wake detector "
          f"{detect_cpu * 1e6:.0f} us; ratio {match_cpu / detect_cpu:.2f}")


if __name__ == "__main__":
    main()
