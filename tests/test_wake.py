"""Wake detection with the real openWakeWord models on espeak-ng speech."""

import json
import os
import subprocess
import sys

import numpy as np
import openwakeword
import pytest
import speech
from openwakeword.model import Model

from guard import cli
from guard.config import WakeModelSettings
from guard.dsp import FRAME_SAMPLES
from guard.wake import WakeDetector


def test_wake_words_in_several_voices_are_detected_where_they_end(wake_clips, capsys):
    code = cli.main(["scan", "--json", "--engine", "openwakeword", "--model", "alexa", "--model", "hey_jarvis",
                     *[str(c[0]) for c in wake_clips]])
    out = capsys.readouterr().out
    assert code == 0
    found = {}
    for line in out.splitlines():
        hit = json.loads(line)
        assert set(hit) == {"file", "model", "score", "end"}
        found.setdefault(hit["file"], []).append(hit)
    for path, model, voice, end in wake_clips:
        hits = found.get(str(path), [])
        assert [h["model"] for h in hits] == [model], f"{voice} saying {model}: {hits}"
        assert abs(hits[0]["end"] - end) <= 0.5, f"{voice} {model}: end {hits[0]['end']} vs {end:.2f}"
        assert 0.5 <= hits[0]["score"] <= 1


def _reference_and_ours(audio: np.ndarray, vad_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    names = ["alexa", "hey_jarvis", "hey_mycroft"]
    paths = [openwakeword.models[n]["model_path"] for n in names]
    reference = Model(wakeword_model_paths=paths, vad_threshold=vad_threshold)
    ours = WakeDetector([WakeModelSettings(n) for n in names], vad_threshold=vad_threshold)
    theirs, mine = [], []
    for start in range(0, len(audio) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        frame = audio[start:start + FRAME_SAMPLES]
        scores = reference.predict(frame)
        theirs.append([scores[f"{n}_v0.1"] for n in names])
        ours.process(frame)
        voiced = ours.vad is None or ours.vad.speech_heard()
        mine.append([ours.scores()[n] if voiced else 0.0 for n in names])
    return np.array(theirs), np.array(mine)


@pytest.mark.parametrize("vad_threshold", [0.0, 0.5])
def test_scores_equal_openwakeword_model_frame_by_frame(vad_threshold):
    audio = np.concatenate([speech.say("good morning, how are you"), speech.silence(0.8),
                            speech.say("Alexa"), speech.silence(0.6),
                            speech.say("hey Jarvis", "en+f4"), speech.silence(0.6),
                            speech.say("hey Mycroft"), speech.silence(1.0)])
    theirs, mine = _reference_and_ours(audio, vad_threshold)
    assert theirs.shape == mine.shape and len(theirs) > 50
    assert np.abs(theirs - mine).max() <= 1e-3
    assert theirs[:, 0].max() > 0.5 and theirs[:, 1].max() > 0.5, "the audio must exercise real detections"


def test_ten_minutes_of_ordinary_speech_wake_nobody(tmp_path, capsys):
    samples = speech.ordinary_speech(600)
    assert len(samples) / speech.RATE_HZ >= 600
    wav = speech.write_wav(tmp_path / "prose.wav", samples)
    code = cli.main(["scan", "--json", "--model", "alexa", "--model", "hey_jarvis", str(wav)])
    assert code == 0
    assert capsys.readouterr().out == ""


def _detections(samples: np.ndarray, **settings) -> list:
    detector = WakeDetector([WakeModelSettings("alexa", **settings)])
    frames = samples[:len(samples) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    return [d for frame in frames for d in detector.process(frame)]


def test_refractory_period_merges_a_repeated_wake_word():
    twice = np.concatenate([speech.silence(0.5), speech.say("Alexa"), speech.silence(0.2),
                            speech.say("Alexa"), speech.silence(1.0)])
    assert len(_detections(twice, refractory_seconds=0.0)) > len(_detections(twice, refractory_seconds=3.0)) == 1


def test_patience_needs_consecutive_frames(alexa_samples):
    assert len(_detections(alexa_samples, patience_frames=1)) == 1
    assert _detections(alexa_samples, patience_frames=25) == []


def test_wipe_returns_the_detector_to_its_start_state(alexa_samples):
    frames = alexa_samples[:len(alexa_samples) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    used = WakeDetector([WakeModelSettings("alexa")], vad_threshold=0.5)
    for frame in frames:
        used.process(frame)
    used.wipe()
    fresh = WakeDetector([WakeModelSettings("alexa")], vad_threshold=0.5)
    assert np.array_equal(used.features.embeddings, fresh.features.embeddings)
    assert not used.features._raw.any()
    for frame in frames:
        assert used.process(frame) == fresh.process(frame)
        assert used.scores() == fresh.scores()


def test_a_default_guard_runs_no_idle_worker_thread():
    """numpy's OpenBLAS started a worker per core at the second opinion's first matrix product and left it
    spinning: 0.8 ms of CPU per audio second for nothing. Importing guard keeps it to one thread."""
    probe = ("import os, guard; from guard import config; from guard.wake import WakeDetector; "
             "WakeDetector(config.Config().wake.settings()); print(len(os.listdir('/proc/self/task')))")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    threads = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert threads.stdout.strip() == "1"
