"""Spoken confirmation: the user's own enrolled phrase, matched on openWakeWord embeddings.

Templates are embedding sequences of the user's takes, stored as `.npz` with
`allow_pickle=False` (never audio, never pickles). Matching is streaming
subsequence DTW with cosine distance, run only while pending and only on
embeddings whose whole window was heard after pending began. Anything wrong
(no templates, a damaged file) fails closed: no spoken confirmation, the
button still works.
"""

import math
import os
import zipfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from guard import confusables, trust, voiceprint
from guard.dsp import FRAME_SAMPLES, RATE_HZ, level_dbfs
from guard.errors import UsageError
from guard.ringbuffer import RingBuffer

# Noise 15-20 dB under a phrase fills the quiet between its sounds, and the raw embedding follows it: a phrase
# 20 dB over people talking scored like a sound-alike. In a noisy room the phrase is also matched on embeddings of
# mel windows raised to 20 dB under their loudest point, where the phrase in a room and in a quiet room look
# alike; takes, sound-alikes and ordinary speech are floored alike for its own threshold. Only in a noisy room:
# the floor also hides weak endings ("guard-s") and some sound-alikes come nearer (bench/rooms-results.md).
PHRASE_FLOOR = 2.0  # in the mel window's units of 10 dB
NOISY_ROOM_DB = 30.0  # a room whose loud moments come this close to the phrase's loudest frame is noisy
MIN_FLOORED_GAP = 0.01  # as MIN_CONTENT_GAP, on the floored scale (about half the raw one); below it, button only
EMBEDDING_WINDOW_FRAMES = 10  # an embedding sees 775 ms = 10 frames of 80 ms; skip these after pending starts
NEGATIVES = Path(__file__).resolve().parent / "models" / "confirm-negatives.npz"
MIN_TAKES = 3
VOICED_DBFS = -40.0  # a frame this loud counts as speech in a take
CLIPPED_LEVEL = 32700
MAX_TAKE_SECONDS = 4.0
MIN_SPEECH_SECONDS = 0.8  # a phrase shorter than this is a word people say anyway


class EnrollError(UsageError):
    """A take or a set of takes that cannot make a reliable confirmation phrase."""


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)).astype(np.float32)


def _frame_dbfs(samples: np.ndarray) -> np.ndarray:
    frames = samples[:len(samples) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES).astype(np.float64)
    rms = np.sqrt(np.mean(frames ** 2, axis=1)) / 32768
    return 20 * np.log10(np.maximum(rms, 1e-9))


def _voiced(samples: np.ndarray) -> np.ndarray:
    """Indices of the 80 ms frames loud enough to be speech."""
    return np.nonzero(_frame_dbfs(samples) >= VOICED_DBFS)[0]


def take_problem(samples: np.ndarray) -> str | None:
    """Why a recorded take cannot be used (silence, clipping, length), or None."""
    if len(samples) < FRAME_SAMPLES:
        return "too short"
    if len(_voiced(samples)) < 4:
        return "no speech heard (is the mic muted or too far away?)"
    if speech_seconds(samples) > MAX_TAKE_SECONDS:
        return f"the phrase is longer than {MAX_TAKE_SECONDS:g} s; use a short phrase and say it once"
    if np.mean(np.abs(samples.astype(np.int32)) >= CLIPPED_LEVEL) > 0.001:
        return "clipped (too loud); step back or lower the mic gain"
    return None


def speech_seconds(samples: np.ndarray) -> float:
    """How long the speech in a take lasts, first voiced frame to last."""
    voiced = _voiced(samples)
    return 0.0 if len(voiced) == 0 else (voiced[-1] - voiced[0] + 1) * FRAME_SAMPLES / RATE_HZ


TAIL_FRAMES = 3  # a template runs 240 ms into the quiet after the take's speech
FLOORED_TAIL_FRAMES = 5  # 400 ms: a floored embedding of the quiet after a phrase changes for that long


def voiced_frames(samples: np.ndarray, tail: int = TAIL_FRAMES) -> slice:
    """The embedding frames of a take that cover its speech: from its first voiced frame to `tail` after the last."""
    voiced = _voiced(samples)
    return slice(int(voiced[0]), int(voiced[-1]) + 1 + tail)


