"""Wake-word detection: openWakeWord's or microWakeWord's models on small fixed buffers.

openWakeWord 0.4.0's `Model` keeps 10 s of raw audio in a Python deque and
copies it to a list every 80 ms; that audio cannot be wiped and costs CPU. Here
the same models (melspectrogram and classifiers on onnxruntime, the embedding
incrementally in `embedding.py`) run on preallocated arrays that `wipe()`
resets. `tests/test_wake.py` proves the scores equal `openwakeword.model.Model`'s.
microWakeWord models run in `micro.py`; both share the trigger rule here.
This module never releases or stores audio.
"""

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from guard import models
from guard.config import WakeModelSettings
from guard.dsp import FRAME_SAMPLES, FRAME_SECONDS, RATE_HZ, level_dbfs
from guard.embedding import HOP_MEL_FRAMES, MEL_BINS, MEL_WINDOW, StreamingEmbedding
from guard.errors import ModelError
from guard.micro import ROWS_PER_FRAME, MicroClassifier, MicroFeatures

log = logging.getLogger(__name__)

MEL_CONTEXT_SAMPLES = 480  # 3 hops of 160 samples the melspectrogram needs before each frame
EMBEDDING_DIM = 96
WARMUP_FRAMES = 5  # openWakeWord reports 0 for its first 5 frames while buffers fill
VAD_CHUNK_SAMPLES = 640  # 40 ms: openWakeWord's Silero step
VAD_LOOKBACK = slice(-7, -4)  # VAD frames 320-560 ms back are the ones that cover a just-finished word
REST_AFTER_FRAMES = 25  # 2 s of quiet before the models rest: a wake score has decayed long before
# frames replayed through the features when sound returns, more than each engine's features remember:
# openWakeWord's embeddings span 2.3 s; the microWakeWord frontend's noise estimate fades over seconds
# (exact after 9.6 s). Only the newest of them, what each model remembers, also go through the models.
REPLAY_FRAMES = {"openwakeword": 40, "micro": 120}
REST_BANDS_HZ = np.geomspace(250, 5000, 9)  # speech's own bands: a word too quiet to raise the level rises here
REST_RISE_DB = 10.0  # a band this far over the room's floor wakes the models (room noise: under 9; a wake word
#   micro hears at 0.25 dB over a -70 dBFS room's level: 13 or more). While they rest it is looked at on every other
#   frame: a word rises for several frames, and the replay takes back the one in between
FLOOR_RISE_DB, FLOOR_FALL_DB = 0.1, 1.0  # per frame at least: it follows a quieter room within 2 s, a louder slowly
FLOOR_LEARN_FRAMES = 62  # 5 s: the models do not rest before the floor has been learned
FLOOR_START_DB = 150.0  # over the loudest band a frame can hold: the floor starts above any room
OPENWAKEWORD_THRESHOLD = 0.5  # openWakeWord's documented default; microWakeWord models publish their own
SECOND_OPINION_FROM = 0.5  # a micro score this high that falls short of its cutoff asks openWakeWord's model
SECOND_OPINION_AGREES = 0.7  # its score that makes the wake: at 0.5 a near-phrase more woke alexa (bench/eval.py)
SECOND_OPINION_FRAMES = 40  # 3.2 s heard afresh when asked: openWakeWord's embeddings span 2.3 s, then warm-up
AGREE_FRAMES = 5  # openWakeWord's peak comes up to 3 frames before micro's (micro averages 5 frames)


