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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from guard.audio import FRAME_SAMPLES, RATE_HZ
from guard.errors import UsageError

EMBEDDING_WINDOW_FRAMES = 10  # an embedding sees 775 ms = 10 frames of 80 ms; skip these after pending starts
NEGATIVES = Path(__file__).resolve().parent.parent / "models" / "confirm-negatives.npz"
MIN_TAKES = 3
VOICED_DBFS = -40.0  # a frame this loud counts as speech in a take
CLIPPED_LEVEL = 32700
MAX_TAKE_SECONDS = 4.0


class EnrollError(UsageError):
    """A take or a set of takes that cannot make a reliable confirmation phrase."""


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)).astype(np.float32)


def _frame_dbfs(samples: np.ndarray) -> np.ndarray:
    frames = samples[:len(samples) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES).astype(np.float64)
    rms = np.sqrt(np.mean(frames ** 2, axis=1)) / 32768
    return 20 * np.log10(np.maximum(rms, 1e-9))


def take_problem(samples: np.ndarray) -> str | None:
    """Why a recorded take cannot be used (silence, clipping, length), or None."""
    if len(samples) < FRAME_SAMPLES:
        return "too short"
    voiced = np.nonzero(_frame_dbfs(samples) >= VOICED_DBFS)[0]
    if len(voiced) < 4:
        return "no speech heard (is the mic muted or too far away?)"
    if (voiced[-1] - voiced[0] + 1) * FRAME_SAMPLES / RATE_HZ > MAX_TAKE_SECONDS:
        return f"the phrase is longer than {MAX_TAKE_SECONDS:g} s; use a short phrase and say it once"
    if np.mean(np.abs(samples.astype(np.int32)) >= CLIPPED_LEVEL) > 0.001:
        return "clipped (too loud); step back or lower the mic gain"
    return None


def voiced_frames(samples: np.ndarray) -> slice:
    """The embedding frames of a take that cover its speech: from its first voiced frame to just after the last."""
    voiced = np.nonzero(_frame_dbfs(samples) >= VOICED_DBFS)[0]
    return slice(int(voiced[0]), int(voiced[-1]) + 4)


class Matcher:
    """Streaming subsequence DTW of one template against incoming embeddings.

    Steps per incoming frame: stay on a template frame, advance one, or skip one
    (speech from half to double the template's pace). The score is the mean
    cosine distance along the best path ending at the template's last frame.
    """

    def __init__(self, template: np.ndarray) -> None:
        self.template = _unit(template)
        self.reset()

    def reset(self) -> None:
        n = len(self.template)
        self._cost = np.full(n, np.inf)
        self._length = np.ones(n)

    def push(self, embedding: np.ndarray) -> float:
        """Add one embedding; returns the best score of a match ending now (lower is closer)."""
        local = 1.0 - self.template @ (embedding / max(float(np.linalg.norm(embedding)), 1e-9))
        cost, length = self._cost, self._length
        candidates = np.full((3, len(cost)), np.inf)
        lengths = np.ones((3, len(cost)))
        candidates[0], lengths[0] = cost, length
        candidates[1, 1:], lengths[1, 1:] = cost[:-1], length[:-1]
        candidates[2, 2:], lengths[2, 2:] = cost[:-2], length[:-2]
        mean = candidates / lengths
        best = np.argmin(mean, axis=0)
        picked = np.arange(len(cost))
        new_cost = candidates[best, picked] + local
        new_length = lengths[best, picked] + 1
        new_cost[0], new_length[0] = local[0], 1.0  # a match may start at any frame
        self._cost, self._length = new_cost, new_length
        return float(new_cost[-1] / new_length[-1])


def best_score(template: np.ndarray, stream: np.ndarray) -> float:
    """The closest any stretch of `stream` comes to `template`."""
    matcher = Matcher(template)
    return min(matcher.push(e) for e in stream)


