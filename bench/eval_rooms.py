"""How much of the room a release carries: the end of a request in kitchens that are never silent.

Requests ("Alexa, ..." by several espeak-ng voices) over a background (a television's
voices, babble, music, a fan, a fridge) at several levels under the talker, the
background either playing all along or starting mid-request (someone answering).
For each end rule: how often the wake word was heard, how many seconds of background
the release carries after the request ended, and how much of the request it lost.
Rules: "room quiet" is the first design (a capture ends after 1 s below silence_dbfs,
and is released whole); "talker N" is guard/endpoint.py with a ceiling of N dB under
the talker (FURTHEST_FROM_TALKER_DB).

With --wakes (needs .venv-bench, bench/make-venv): each bundled word said over each room,
heard by guard's default detector and by pymicro-wakeword, each with and without the
WebRTC front end (webrtc-noise-gain, noise suppression 2 and auto gain 5 dBFS, the
setting wyoming-satellite's README shows), and their false wakes per hour in each room
alone, all in the same run.

With --confirm: the first phrase of bench/bench_confirm.py, enrolled in a quiet room as
there, said by the enrolled voice at its trial speeds and pitches in each room and level
into a fresh pending window: how often it confirms.

    .venv/bin/python bench/eval_rooms.py [--quick] [--wakes] [--confirm]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import bench_confirm  # noqa: E402
import eval_corpus  # noqa: E402
import speech  # noqa: E402  (eval_corpus puts tests/ on the path)

from guard import confirm, endpoint, parts  # noqa: E402
from guard.config import AudioConfig, Config, GateConfig  # noqa: E402
from guard.dsp import FRAME_SAMPLES, FRAME_SECONDS, level_dbfs  # noqa: E402
from guard.wake import FeatureExtractor, WakeDetector  # noqa: E402

RATE = speech.RATE_HZ
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
WAKE_WORDS = {"alexa": "Alexa", "hey_jarvis": "hey Jarvis", "hey_mycroft": "hey Mycroft"}
FRONT_END = (2, 5)  # noise suppression level, auto gain (dBFS)
ALONE_SECONDS = 240.0  # each room by itself, for false wakes
TALKERS = ("en", "en-us", "en-gb-x-rp", "en+f4")
TV_VOICES = ("en-gb-scotland", "en-us-nyc", "en-029")  # nobody in the kitchen speaks like the television
REQUESTS = ("what is the weather like tomorrow", "turn off the kitchen light", "set a timer for ten minutes")
BELOW_DB = (20, 15, 10)
LEAD_SECONDS = 6.0  # background before the wake word: what the guard hears of the room before it
FADE_DB = 10.0  # the request ends this much quieter than it began
CEILINGS = (25.0, 15.0, 12.0, 10.0, 8.0, 6.0)


@dataclass
class Outcome:
    woke: bool
    carried: float = 0.0  # seconds of background released after the request ended
    lost: float = 0.0  # seconds of the request not released


def default_detector(word: str) -> WakeDetector:
    """What `guard run` listens with for `word` by default (engine auto: micro for alexa and hey_mycroft)."""
    return parts.detector(Config(), [word])


def television(seconds: float) -> np.ndarray:
    """A programme: one voice at a time, prose, with the short pauses of a dialogue."""
    parts, total = [], 0
    for i, text in enumerate(speech.paragraphs()[10:]):
        parts += [speech.say(text[:300], TV_VOICES[i % len(TV_VOICES)], 170), speech.silence(0.3)]
        total += len(parts[-2]) + len(parts[-1])
        if total >= seconds * RATE:
            break
    return np.concatenate(parts)[:int(seconds * RATE)]


def fridge(seconds: float, rng) -> np.ndarray:
    """A compressor's 50 Hz hum and its harmonics over low rumble."""
    t = np.arange(int(seconds * RATE)) / RATE
    hum = sum(np.sin(2 * np.pi * 50 * h * t + rng.uniform(0, 6.3)) / h for h in (1, 2, 3, 4))
    rumble = speech.with_room_noise(np.zeros(len(t), np.int16) + 1, 0, seed=int(rng.integers(1 << 30)))
    return hum * 2000 + rumble.astype(np.float64) * 0.3


def backgrounds(seconds: float, rng) -> dict[str, tuple[np.ndarray, bool]]:
    """Each background, and whether it is speech (then its level is that of its voiced samples)."""
    quiet = rng.normal(0, speech.QUIET_ROOM, int(seconds * RATE))
    return {"quiet room": (quiet, False), "television": (television(seconds), True),
            "babble": (speech.babble(seconds, eval_corpus.VOICES), True),
            "music": (eval_corpus._tones(seconds, rng).astype(np.float64), False),
            "fan": (speech.fan(seconds, rng), False), "fridge": (fridge(seconds, rng), False)}