class RoomFloor:
    """The room's level in speech's bands, followed frame by frame: a word, however quiet, rises over it.

    Holds one level per band (the room's, never a frame's audio).
    """

    def __init__(self) -> None:
        self._starts = np.searchsorted(np.fft.rfftfreq(FRAME_SAMPLES, 1 / RATE_HZ), REST_BANDS_HZ)
        self._window = np.hanning(FRAME_SAMPLES)
        self.floor = np.full(len(REST_BANDS_HZ) - 1, FLOOR_START_DB)  # from above: falling is fast, rising slow
        self._frames = 0

    def rises(self, frame: np.ndarray) -> bool:
        """True when `frame` rises REST_RISE_DB over the floor in some band, or the floor is still being learned."""
        learning = self._frames < FLOOR_LEARN_FRAMES
        self._frames += 1
        if not frame.any():  # digital silence says nothing about the room (a file's lead-in, a mic starting up)
            return learning
        spectrum = np.fft.rfft(frame * self._window)
        power = spectrum.real * spectrum.real + spectrum.imag * spectrum.imag
        excess = 10 * np.log10(np.add.reduceat(power, self._starts)[:-1] + 1e-3) - self.floor
        rises = learning or bool(excess.max() >= REST_RISE_DB)
        # up slowly; down at least FLOOR_FALL_DB and a quarter of the gap: a room turned quiet is followed in 2 s
        self.floor += np.where(excess > 0, FLOOR_RISE_DB, np.minimum(-FLOOR_FALL_DB, excess / 4))
        return rises


@dataclass(frozen=True)
class Detection:
    """A wake word heard: which model, its score and threshold, and when its frame ended (s from stream start)."""

    model: str
    score: float
    end_seconds: float
    threshold: float
    second_opinion: float | None = None  # openWakeWord's score that agreed, when micro's fell short

    def on_record(self) -> dict[str, str | float]:
        """What of it the wake record and event carry (scores to 4 places)."""
        second = {} if self.second_opinion is None else {"second_opinion": round(self.second_opinion, 4)}
        return {"model": self.model, "score": round(self.score, 4), "threshold": self.threshold, **second}


class FeatureExtractor:
    """Audio frames in, openWakeWord embeddings (96 floats per 80 ms) out, in fixed buffers.

    Args:
        history_frames: embeddings kept, at least the longest classifier input (16-34).
    """

    def __init__(self, history_frames: int) -> None:
        self._melspec = models.open_session(models.resolve("melspectrogram"))
        embedding_file = models.resolve("embedding")
        models.verify(embedding_file)
        self._embed = StreamingEmbedding(embedding_file.path)
        self._raw = np.zeros((1, MEL_CONTEXT_SAMPLES + FRAME_SAMPLES), np.float32)
        self._mel = np.ones((MEL_WINDOW, MEL_BINS), np.float32)
        self._initial = self._silence_embeddings(history_frames)
        self.embeddings = self._initial.copy()
        self._raw_filled = 0
        self._whole: ort.InferenceSession | None = None  # the embedding model in one piece, opened when first asked
        self._floored = np.zeros((1, MEL_WINDOW, MEL_BINS, 1), np.float32)

    def _silence_embeddings(self, count: int) -> np.ndarray:
        """openWakeWord starts from the embeddings of 10 s of silence; so must we, to score alike."""
        spec = self._melspec.run(None, {"input": np.zeros((1, 10 * RATE_HZ), np.float32)})[0]
        spec = spec.reshape(-1, MEL_BINS) / 10 + 2
        ends = [i + MEL_WINDOW for i in range(0, len(spec), HOP_MEL_FRAMES) if i + MEL_WINDOW <= len(spec)][-count:]
        if len(ends) < count:
            raise ModelError(f"a classifier wants {count} embedding frames; at most {len(ends)} are kept")
        silence = np.stack([self._embed(spec[end - MEL_WINDOW:end], HOP_MEL_FRAMES) for end in ends])
        self._embed.wipe()
        return silence

    def push(self, frame: np.ndarray) -> None:
        """Add one 80 ms int16 frame and compute its embedding."""
        self._raw[0, :MEL_CONTEXT_SAMPLES] = self._raw[0, FRAME_SAMPLES:]
        self._raw[0, MEL_CONTEXT_SAMPLES:] = frame
        self._raw_filled = min(self._raw_filled + FRAME_SAMPLES, self._raw.shape[1])
        audio = self._raw[:, self._raw.shape[1] - self._raw_filled:]
        spec = self._melspec.run(None, {"input": audio})[0].reshape(-1, MEL_BINS)
        n = len(spec)
        self._mel[:-n] = self._mel[n:]
        self._mel[-n:] = spec / 10 + 2  # openWakeWord's scaling towards Google's TF features
        self.embeddings[:-1] = self.embeddings[1:]
        self.embeddings[-1] = self._embed(self._mel, shifted_by=n)

    def floored_embedding(self, below: float) -> np.ndarray:
        """The newest window's embedding with every mel value raised to `below` (in 10 dB) under the window's
        loudest: noise under the speech then looks the same as a quiet room (see confirm.PHRASE_FLOOR)."""
        if self._whole is None:
            self._whole = models.open_session(models.resolve("embedding"))
        np.maximum(self._mel, self._mel.max() - below, out=self._floored[0, :, :, 0])
        try:
            return self._whole.run(None, {"input_1": self._floored})[0].reshape(-1)
        finally:
            self._floored.fill(0)

    def holds_audio(self) -> bool:
        return bool(self._raw.any())

    def window(self, count: int) -> np.ndarray:
        """The newest `count` embeddings as a [1, count, 96] classifier input (a view)."""
        return self.embeddings[None, len(self.embeddings) - count:]

    def wipe(self) -> None:
        """Forget all audio and what was derived from it; back to the start state."""
        self._raw.fill(0)
        self._raw_filled = 0
        self._mel.fill(1)
        self._embed.wipe()
        np.copyto(self.embeddings, self._initial)