SEGMENTS = 4  # the template is scored in quarters: a phrase missing or changing any part fails that part


class Matcher:
    """Streaming subsequence DTW of one template against incoming embeddings.

    Steps per incoming frame: stay on a template frame, advance one, or skip one
    (speech from half to double the template's pace). The path is chosen by its
    mean cosine distance; the score is the worst mean over the template's
    quarters, so a partial phrase or one word swapped cannot hide behind the
    parts that do match.
    """

    def __init__(self, template: np.ndarray) -> None:
        self.template = _unit(template)
        n = len(self.template)
        self._segment = np.arange(n) * SEGMENTS // n
        self._own = np.eye(SEGMENTS)[self._segment]  # (n, SEGMENTS): which quarter each frame is in
        self.reset()

    def reset(self) -> None:
        n = len(self.template)
        self._cost = np.full(n, np.inf)
        self._length = np.ones(n)
        self._parts = np.zeros((n, SEGMENTS))
        self._part_lengths = np.zeros((n, SEGMENTS))

    def push(self, embedding: np.ndarray) -> float:
        """Add one embedding; returns the score of the best match ending now (lower is closer)."""
        local = 1.0 - self.template @ (embedding / max(float(np.linalg.norm(embedding)), 1e-9))
        n = len(self.template)
        candidates = np.full((3, n), np.inf)
        lengths = np.ones((3, n))
        candidates[0], lengths[0] = self._cost, self._length
        candidates[1, 1:], lengths[1, 1:] = self._cost[:-1], self._length[:-1]
        candidates[2, 2:], lengths[2, 2:] = self._cost[:-2], self._length[:-2]
        best = np.argmin(candidates / lengths, axis=0)
        source = np.arange(n) - best  # the template frame each path came from (row 0 is restarted below)
        parts = self._parts[source] + self._own * local[:, None]
        part_lengths = self._part_lengths[source] + self._own
        cost = candidates[best, np.arange(n)] + local
        length = lengths[best, np.arange(n)] + 1
        cost[0], length[0] = local[0], 1.0  # a match may start at any frame
        parts[0], part_lengths[0] = self._own[0] * local[0], self._own[0]
        self._cost, self._length, self._parts, self._part_lengths = cost, length, parts, part_lengths
        if not np.isfinite(cost[-1]):
            return float("inf")
        return float(np.max(parts[-1] / np.maximum(part_lengths[-1], 1)))

    @property
    def frames(self) -> int:
        """How many incoming frames the best match ending now spans: where the phrase began."""
        return int(self._length[-1])


def _closest(matchers: list[Matcher], embedding: np.ndarray) -> tuple[float, int]:
    """The best score any of `matchers` gives after `embedding`, and the frames that match spans and the
    END_QUIET_FRAMES before it (the phrase, however fast it was said, and its quiet end)."""
    scores = [m.push(embedding) for m in matchers]
    best = int(np.argmin(scores))
    return scores[best], matchers[best].frames + END_QUIET_FRAMES


def best_score(template: np.ndarray, stream: np.ndarray) -> float:
    """The closest any stretch of `stream` comes to `template`."""
    matcher = Matcher(template)
    return min((matcher.push(e) for e in stream), default=float("inf"))