def voiced_rms(samples: np.ndarray) -> float:
    voiced = samples[np.abs(samples) > speech.SPEECH_LEVEL].astype(np.float64)
    return float(np.sqrt(np.mean(voiced ** 2)))


def room_rule(frames: np.ndarray, woke: int, gate: GateConfig) -> int:
    """The first design: the capture ends after end_silence_seconds below silence_dbfs; all of it released."""
    quiet, limit = 0, woke + 1 + round(gate.max_utterance_seconds / FRAME_SECONDS)
    for i in range(woke + 1, min(limit, len(frames))):
        quiet = quiet + 1 if level_dbfs(frames[i]) < gate.silence_dbfs else 0
        if quiet * FRAME_SECONDS >= gate.end_silence_seconds:
            return (i + 1) * FRAME_SAMPLES
    return min(limit, len(frames)) * FRAME_SAMPLES


def talker_rule(frames: np.ndarray, woke: int, gate: GateConfig, pre_roll_frames: int) -> int:
    """guard/endpoint.py as the gate drives it: start at the wake, stop when the talker stops, keep to them."""
    end = endpoint.EndOfSpeech(gate.end_silence_seconds, gate.silence_dbfs)
    for frame in frames[:woke + 1]:
        end.hear(level_dbfs(frame))
    first = max(0, woke + 1 - pre_roll_frames)
    end.start((woke + 1 - first) * FRAME_SAMPLES)
    limit = woke + 1 + round(gate.max_utterance_seconds / FRAME_SECONDS)
    for i in range(woke + 1, min(limit, len(frames))):
        if end.push(level_dbfs(frames[i])):
            break
    return first * FRAME_SAMPLES + end.kept_samples()


def clip(talker: np.ndarray, noise: np.ndarray, is_speech: bool, below_db: float | None, onset: float,
         rng) -> tuple[np.ndarray, float]:
    """The talker in the room, and where the request's voiced part ends (seconds)."""
    lead, tail = int(LEAD_SECONDS * RATE), int(12 * RATE)
    clean = np.concatenate([np.zeros(lead), talker, np.zeros(tail)])
    start = int(rng.integers(0, len(noise) - len(clean)))
    room = noise[start:start + len(clean)].astype(np.float64)
    if below_db is not None:  # None: the room as it is (a quiet one, about -64 dBFS)
        level = voiced_rms(room) if is_speech else float(np.sqrt(np.mean(room ** 2)))
        room *= voiced_rms(talker) / level / 10 ** (below_db / 20)
    if onset:  # before it starts, the room is a quiet one (a microphone never gives digital silence)
        quiet = rng.normal(0, speech.QUIET_ROOM, lead + int(onset * len(talker)))
        room[:len(quiet)] = quiet
    mixed = np.clip(np.round(clean + room), -32768, 32767).astype(np.int16)
    return mixed, LEAD_SECONDS + speech.voiced_end_seconds(talker)


def room_levels(rooms: dict) -> Iterator[tuple[str, np.ndarray, bool, float | None]]:
    """Each room at each level under the talker; the quiet room as it is (None)."""
    for name, (noise, is_speech) in rooms.items():
        for below in BELOW_DB if name != "quiet room" else (None,):
            yield name, noise, is_speech, below


def fading_talker(voice: str, request: str) -> np.ndarray:
    """'Alexa', then the request trailing off FADE_DB, as people do."""
    said = speech.say(request, voice).astype(np.float64)
    fade = 10 ** (-FADE_DB * np.arange(len(said)) / len(said) / 20)
    return np.concatenate([speech.say("Alexa", voice), speech.silence(0.3), np.round(said * fade).astype(np.int16)])


def outcomes(frames: np.ndarray, woke: int | None, said_end: float, gate: GateConfig,
             pre_roll_frames: int) -> dict[str, Outcome]:
    """What each rule releases of one clip whose wake word was heard at frame `woke` (None: not heard)."""
    rules = ["room quiet", *(f"talker {c:g}" for c in CEILINGS)]
    if woke is None:
        return {rule: Outcome(False) for rule in rules}
    ends = [room_rule(frames, woke, gate)] + [_with_ceiling(c, talker_rule, frames, woke, gate, pre_roll_frames)
                                              for c in CEILINGS]
    return {rule: Outcome(True, max(0.0, end / RATE - said_end), max(0.0, said_end - end / RATE))
            for rule, end in zip(rules, ends, strict=True)}