class VoiceGate:
    """Silero VAD as openWakeWord uses it: a wake counts only if speech was heard just before."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._session = models.open_session(models.resolve("silero_vad"))
        self._rate = np.array(RATE_HZ, np.int64)
        self._chunk = np.zeros((1, VAD_CHUNK_SAMPLES), np.float32)
        self.wipe()

    def push(self, frame: np.ndarray) -> None:
        total = 0.0
        for start in range(0, FRAME_SAMPLES, VAD_CHUNK_SAMPLES):
            np.divide(frame[start:start + VAD_CHUNK_SAMPLES], 32767, out=self._chunk[0])
            out, self._h, self._c = self._session.run(
                None, {"input": self._chunk, "h": self._h, "c": self._c, "sr": self._rate})
            total += float(out[0][0])
        self._history[:-1] = self._history[1:]
        self._history[-1] = total / (FRAME_SAMPLES // VAD_CHUNK_SAMPLES)
        self._seen += 1

    def speech_heard(self) -> bool:
        heard = self._history[len(self._history) - min(self._seen, len(self._history)):]
        recent = heard[VAD_LOOKBACK]
        return len(recent) > 0 and float(recent.max()) >= self.threshold

    def wipe(self) -> None:
        self._h = np.zeros((2, 1, 64), np.float32)
        self._c = np.zeros((2, 1, 64), np.float32)
        self._chunk.fill(0)
        self._history = np.zeros(7, np.float32)
        self._seen = 0


class OnnxClassifier:
    """One openWakeWord classifier over the shared embeddings; 0 during warm-up, like openWakeWord."""

    default_threshold = OPENWAKEWORD_THRESHOLD
    memory_frames = 0  # its input is the embeddings window; it keeps nothing between frames

    def __init__(self, model_file: models.ModelFile, features: FeatureExtractor | None) -> None:
        self.name = model_file.name
        self._session = models.open_session(model_file)
        inputs = self._session.get_inputs()
        shape = inputs[0].shape
        if len(inputs) != 1 or len(shape) != 3 or shape[2] != EMBEDDING_DIM or not isinstance(shape[1], int):
            raise ModelError(f"{model_file.path}: not an openWakeWord classifier "
                             f"(input shape {shape}, expected [1, frames, {EMBEDDING_DIM}])")
        self.input_frames = shape[1]
        self._input_name = inputs[0].name
        self.features = features
        self.wipe()

    def score(self) -> float:
        out = self._session.run(None, {self._input_name: self.features.window(self.input_frames)})[0]
        self._frames_seen += 1
        return float(out.reshape(-1)[0]) if self._frames_seen > WARMUP_FRAMES else 0.0

    def wipe(self) -> None:
        self._frames_seen = 0


class SecondOpinion:
    """openWakeWord's model of the same word, asked only when a micro score peaks short of micro's cutoff.

    A word that noise pulls under micro's cutoff is still a wake if a model trained apart hears it too.
    Asked, it hears the last 3.2 s afresh (tens of milliseconds), so a word micro hears itself never pays for it.

    Args:
        model_file: openWakeWord's classifier for the word.
        threshold: micro's cutoff for the word: a score that reaches it needs no second opinion.
    """

    def __init__(self, model_file: models.ModelFile, threshold: float) -> None:
        self.classifier = OnnxClassifier(model_file, None)
        self.features = FeatureExtractor(self.classifier.input_frames)
        self.classifier.features = self.features
        self.threshold = threshold
        self._open_for = 0  # frames the episode stays open: AGREE_FRAMES after micro's score fell under 0.5
        self._episode = 0  # frames since micro's score reached SECOND_OPINION_FROM
        self._peak = self._best = 0.0  # micro's highest in the episode; openWakeWord's once asked
        self.asked = False

    def hear(self, micro_score: float, newest: Callable[[int], Iterable[np.ndarray]]) -> float:
        """openWakeWord's best score within AGREE_FRAMES of the episode once micro's score has peaked under the
        cutoff, else 0. An episode opens at a micro score of SECOND_OPINION_FROM and closes AGREE_FRAMES after
        it fell below; `newest(n)`: the last n frames, oldest first."""
        if self._open_for == 0 and micro_score < SECOND_OPINION_FROM:
            return 0.0
        self._episode += 1
        self._peak = max(self._peak, micro_score)
        self._open_for = AGREE_FRAMES if micro_score >= SECOND_OPINION_FROM else self._open_for - 1
        past_peak = micro_score < self._peak < self.threshold
        if past_peak and not self.asked:
            heard = [self._score(frame) for frame in newest(SECOND_OPINION_FRAMES)]
            self._best = max(heard[-(self._episode + AGREE_FRAMES - 1):])
            self.asked = True
        elif self.asked:
            self._best = max([self._best] + [self._score(frame) for frame in newest(1)])
        best = self._best if past_peak else 0.0
        if self._open_for == 0:
            self.wipe()
        return best

    def close(self) -> None:
        """The models rest: an open episode ends, and what was heard for it with it."""
        if self._open_for:
            self.wipe()

    def _score(self, frame: np.ndarray) -> float:
        self.features.push(frame)
        return self.classifier.score()

    def holds_audio(self) -> bool:
        """Whether it was asked in the open episode (its features hold what it heard) or a sample is left."""
        return self.asked or self.features.holds_audio()

    def wipe(self) -> None:
        if self.asked:
            self.features.wipe()
            self.classifier.wipe()
        self._open_for = self._episode = 0
        self._peak = self._best = 0.0
        self.asked = False


class WakeWord:
    """One classifier and its trigger rule (threshold, patience, refractory period)."""

    def __init__(self, settings: WakeModelSettings, classifier: OnnxClassifier | MicroClassifier) -> None:
        self.settings = settings
        self.classifier = classifier
        self.second: SecondOpinion | None = None  # openWakeWord's, for a micro word that asks for it
        self.name = classifier.name
        self.threshold = settings.threshold if settings.threshold is not None else classifier.default_threshold
        self._refractory_frames = round(settings.refractory_seconds / FRAME_SECONDS)
        self.reset()

    def reset(self) -> None:
        self.frames_seen = 0
        self._over = 0
        self._quiet_until = 0
        self.score = 0.0
        self.agreed = 0.0
        self.classifier.wipe()
        if self.second is not None:
            self.second.wipe()

    def score_frame(self, newest: Callable[[int], Iterable[np.ndarray]] | None = None) -> float:
        """Score the newest frame's features; None for `newest`: a replayed frame, counted while resting."""
        self.score = self.classifier.score()
        self.frames_seen += 0 if newest is None else 1
        heard = self.second.hear(self.score, newest) if self.second is not None and newest is not None else 0.0
        self.agreed = heard if heard >= SECOND_OPINION_AGREES else 0.0
        self._over = self._over + 1 if self.score >= self.threshold or self.agreed else 0
        return self.score

    @property
    def replay_frames(self) -> int:
        """Replayed frames to score after a rest so the next live frame scores and counts as if always on."""
        return self.classifier.memory_frames + self.settings.patience_frames - 1

    def rest(self) -> None:
        """A quiet frame the models skip: time goes on, nothing scores."""
        self.frames_seen += 1
        self.score = 0.0
        self.agreed = 0.0
        self._over = 0
        if self.second is not None:
            self.second.close()

    def triggered(self, voice_heard: bool) -> bool:
        """Whether the frame just scored is a wake, honouring patience and the refractory period."""
        now = self.frames_seen
        if not voice_heard or now <= self._quiet_until or self._over < self.settings.patience_frames:
            return False
        self._quiet_until = now + self._refractory_frames
        return True