CONTENT_SIDE = 0.75  # where the content threshold sits between the takes (0) and the closest confusable (1)
MIN_CONTENT_GAP = 0.02  # takes and the closest confusable must be at least this far apart
MAX_CONTENT_THRESHOLD = 0.5  # no calibration places it higher: a stored value above this is tampering
SPEAKER_SIDE = 0.5  # likewise for the speaker ratio, between the takes and the nearest cohort voice
MAX_SPEAKER_RATIO = 0.65  # above this the user's takes are no nearer to each other than to a synthetic voice
MAX_UNEVENNESS = 2.5  # worst part over mean distance: a swapped word or a missing part goes above this
UNEVENNESS_SLACK = 1.1  # room above the takes' own unevenness for a new take in another room
RECHECK_FRAMES = 4  # the voice checks cost ~70 ms on a PC: after a refusal, wait 320 ms before the next
LISTEN_SECONDS = 6.0  # audio since pending began kept (RAM, wiped) for the speaker check
# The phrase must have ended where the match ends ("guard" must not be the start of "garden" or "guarded"):
# a take's template ends 240 ms (floored: 400 ms) after its speech, so the true phrase matches ever better into
# the quiet after it, while a word that goes on ("guard-en") matched best before its quiet and worse with each
# quiet frame.
# A match counts when its score has got no worse over the last END_QUIET_FRAMES frames and those frames are
# quiet: END_DROP_DB below the phrase's loudest frame, or within FLOOR_MARGIN_DB of the room's quietest, or
# within ROOM_MARGIN_DB of the room's loud moments before the phrase (other people talking 20 dB under it), but
# never nearer than ROOM_DROP_DB to the phrase's loudest frame.
END_QUIET_FRAMES = 3  # 240 ms
END_DROP_DB = 25.0
FLOOR_MARGIN_DB = 6.0  # the floor is the quietest frame since pending began: the room before the phrase
FLOOR_DBFS = -90.0  # digital silence counts as this quiet
ROOM_DROP_DB = 15.0
ROOM_PERCENTILE = 90  # the room's loud moments: a television's words, not its pauses
ROOM_MARGIN_DB = 3.0
ROOM_MIN_FRAMES = 6  # the room's loud moments need 480 ms heard before the phrase
PHRASE_LEVEL_FRAMES = 128  # frame levels kept (numbers, not audio): the phrase, at half pace, and the room before