@dataclass(frozen=True)
class Enrolment:
    """The enrolled phrase: one embedding sequence per take, and the threshold calibrated for them."""

    templates: tuple[np.ndarray, ...]
    threshold: float
    positive_max: float
    negative_min: float
    created: str

    def save(self, path: Path) -> None:
        """Write atomically, mode 0600: embeddings and numbers only."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, threshold=self.threshold, positive_max=self.positive_max, negative_min=self.negative_min,
                     created=np.array(self.created), **{f"take{i}": t for i, t in enumerate(self.templates)})
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path) -> "Enrolment":
        """Read and check a template file; any problem raises EnrollError naming the file."""
        try:
            with np.load(path, allow_pickle=False) as data:
                takes = sorted((k for k in data.files if k.startswith("take")), key=lambda k: int(k[4:]))
                templates = tuple(np.asarray(data[k], np.float32) for k in takes)
                values = (float(data["threshold"]), float(data["positive_max"]), float(data["negative_min"]))
                created = str(data["created"])
        except FileNotFoundError:
            raise EnrollError(f"{path}: no confirmation phrase enrolled; run: guard enroll confirm") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise EnrollError(f"{path}: damaged confirmation templates ({e}); enrol again") from None
        if len(templates) < MIN_TAKES or any(t.ndim != 2 or t.shape[1] != 96 or len(t) < 3 for t in templates) \
                or not all(math.isfinite(v) and v > 0 for v in values):
            raise EnrollError(f"{path}: damaged confirmation templates (wrong shapes or values); enrol again")
        return cls(templates, *values, created)


POSITIVE_SIDE = 0.3  # where the threshold sits between the takes (0) and ordinary prose (1)


def calibrate(takes: list[np.ndarray], negatives: list[np.ndarray]) -> Enrolment:
    """Threshold between how far the takes are from each other and how close other speech gets.

    It sits nearer the takes (POSITIVE_SIDE): speech that shares a word with the
    phrase comes closer than the shipped prose does, and a missed confirmation
    only means pressing the button, while a false one would send audio.

    Args:
        takes: embedding sequences of the user's takes (at least 3).
        negatives: embedding streams of other speech.
    """
    if len(takes) < MIN_TAKES:
        raise EnrollError(f"{len(takes)} take(s); at least {MIN_TAKES} are needed")
    positive = max(min(best_score(other, take) for other in takes if other is not take) for take in takes)
    negative = min(best_score(t, stream) for t in takes for stream in negatives)
    if positive >= negative * 0.8:
        raise EnrollError(f"the takes differ from each other (score {positive:.3f}) nearly as much as ordinary "
                          f"speech does ({negative:.3f}); say the same phrase each time, or choose a longer one")
    threshold = positive + POSITIVE_SIDE * (negative - positive)
    return Enrolment(tuple(takes), threshold, positive, negative, datetime.now(UTC).isoformat(timespec="seconds"))


def load_negatives(path: Path = NEGATIVES) -> list[np.ndarray]:
    """Embedding streams of synthesized ordinary speech shipped for calibration."""
    with np.load(path, allow_pickle=False) as data:
        return [np.asarray(data[k], np.float32) for k in sorted(data.files)]


class SpokenConfirmation:
    """Listens, while pending, for the enrolled phrase in audio heard after pending began.

    Args:
        enrolment: the templates and threshold.
    """

    def __init__(self, enrolment: Enrolment) -> None:
        self.enrolment = enrolment
        self.matchers = [Matcher(t) for t in enrolment.templates]
        self.reset()

    def reset(self) -> None:
        """A new pending window: forget everything heard before it."""
        for m in self.matchers:
            m.reset()
        self._skip = EMBEDDING_WINDOW_FRAMES
        self.score = math.inf

    def push(self, embedding: np.ndarray) -> bool:
        """One frame's embedding; True when the phrase has just been heard."""
        if self._skip > 0:  # this embedding's window still reaches back before pending began
            self._skip -= 1
            return False
        self.score = min(m.push(embedding) for m in self.matchers)
        return self.score <= self.enrolment.threshold


def embed(samples: np.ndarray, features) -> np.ndarray:
    """The embedding stream of some audio (one 96-float row per 80 ms frame), from a fresh start.

    Args:
        samples: 16 kHz mono int16.
        features: a `wake.FeatureExtractor`; it is wiped before and after.
    """
    features.wipe()
    usable = samples[:len(samples) // FRAME_SAMPLES * FRAME_SAMPLES]
    rows = []
    for frame in usable.reshape(-1, FRAME_SAMPLES):
        features.push(frame)
        rows.append(features.embeddings[-1].copy())
    features.wipe()
    return np.array(rows, np.float32).reshape(-1, 96)