def _second_opinion(word: "WakeWord", models_dir: Path | None) -> SecondOpinion | None:
    """openWakeWord's model of a micro word, where the settings ask for it (config checks that one exists)."""
    if word.settings.engine != "micro" or not word.settings.second_opinion:
        return None
    return SecondOpinion(models.resolve(word.name, models_dir), word.threshold)


class WakeDetector:
    """Listens to 80 ms frames for any of the configured wake words.

        detector = WakeDetector([WakeModelSettings("alexa")])
        for frame in source.frames():
            for detection in detector.process(frame): ...

    Args:
        wake_words: the models and their trigger rules.
        vad_threshold: Silero speech probability a wake needs just before it (0 disables, 0-1).
        models_dir: where a user's own `.onnx` models live.
        embeddings: compute openWakeWord's embeddings even if no wake word needs them
            (spoken confirmation listens to them).
        rest_below_dbfs: after 2 s of frames quieter than this, in which nothing rose over the room's
            floor in speech's bands (RoomFloor), the models rest; the first frame that is louder or
            rises replays the skipped frames (up to 3.2 s, 9.6 s with microWakeWord) through the
            features and what each model remembers through it first, so no wake is lost or late.
            None: never rest.
    """

    def __init__(self, wake_words: Sequence[WakeModelSettings], vad_threshold: float = 0.0,
                 models_dir: Path | None = None, embeddings: bool = False,
                 rest_below_dbfs: float | None = None) -> None:
        if not wake_words:
            raise ModelError("no wake-word model configured; set [wake] models")
        onnx = {w.name: OnnxClassifier(models.resolve(w.name, models_dir), None)
                for w in wake_words if w.engine == "openwakeword"}
        history = max([c.input_frames for c in onnx.values()] + [1])
        self.features = FeatureExtractor(history) if onnx or embeddings else None
        self.micro_features = MicroFeatures() if len(onnx) < len(wake_words) else None
        self.words = []
        for w in wake_words:
            if w.engine == "openwakeword":
                classifier = onnx[w.name]
                classifier.features = self.features
            else:
                classifier = MicroClassifier(models.resolve_micro(w.name), self.micro_features)
            word = WakeWord(w, classifier)
            word.second = _second_opinion(word, models_dir)
            self.words.append(word)
        self.vad = VoiceGate(vad_threshold) if vad_threshold > 0 else None
        self.rest_below_dbfs = rest_below_dbfs
        self.room = RoomFloor() if rest_below_dbfs is not None else None
        self.active: frozenset[str] | None = None  # the wake words that wake; None: every configured one
        replay = max([REPLAY_FRAMES[w.engine] for w in wake_words] + [w.replay_frames for w in self.words])
        asks = any(w.second is not None for w in self.words)
        kept = max(replay if rest_below_dbfs is not None else 0, SECOND_OPINION_FRAMES if asks else 0)
        self._recent = np.zeros((kept, FRAME_SAMPLES), np.int16)  # the frames a replay may need
        self.frames_seen = 0
        self._quiet_run = self._skipped = 0
        self.resting = False

    def process(self, frame: np.ndarray, keep_awake: bool = False, frame_dbfs: float | None = None
                ) -> list[Detection]:
        """Score one 80 ms int16 frame (1280 samples); returns the wakes it completes.

        keep_awake: the caller needs fresh features on every frame (spoken confirmation listening).
        frame_dbfs: the frame's level, if the caller has measured it already.
        """
        if self.room is not None and frame_dbfs is None:
            frame_dbfs = level_dbfs(frame)
        quiet = self.room is not None and frame_dbfs < self.rest_below_dbfs and (
            self.resting and self.frames_seen % 2 == 1 or not self.room.rises(frame))  # resting: every other frame
        self._quiet_run = self._quiet_run + 1 if quiet else 0
        if self.resting and (keep_awake or not quiet):
            self._replay()
        if len(self._recent):
            self._recent[self.frames_seen % len(self._recent)] = frame
        self.frames_seen += 1
        if self.resting:
            self._skipped += 1
            if self.micro_features is not None:
                self.micro_features.rest()
            for word in self.words:
                word.rest()
            return []
        self._push(frame)
        detections = [d for d in self._score() if self.active is None or d.model in self.active]
        self.resting = self._quiet_run >= REST_AFTER_FRAMES and not keep_awake
        self._skipped = 0
        return detections

    def _push(self, frame: np.ndarray, replay: bool = False, keep_micro_rows: bool = True) -> None:
        if self.features is not None:
            self.features.push(frame)
        if self.micro_features is not None:
            self.micro_features.push(frame, replay, keep_micro_rows)
        if self.vad is not None:
            self.vad.push(frame)

    def _score(self) -> list[Detection]:
        voice = self.vad is None or self.vad.speech_heard()
        end = self.frames_seen * FRAME_SECONDS
        detections = []
        for word in self.words:
            score = word.score_frame(self._newest)
            if word.triggered(voice):
                second = word.agreed if score < word.threshold else None  # the wake is the second opinion's
                detections.append(Detection(word.name, score, end, word.threshold, second))
                log.debug("wake %s score=%.3f second opinion=%.3f at %.2fs", word.name, score, word.agreed, end)
        return detections

    def _newest(self, count: int) -> Iterable[np.ndarray]:
        """The last `count` frames kept, oldest first (fewer at the stream's start)."""
        for back in range(min(count, self.frames_seen, len(self._recent)), 0, -1):
            yield self._recent[(self.frames_seen - back) % len(self._recent)]

    def _replay(self) -> None:
        """Run the kept skipped frames through the features and the newest of them through each model,
        as many as it remembers, so features and models are where they would have been."""
        count = min(self._skipped, len(self._recent))
        scored = [(word, min(word.replay_frames, count)) for word in self.words]
        micro_frames = 0  # the newest replayed frames a microWakeWord model sees
        for word, frames in scored:
            if isinstance(word.classifier, MicroClassifier):
                word.classifier.resume(self.micro_features.rows_seen - ROWS_PER_FRAME * frames)
                micro_frames = max(micro_frames, frames)
        for back, frame in zip(range(count, 0, -1), self._newest(count), strict=True):
            self._push(frame, replay=True, keep_micro_rows=back <= micro_frames)
            for word, frames in scored:
                if back <= frames:
                    word.score_frame()
        self.resting = False

    def holds_audio(self) -> bool:
        """Whether the frames kept for a replay or a second opinion, or what one heard, hold any sample."""
        return bool(self._recent.any()) or any(w.second.holds_audio() for w in self.words if w.second is not None)

    def scores(self) -> dict[str, float]:
        """The last frame's score per model (VAD not applied)."""
        return {w.name: w.score for w in self.words}

    def wipe(self) -> None:
        """Reset to the start state: no audio-derived data left, as after a fresh load."""
        if self.features is not None:
            self.features.wipe()
        if self.micro_features is not None:
            self.micro_features.wipe()
        if self.vad is not None:
            self.vad.wipe()
        for word in self.words:
            word.reset()
        self._recent.fill(0)
        self.frames_seen = 0
        self._quiet_run = self._skipped = 0
        self.resting = False