@dataclass(frozen=True)
class Enrolment:
    """The enrolled phrase: per take, its embeddings (what was said) and cepstra (who said it), and thresholds.

    `cohort` holds the cepstra of the same phrase in synthetic voices; the
    `closest` confusable is kept so `guard enroll --list` can say what the
    threshold was placed against. `floored` holds the takes' floored embeddings
    for noisy rooms (empty, and its numbers 0, when the phrase is too near a
    confusable there, or the file was made before guard had them).
    """

    phrase: str
    templates: tuple[np.ndarray, ...]
    voiceprints: tuple[voiceprint.Voiceprint, ...]
    cohort: tuple[np.ndarray, ...]
    threshold: float
    positive_max: float
    negative_min: float
    closest: str
    speaker_threshold: float
    speaker_positive_max: float
    speaker_negative_min: float
    unevenness_threshold: float
    created: str
    floored: tuple[np.ndarray, ...] = ()
    floored_threshold: float = 0.0
    floored_positive_max: float = 0.0
    floored_negative_min: float = 0.0

    NUMBERS = ("threshold", "positive_max", "negative_min", "speaker_threshold", "speaker_positive_max",
               "speaker_negative_min", "unevenness_threshold")
    FLOORED_NUMBERS = ("floored_threshold", "floored_positive_max", "floored_negative_min")

    def save(self, path: Path) -> None:
        """Write atomically, mode 0600: features and numbers only, never audio.

        Run as root into the service's state folder (`sudo guard enroll`), the file goes
        to the folder's owner, the `guard` user, so that the service can read it.
        """
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        folder = path.parent.stat()
        if os.geteuid() == 0 and folder.st_uid != 0:
            os.fchown(fd, folder.st_uid, folder.st_gid)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, phrase=np.array(self.phrase), closest=np.array(self.closest), created=np.array(self.created),
                     **{k: getattr(self, k) for k in self.NUMBERS + self.FLOORED_NUMBERS},
                     **{f"take{i}": t for i, t in enumerate(self.templates)},
                     **{f"floored{i}": t for i, t in enumerate(self.floored)},
                     **{f"voice{i}": v.speaker for i, v in enumerate(self.voiceprints)},
                     **{f"detail{i}": v.detail for i, v in enumerate(self.voiceprints)},
                     **{f"cohort{i}": c for i, c in enumerate(self.cohort)})
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path) -> "Enrolment":
        """Read and check a template file; any problem raises EnrollError naming the file."""
        _check_file_trust(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                def series(prefix: str) -> tuple[np.ndarray, ...]:
                    keys = sorted((k for k in data.files if k.startswith(prefix) and k[len(prefix):].isdigit()),
                                  key=lambda k: int(k[len(prefix):]))
                    return tuple(np.asarray(data[k], np.float32) for k in keys)

                templates, speakers, details = series("take"), series("voice"), series("detail")
                cohort, floored = series("cohort"), series("floored")
                missing = [k for k in (*cls.NUMBERS, "phrase", "closest", "created") if k not in data.files]
                numbers = {k: float(data[k]) for k in cls.NUMBERS if k in data.files}
                floored_numbers = {k: float(data[k]) for k in cls.FLOORED_NUMBERS if k in data.files and floored}
                texts = {k: str(data[k]) for k in ("phrase", "closest", "created") if k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise EnrollError(f"{path}: damaged confirmation templates ({e}); enrol again") from None
        if missing:
            raise EnrollError(f"{path}: made by an older guard (no {missing[0]}); enrol again: guard enroll confirm")
        if len(templates) < MIN_TAKES or not len(speakers) == len(details) == len(templates) or len(cohort) < 2 \
                or len(floored) not in (0, len(templates)) or len(floored_numbers) not in (0, 3) \
                or any(t.ndim != 2 or t.shape[1] != 96 or len(t) < 3 for t in templates + floored) \
                or any(v.ndim != 2 or v.shape[1] != voiceprint.CEPSTRA or len(v) < 1 for v in speakers + cohort) \
                or any(d.ndim != 2 or d.shape[1] != 2 * voiceprint.CEPSTRA or len(d) < 1 for d in details) \
                or not all(math.isfinite(v) and v > 0 for v in (numbers | floored_numbers).values()):
            raise EnrollError(f"{path}: damaged confirmation templates (wrong shapes or values); enrol again")
        voiceprints = tuple(voiceprint.Voiceprint(v, d) for v, d in zip(speakers, details, strict=True))
        in_noise = {"floored": floored, **floored_numbers} if floored_numbers else {}
        enrolment = cls(texts["phrase"], templates, voiceprints, cohort, closest=texts["closest"],
                        created=texts["created"], **numbers, **in_noise)
        problem = enrolment.implausible()
        if problem:
            raise EnrollError(f"{path}: {problem}, which calibration never produces (was the file edited?); "
                              "enrol again: guard enroll confirm")
        return enrolment

    def implausible(self) -> str | None:
        """Why these thresholds cannot have come from `calibrate` (a hand-edited file), or None."""
        if not self.positive_max < self.threshold < self.negative_min or self.threshold > MAX_CONTENT_THRESHOLD:
            return f"threshold {self.threshold:g} lies outside {self.positive_max:g}-{self.negative_min:g}"
        if not self.speaker_positive_max < self.speaker_threshold <= MAX_SPEAKER_RATIO \
                or self.speaker_threshold >= self.speaker_negative_min:
            return f"speaker threshold {self.speaker_threshold:g} lies outside what calibration allows"
        if not 1 <= self.unevenness_threshold <= MAX_UNEVENNESS:
            return f"unevenness threshold {self.unevenness_threshold:g} lies outside 1-{MAX_UNEVENNESS:g}"
        if self.floored and (not self.floored_positive_max < self.floored_threshold < self.floored_negative_min
                             or self.floored_threshold > MAX_CONTENT_THRESHOLD):
            return f"floored threshold {self.floored_threshold:g} lies outside " \
                   f"{self.floored_positive_max:g}-{self.floored_negative_min:g}"
        return None


def _check_file_trust(path: Path) -> None:
    """Refuse templates that someone other than root or this service could have written."""
    if not path.exists():
        raise EnrollError(f"{path}: no confirmation phrase enrolled; run: guard enroll confirm")
    problem = trust.untrusted(path)
    if problem:
        raise EnrollError(problem)


def _padded(samples: np.ndarray) -> np.ndarray:
    quiet = np.zeros(RATE_HZ // 2, np.int16)
    return np.concatenate([quiet, samples, quiet])


@dataclass
class _Nearest:
    """How near the takes are to each other, and the closest confusable, for one kind of embedding."""

    templates: list[np.ndarray]
    positive: float
    negative: float = math.inf
    closest: str = "ordinary speech"

    def of(self, kind: str, stream: np.ndarray) -> None:
        score = min(best_score(t, stream) for t in self.templates)
        if score < self.negative:
            self.closest, self.negative = kind, score

    def threshold(self) -> float:
        return min(self.positive + CONTENT_SIDE * (self.negative - self.positive), MAX_CONTENT_THRESHOLD)


def _leave_one_out(templates: list[np.ndarray]) -> float:
    return max(min(best_score(other, take) for other in templates if other is not take) for take in templates)


def _content_calibration(phrase: str, takes: list[np.ndarray], features, progress: Callable | None = None
                         ) -> tuple[_Nearest, _Nearest]:
    """The takes against ordinary speech and synthesized sound-alikes: raw, and floored (see PHRASE_FLOOR)."""
    raw = _Nearest([embed(t, features)[voiced_frames(t)] for t in takes], 0.0)
    floored = _Nearest([embed(t, features, PHRASE_FLOOR)[voiced_frames(t, FLOORED_TAIL_FRAMES)] for t in takes], 0.0)
    for nearest, prefix in ((raw, "stream"), (floored, "floored")):
        nearest.positive = _leave_one_out(nearest.templates)
        for stream in load_negatives(prefix):  # read once, not once per template
            nearest.of("ordinary speech", stream)
    items = confusables.confusables(phrase)
    for done, item in enumerate(items):
        if progress is not None:
            progress(done, len(items), "sound-alikes")
        for voice, speed, pitch in confusables.CALIBRATION_VOICES:
            audio = _padded(confusables.speak(item.text, voice, speed, pitch))
            raw.of(f"{item.kind} {item.text!r}", embed(audio, features))
            floored.of(f"{item.kind} {item.text!r}", embed(audio, features, PHRASE_FLOOR))
    return raw, floored


def _speaker_calibration(voiceprints: list[voiceprint.Voiceprint], cohort: list[np.ndarray]
                         ) -> tuple[float, float, float]:
    """(the worst ratio of a take against the other takes, the best ratio a cohort voice gets, the takes' worst
    unevenness against each other)."""
    own = [voiceprint.compare(v, tuple(o for o in voiceprints if o is not v), tuple(cohort)) for v in voiceprints]
    negative = min(voiceprint.speaker_ratio(c, tuple(voiceprints), tuple(o for o in cohort if o is not c))
                   for c in cohort)
    return max(v.ratio for v in own), negative, max(v.unevenness for v in own)


def calibrate(phrase: str, takes: list[np.ndarray], features, progress: Callable | None = None) -> Enrolment:
    """Enrol `phrase` from the user's takes, with thresholds placed against synthesized confusables.

    Content: the threshold sits between how far the takes are from each other
    (leave-one-out) and how close the nearest partial, sound-alike, reordering
    or ordinary sentence comes, nearer the takes (CONTENT_SIDE): a missed
    confirmation only means pressing the button; a false one sends audio.
    Speaker: likewise between the takes and a cohort of synthetic voices.

    Args:
        phrase: the words of the phrase as typed (checked by `confusables.check_phrase`).
        takes: 16 kHz int16 recordings of the user saying it (at least 3).
        features: a `wake.FeatureExtractor`.
        progress: called as progress(done, total, unit) while sound-alikes are synthesized and compared.
    Raises:
        EnrollError (exit 2) naming what is wrong and what to choose instead.
    """
    if len(takes) < MIN_TAKES:
        raise EnrollError(f"{len(takes)} take(s); at least {MIN_TAKES} are needed")
    for i, take in enumerate(takes):
        spoken = speech_seconds(take)
        if spoken < MIN_SPEECH_SECONDS:
            raise EnrollError(f"take {i + 1} holds {spoken:.1f} s of speech; a safe phrase takes at least "
                              f"{MIN_SPEECH_SECONDS:g} s to say; choose a longer one")
    voiceprints = [voiceprint.Voiceprint.of(t) for t in takes]
    if any(len(v.speaker) == 0 for v in voiceprints):
        raise EnrollError("a take has too little speech to tell whose voice it is; say the whole phrase each time")
    cohort = [voiceprint.cepstra(_padded(confusables.speak(phrase, v))) for v in confusables.COHORT_VOICES]
    raw, floored = _content_calibration(phrase, takes, features, progress)
    if raw.negative - raw.positive < MIN_CONTENT_GAP:
        raise EnrollError(f"these takes are as close to the {raw.closest} (score {raw.negative:.3f}) as to each "
                          f"other ({raw.positive:.3f}); choose a longer phrase with less common words, and say it "
                          "the same way each time")
    in_noise = {} if floored.negative - floored.positive < MIN_FLOORED_GAP else {
        "floored": tuple(floored.templates), "floored_threshold": floored.threshold(),
        "floored_positive_max": floored.positive, "floored_negative_min": floored.negative}
    speaker_positive, speaker_negative, unevenness = _speaker_calibration(voiceprints, cohort)
    if speaker_positive >= MAX_SPEAKER_RATIO or speaker_negative <= speaker_positive:
        raise EnrollError(f"your takes differ in voice (ratio {speaker_positive:.2f}) nearly as much as other voices "
                          f"do; record them in a quiet room at the distance you will speak from")
    if unevenness > MAX_UNEVENNESS:
        raise EnrollError(f"one part of the phrase differs between your takes (unevenness {unevenness:.2f}); "
                          "say the whole phrase the same way each time")
    speaker_threshold = min(speaker_positive + SPEAKER_SIDE * (speaker_negative - speaker_positive),
                            MAX_SPEAKER_RATIO)
    return Enrolment(phrase, tuple(raw.templates), tuple(voiceprints), tuple(cohort), raw.threshold(),
                     raw.positive, raw.negative, raw.closest, speaker_threshold, speaker_positive, speaker_negative,
                     min(unevenness * UNEVENNESS_SLACK, MAX_UNEVENNESS),
                     datetime.now(UTC).isoformat(timespec="seconds"), **in_noise)


def load_negatives(prefix: str = "stream", path: Path = NEGATIVES) -> list[np.ndarray]:
    """Embedding streams of synthesized ordinary speech shipped for calibration: raw (`stream`) or `floored`."""
    with np.load(path, allow_pickle=False) as data:
        return [np.asarray(data[k], np.float32) for k in sorted(data.files) if k.startswith(prefix)]


def _falling(scores: deque[float]) -> bool:
    """The match has got no worse over the last END_QUIET_FRAMES frames (see END_QUIET_FRAMES)."""
    ordered = list(scores)
    return all(b <= a for a, b in zip(ordered, ordered[1:], strict=False))


class SpokenConfirmation:
    """Listens, while pending, for the enrolled phrase by the enrolled voice, in audio heard after pending began.

    Two checks must both pass: what was said (embedding DTW against the takes)
    and who said it (cepstral DTW against the takes, relative to a cohort of
    other voices). The audio since pending began sits in a locked ring that
    `reset()` and `wipe()` zero.

    Args:
        enrolment: the templates and thresholds.
    """

    def __init__(self, enrolment: Enrolment) -> None:
        self.enrolment = enrolment
        self.matchers = [Matcher(t) for t in enrolment.templates]
        self.floored_matchers = [Matcher(t) for t in enrolment.floored]  # for noisy rooms
        self.heard = RingBuffer(LISTEN_SECONDS)
        self._scratch = np.zeros(self.heard.capacity, np.int16)
        self.reset()

    def reset(self) -> None:
        """A new pending window: forget everything heard before it."""
        for m in self.matchers + self.floored_matchers:
            m.reset()
        self.wipe()
        self._skip = EMBEDDING_WINDOW_FRAMES
        self._recheck_in = 0
        self._levels: deque[float] = deque(maxlen=PHRASE_LEVEL_FRAMES)
        self._scores: deque[float] = deque(maxlen=END_QUIET_FRAMES)  # the match's score, frame by frame
        self._floored_scores: deque[float] = deque(maxlen=END_QUIET_FRAMES)
        self._span = 0  # frames the match being judged spans, its quiet end included
        self.score = self.floored_score = math.inf
        self.in_noise = False
        self.speaker_score = self.unevenness = math.inf

    def wipe(self) -> None:
        self.heard.wipe()
        self._scratch.fill(0)

    def listen(self, features, frame: np.ndarray, frame_dbfs: float) -> bool:
        """The newest frame and its level, after `features` (a `wake.FeatureExtractor`) took it in; see `push`."""
        floored = features.floored_embedding(PHRASE_FLOOR) if self.floored_matchers and self._skip == 0 else None
        return self.push(features.embeddings[-1], frame, floored, frame_dbfs)

    def push(self, embedding: np.ndarray, frame: np.ndarray, floored: np.ndarray | None = None,
             frame_dbfs: float | None = None) -> bool:
        """One frame, its embedding, its floored one (if the enrolment has floored takes) and its level (measured
        here if not given); True when the phrase has just been heard, whole and ended, in the enrolled voice."""
        self.heard.write(frame)
        self._levels.append(level_dbfs(frame) if frame_dbfs is None else frame_dbfs)
        if self._skip > 0:  # this embedding's window still reaches back before pending began
            self._skip -= 1
            return False
        self.score, self._span = _closest(self.matchers, embedding)
        self._scores.append(self.score)
        raw = self.score <= self.enrolment.threshold and _falling(self._scores)
        floored_too = False
        if floored is not None:
            self.floored_score, floored_span = _closest(self.floored_matchers, floored)
            self._floored_scores.append(self.floored_score)
            if not raw and self.floored_score <= self.enrolment.floored_threshold \
                    and _falling(self._floored_scores):
                self._span = floored_span
                floored_too = self._noisy()
        if not (raw or floored_too) or not self._ended():
            return False
        if self._recheck_in > 0:
            self._recheck_in -= 1
            return False
        verdict = self._compare()
        self.speaker_score, self.unevenness = verdict.ratio, verdict.unevenness
        if verdict.ratio <= self.enrolment.speaker_threshold \
                and verdict.unevenness <= self.enrolment.unevenness_threshold:
            self.in_noise = not raw  # which match confirmed: the audit names it
            return True
        self._recheck_in = RECHECK_FRAMES - 1
        return False

    @property
    def matched_score(self) -> float:
        """The score of the match that confirmed: the floored one in a noisy room, else the raw one."""
        return self.floored_score if self.in_noise else self.score

    def _room(self, levels: list[float]) -> float | None:
        """The room's loud moments (dBFS) before the match began, if at least ROOM_MIN_FRAMES of it were heard."""
        before = levels[:-self._span]
        return float(np.percentile(before, ROOM_PERCENTILE)) if len(before) >= ROOM_MIN_FRAMES else None

    def _noisy(self) -> bool:
        """The room's loud moments before the phrase came within NOISY_ROOM_DB of its loudest frame."""
        levels = list(self._levels)
        room = self._room(levels)
        return room is not None and room >= max(levels[-self._span:]) - NOISY_ROOM_DB

    def _ended(self) -> bool:
        """The talker has stopped: the newest frames are far below the phrase's loudest, at the room's floor, or
        no louder than the room was before the phrase."""
        levels = list(self._levels)  # only when the content already matches: not on every frame
        peak, floor = max(levels[-self._span:]), max(min(levels), FLOOR_DBFS)
        quiet = max(peak - END_DROP_DB, floor + FLOOR_MARGIN_DB)
        room = self._room(levels)
        if room is not None:
            quiet = max(quiet, min(room + ROOM_MARGIN_DB, peak - ROOM_DROP_DB))
        return all(level <= quiet for level in levels[-END_QUIET_FRAMES:])

    def _compare(self) -> voiceprint.VoiceVerdict:
        heard = self.heard.snapshot(self._scratch)
        try:
            return voiceprint.compare(voiceprint.Voiceprint.of(heard), self.enrolment.voiceprints,
                                      self.enrolment.cohort)
        finally:
            self._scratch.fill(0)


def embed(samples: np.ndarray, features, floor: float | None = None) -> np.ndarray:
    """The embedding stream of some audio (one 96-float row per 80 ms frame), from a fresh start.

    Args:
        samples: 16 kHz mono int16.
        features: a `wake.FeatureExtractor`; it is wiped before and after.
        floor: if given, floored embeddings (see PHRASE_FLOOR).
    """
    features.wipe()
    usable = samples[:len(samples) // FRAME_SAMPLES * FRAME_SAMPLES]
    rows = []
    for frame in usable.reshape(-1, FRAME_SAMPLES):
        features.push(frame)
        rows.append(features.embeddings[-1].copy() if floor is None else features.floored_embedding(floor))
    features.wipe()
    return np.array(rows, np.float32).reshape(-1, 96)