def evaluate(quick: bool) -> dict[tuple, dict[str, list[Outcome]]]:
    rng = np.random.default_rng(27)
    gate, pre_roll_frames = GateConfig(), round(AudioConfig().pre_roll_seconds / FRAME_SECONDS)
    rooms = backgrounds(240.0, rng)
    detector = default_detector("alexa")
    results: dict[tuple, dict[str, list[Outcome]]] = {}
    for voice in TALKERS[:2] if quick else TALKERS:
        for request in REQUESTS[:2] if quick else REQUESTS:
            talker = fading_talker(voice, request)
            for name, noise, is_speech, below in room_levels(rooms):
                for onset, when in ((0.0, "all along"), (0.5, "mid-request")):
                    audio, said_end = clip(talker, noise, is_speech, below, onset, rng)
                    frames = speech.frames(audio)
                    by_rule = outcomes(frames, _wake(detector, frames), said_end, gate, pre_roll_frames)
                    for rule, outcome in by_rule.items():
                        results.setdefault((name, below, when), {}).setdefault(rule, []).append(outcome)
    return results


def _wake(detector: WakeDetector, frames: np.ndarray) -> int | None:
    detector.wipe()
    for i, frame in enumerate(frames):
        if detector.process(frame):
            return i
    return None


def _with_ceiling(ceiling: float, rule, *args) -> int:
    saved, endpoint.FURTHEST_FROM_TALKER_DB = endpoint.FURTHEST_FROM_TALKER_DB, ceiling
    try:
        return rule(*args)
    finally:
        endpoint.FURTHEST_FROM_TALKER_DB = saved


def _cell(outcomes: list[Outcome]) -> str:
    woke = [o for o in outcomes if o.woke]
    if not woke:
        return "- | -"
    carried = [o.carried for o in woke]
    return f"{np.median(carried):.1f} ({max(carried):.1f}) | {max(o.lost for o in woke):.2f}"


def report(results: dict[tuple, dict[str, list[Outcome]]]) -> None:
    """Per room: the first design beside the default talker rule; then every ceiling, over all rooms."""
    default = f"talker {endpoint.FURTHEST_FROM_TALKER_DB:g}"
    print("| background | under the talker | started | wake heard | first design: background released, median "
          "(max) s | request lost, max s | talker rule: background released, median (max) s | request lost, max s |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, below, when), by_rule in results.items():
        heard = [o.woke for o in by_rule["room quiet"]]
        level = "-" if below is None else f"{below} dB"
        print(f"| {name} | {level} | {when} | {sum(heard)}/{len(heard)} | {_cell(by_rule['room quiet'])} | "
              f"{_cell(by_rule[default])} |")
    print("\n| ceiling under the talker | started | background released, median (max) s | request lost, max s |")
    print("|---|---|---|---|")
    for rule in next(iter(results.values())):
        for when in ("all along", "mid-request"):
            pooled = [o for (_, _, w), by_rule in results.items() if w == when for o in by_rule[rule]]
            print(f"| {rule} | {when} | {_cell(pooled)} |")


def wake_clips(rooms: dict, quick: bool, rng) -> tuple[dict[str, np.ndarray], list[tuple]]:
    """Every word by every voice in every room and level (all along), and each room alone at the loudest level."""
    clips, labels = {}, []
    for word, said in WAKE_WORDS.items():
        for voice in TALKERS[:2] if quick else TALKERS:
            talker = np.concatenate([speech.say(said, voice), speech.silence(0.3), speech.say(REQUESTS[0], voice)])
            for name, noise, is_speech, below in room_levels(rooms):
                clips[f"c{len(labels)}"] = clip(talker, noise, is_speech, below, 0.0, rng)[0]
                labels.append((word, name, below))
    reference = voiced_rms(speech.say(REQUESTS[0]))
    for name, (noise, is_speech) in rooms.items():
        level = voiced_rms(noise) if is_speech else float(np.sqrt(np.mean(noise ** 2)))
        gain = 1.0 if name == "quiet room" else reference / level / 10 ** (min(BELOW_DB) / 20)
        clips[f"alone {name}"] = np.clip(np.round(noise * gain), -32768, 32767).astype(np.int16)
    return clips, labels


def guard_wakes(clips: dict[str, np.ndarray]) -> dict[str, dict[str, int]]:
    """Wakes of guard's default detector (engine auto), one word at a time, 2 s refractory as `guard run`."""
    counts: dict[str, dict[str, int]] = {name: {} for name in clips}
    for word in WAKE_WORDS:
        detector = default_detector(word)
        for name, samples in clips.items():
            detector.wipe()
            counts[name][word] = sum(len(detector.process(frame)) for frame in speech.frames(samples))
    return counts


def peer(command: str, *args: str) -> None:
    subprocess.run([str(BENCH_PYTHON), str(ROOT / "bench" / "eval_rooms_peer.py"), command, *args], check=True)


def evaluate_wakes(quick: bool) -> dict[str, dict[str, dict[str, int]]]:
    """Per system, per clip and word: the wakes counted."""
    clips, labels = wake_clips(backgrounds(ALONE_SECONDS, np.random.default_rng(28)), quick,
                               np.random.default_rng(29))
    with tempfile.TemporaryDirectory() as work:
        raw, cleaned, counts = Path(work) / "raw.npz", Path(work) / "clean.npz", Path(work) / "counts.json"
        np.savez(raw, **clips)
        peer("clean", str(raw), str(cleaned), *map(str, FRONT_END))
        with np.load(cleaned) as f:
            clean_clips = {k: f[k] for k in f.files}
        results = {"guard": guard_wakes(clips), "guard + front end": guard_wakes(clean_clips)}
        for source, system in ((raw, "pymicro-wakeword"), (cleaned, "pymicro-wakeword + front end")):
            peer("wakes", str(source), str(counts), *WAKE_WORDS)
            results[system] = json.loads(counts.read_text())
    results["labels"] = labels
    return results


def report_wakes(results: dict) -> None:
    labels = results.pop("labels")
    systems = list(results)
    print("\n| word | background | under the talker | " + " | ".join(f"{s}: heard" for s in systems) + " |")
    print("|---|---|---|" + "---|" * len(systems))
    groups: dict[tuple, list[str]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(f"c{i}")
    for (word, name, below), keys in groups.items():
        cells = [f"{sum(results[s][k][word] > 0 for k in keys)}/{len(keys)}" for s in systems]
        print(f"| {word} | {name} | {'-' if below is None else f'{below} dB'} | " + " | ".join(cells) + " |")
    print("\n| word | " + " | ".join(f"{s}: false wakes/h" for s in systems) + " | hours |")
    print("|---|" + "---|" * (len(systems) + 1))
    alone = [k for k in next(iter(results.values())) if k.startswith("alone ")]
    hours = len(alone) * ALONE_SECONDS / 3600
    for word in WAKE_WORDS:
        rates = [sum(results[s][k][word] for k in alone) / hours for s in systems]
        print(f"| {word} | " + " | ".join(f"{r:.1f}" for r in rates) + f" | {hours:.2f} |")
    for k in alone:
        wakes = {s: sum(results[s][k].values()) for s in systems}
        if any(wakes.values()):
            print(f"\nfalse wakes in {k[6:]}: " + ", ".join(f"{s} {n}" for s, n in wakes.items()))


def evaluate_confirmation(quick: bool) -> dict[tuple, list[bool]] | str:
    """Per room and level: whether each take of the enrolled phrase by the enrolled voice confirmed (enrolled
    or why enrolment refused the phrase."""
    phrase, (voice, _) = next(iter(bench_confirm.PHRASES.items()))
    features = FeatureExtractor(16)
    try:
        trials = bench_confirm.Trials(bench_confirm.enrol(phrase, voice, features), features)
    except confirm.EnrollError as e:
        return f"enrolment refused: {e}"
    rng = np.random.default_rng(30)
    rooms = backgrounds(240.0, rng)
    speeds, pitches = bench_confirm.TRIAL_SPEEDS, bench_confirm.TRIAL_PITCHES
    takes = [speech.say(phrase, voice, speed_wpm=s, pitch=p) for s in speeds for p in pitches]
    if quick:
        takes = takes[::3]
    results: dict[tuple, list[bool]] = {}
    for name, noise, is_speech, below in room_levels(rooms):
        results[(name, below)] = [trials.confirms(clip(take, noise, is_speech, below, 0.0, rng)[0]) for take in takes]
    return results


def report_confirmation(results: dict[tuple, list[bool]] | str) -> None:
    if isinstance(results, str):
        print(f"\n{results}")
        return
    print("\n| background | under the phrase | confirmed |")
    print("|---|---|---|")
    for (name, below), confirmed in results.items():
        level = "-" if below is None else f"{below} dB"
        share = 100 * sum(confirmed) / len(confirmed)
        print(f"| {name} | {level} | {sum(confirmed)}/{len(confirmed)} ({share:.0f} %) |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 voices and 2 requests instead of 4 and 3")
    parser.add_argument("--wakes", action="store_true", help="also the wake words in each room (.venv-bench)")
    parser.add_argument("--confirm", action="store_true", help="also spoken confirmation in each room")
    args = parser.parse_args()
    report(evaluate(args.quick))
    if args.wakes:
        report_wakes(evaluate_wakes(args.quick))
    if args.confirm:
        report_confirmation(evaluate_confirmation(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
