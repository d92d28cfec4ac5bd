"""Spoken confirmation: enrolment, fail-closed loading, the gate's use of it, and a fast evaluation subset."""

import os
import stat

import numpy as np
import pytest
import speech
from conftest import run_guard
from test_gate import PRE_ROLL_SECONDS, Clock

from guard import audit, confirm
from guard.audio import FRAME_SAMPLES, FRAME_SECONDS
from guard.audit import AuditLog
from guard.config import GateConfig
from guard.gate import Gate, State
from guard.sinks import DirectorySink
from guard.wake import FeatureExtractor, WakeDetector, WakeModelSettings

PHRASE = "please send it now, guard"


@pytest.fixture(scope="module")
def take_wavs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("takes")
    return [speech.write_wav(folder / f"take{s}.wav", np.concatenate(
        [speech.silence(0.5), speech.say(PHRASE, "en-us", speed_wpm=s), speech.silence(0.5)])) for s in (150, 165, 180)]


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory, take_wavs):
    state = tmp_path_factory.mktemp("state")
    result = run_guard("--config", "/dev/null", "enroll", "confirm", "--from", *map(str, take_wavs),
                       env={**os.environ, "STATE_DIRECTORY": str(state)})
    assert result.returncode == 0, result.stderr
    return state / "confirm.npz"


def test_enrolment_stores_embeddings_only_privately(enrolled):
    assert stat.S_IMODE(enrolled.stat().st_mode) == 0o600
    with np.load(enrolled, allow_pickle=False) as data:
        takes = [data[k] for k in data.files if k.startswith("take")]
        assert len(takes) == 3 and all(t.ndim == 2 and t.shape[1] == 96 for t in takes)
        assert 0 < float(data["positive_max"]) < float(data["threshold"]) < float(data["negative_min"])


def test_list_and_remove(enrolled, tmp_path):
    env = {**os.environ, "STATE_DIRECTORY": str(enrolled.parent)}
    listed = run_guard("--config", "/dev/null", "enroll", "--list", env=env)
    assert listed.returncode == 0 and "3 takes enrolled" in listed.stdout
    copy = tmp_path / "confirm.npz"
    copy.write_bytes(enrolled.read_bytes())
    env["STATE_DIRECTORY"] = str(tmp_path)
    assert run_guard("--config", "/dev/null", "enroll", "--remove", env=env).returncode == 0
    assert not copy.exists()
    gone = run_guard("--config", "/dev/null", "enroll", "--list", env=env)
    assert gone.returncode == 2 and "no confirmation phrase enrolled; run: guard enroll confirm" in gone.stderr


@pytest.mark.parametrize(("make", "needle"), [
    (lambda: speech.silence(2.0), "no speech heard"),
    (lambda: np.clip(speech.say(PHRASE).astype(np.int32) * 40, -32768, 32767).astype(np.int16), "clipped"),
])
def test_bad_takes_are_named_and_nothing_is_enrolled(tmp_path, take_wavs, make, needle):
    bad = speech.write_wav(tmp_path / "bad.wav", make())
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path)}
    result = run_guard("--config", "/dev/null", "enroll", "confirm", "--from", str(take_wavs[0]), str(bad),
                       str(take_wavs[1]), env=env)
    assert result.returncode == 2
    assert result.stderr.startswith(f"guard: error: {bad}: {needle}") and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "confirm.npz").exists()


def test_two_takes_are_not_enough(tmp_path, take_wavs):
    result = run_guard("--config", "/dev/null", "enroll", "confirm", "--from", *map(str, take_wavs[:2]))
    assert result.returncode == 2 and "at least 3 takes" in result.stderr


@pytest.mark.parametrize("content", [b"not an npz at all", b"PK\x03\x04 truncated zip"])
def test_damaged_templates_fail_closed(tmp_path, content):
    path = tmp_path / "confirm.npz"
    path.write_bytes(content)
    with pytest.raises(confirm.EnrollError, match="damaged confirmation templates"):
        confirm.Enrolment.load(path)


@pytest.fixture(scope="module")
def detector():
    return WakeDetector([WakeModelSettings("alexa")])


def _gate(tmp_path, detector, enrolment, accepts):
    detector.wipe()
    events, clock = [], Clock()
    sink_dir = tmp_path / "sink"
    sink_dir.mkdir()
    listener = confirm.SpokenConfirmation(enrolment) if enrolment else None
    gate = Gate(GateConfig(), detector, PRE_ROLL_SECONDS, [DirectorySink("box", sink_dir, "test")],
                AuditLog(tmp_path / "audit.jsonl", "test"), accepts={"box": accepts}, confirmation=listener,
                publish=events.append, clock=clock)

    def feed(audio):
        for frame in audio[:len(audio) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES):
            gate.feed(frame.copy())
            clock.seconds += FRAME_SECONDS
            gate.tick()
    return gate, feed, events, sink_dir


def test_voice_releases_after_pending_and_is_audited(tmp_path, detector, enrolled):
    gate, feed, events, sink = _gate(tmp_path, detector, confirm.Enrolment.load(enrolled), ("button", "voice"))
    feed(np.concatenate([speech.silence(1.0), speech.say("Alexa"), speech.silence(0.3),
                         speech.say("what time is it"), speech.silence(1.5)]))
    assert gate.state is State.PENDING
    feed(np.concatenate([speech.say(PHRASE, "en-us", speed_wpm=170, pitch=40), speech.silence(0.5)]))
    released = [e for e in events if e.kind == "released"]
    assert len(released) == 1 and released[0].confirmed_by == "voice"
    assert released[0].match_score <= confirm.Enrolment.load(enrolled).threshold
    assert len(list(sink.iterdir())) == 1
    record = [r for r in audit.read(tmp_path / "audit.jsonl") if r["event"] == "released"][0]
    assert record["confirmed_by"] == "voice" and "match_score" in record


def test_the_phrase_inside_the_utterance_never_confirms(tmp_path, detector, enrolled):
    gate, feed, events, sink = _gate(tmp_path, detector, confirm.Enrolment.load(enrolled), ("button", "voice"))
    feed(np.concatenate([speech.silence(1.0), speech.say("Alexa"), speech.silence(0.2),
                         speech.say(PHRASE, "en-us"), speech.silence(12.0)]))
    assert [e.kind for e in events] == ["wake", "pending", "discarded"] and list(sink.iterdir()) == []


def test_button_only_sinks_never_take_voice(tmp_path, detector, enrolled):
    gate, feed, events, sink = _gate(tmp_path, detector, confirm.Enrolment.load(enrolled), ("button",))
    assert gate.confirmation is None
    feed(np.concatenate([speech.silence(1.0), speech.say("Alexa"), speech.silence(0.3),
                         speech.say("what time is it"), speech.silence(1.5),
                         speech.say(PHRASE, "en-us"), speech.silence(11.0)]))
    assert "released" not in [e.kind for e in events] and list(sink.iterdir()) == []


def test_missing_templates_leave_the_button_working(tmp_path, request_wav_for_run):
    (tmp_path / "guard.toml").write_text(
        f'[wake]\nmodels = ["alexa"]\n[gate]\npending_timeout_seconds = 1\n[sinks.box]\npath = "{tmp_path}"\n'
        f'confirm = ["button", "voice"]\n[confirm]\ntemplates_path = "{tmp_path / "none.npz"}"\n'
        f'[audit]\npath = "{tmp_path / "audit.jsonl"}"\n')
    result = run_guard("--config", str(tmp_path / "guard.toml"), "run", "--source", str(request_wav_for_run),
                       "--gpio", "mock", "--fast")
    assert result.returncode == 0
    assert "spoken confirmation off: " in result.stderr and "the button still works" in result.stderr
    assert "spoken confirmation: off" in result.stderr


@pytest.fixture(scope="module")
def request_wav_for_run(tmp_path_factory):
    audio = np.concatenate([speech.silence(1.0), speech.say("Alexa"), speech.silence(0.3),
                            speech.say("what time is it"), speech.silence(1.5)])
    return speech.write_wav(tmp_path_factory.mktemp("run") / "req.wav", audio)


def test_fast_evaluation_subset(enrolled):
    """The bench's evaluation in small: other speeds and pitches accepted, other speech never."""
    enrolment = confirm.Enrolment.load(enrolled)
    features = FeatureExtractor(16)
    listener = confirm.SpokenConfirmation(enrolment)

    def confirms(audio) -> bool:
        listener.reset()
        return any(listener.push(e) for e in confirm.embed(audio, features))

    trials = [(130, 30), (150, 60), (190, 45), (210, 70), (140, 50), (175, 35)]
    accepted = sum(confirms(np.concatenate([speech.silence(1.0), speech.say(PHRASE, "en-us", speed_wpm=s, pitch=p),
                                            speech.silence(0.5)])) for s, p in trials)
    assert accepted >= 0.9 * len(trials)
    others = ["please pass the salt and the pepper", "we should send it by train instead",
              "not now, I am busy with the dishes", "the guard dog barked at the mailman"] + speech.paragraphs()[:12]
    for i, text in enumerate(others):
        assert not confirms(np.concatenate([speech.silence(0.5), speech.say(text, speech.VOICES[i % 6])])), text


def test_sink_confirm_values_are_checked(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('[sinks.box]\npath = "/tmp"\nconfirm = ["voice", "wink"]\n')
    result = run_guard("--config", str(path), "config", "check")
    assert result.returncode == 2 and 'must be ["button"], ["voice"] or ["button", "voice"]' in result.stderr


def test_live_enrolment_through_portaudio_retries_a_silent_take(tmp_path):
    from conftest import alsa_home
    window = int(3.5 * 16000)

    def padded(audio):
        return np.concatenate([audio, speech.silence((window - len(audio)) / 16000)])[:window]

    takes = [speech.silence(3.5)] + [padded(np.concatenate([speech.silence(0.4), speech.say(PHRASE, "en-us",
                                                                                             speed_wpm=s)]))
                                      for s in (150, 165, 180)]
    raw = tmp_path / "mic.raw"
    raw.write_bytes(np.concatenate(takes).astype("<i2").tobytes())
    (tmp_path / "guard.toml").write_text('[audio]\ndevice = "guardtest"\n')
    env = {**alsa_home(tmp_path / "home", raw), "STATE_DIRECTORY": str(tmp_path / "state"),
           "GUARD_CONFIG": str(tmp_path / "guard.toml")}
    result = run_guard("enroll", "confirm", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("say your confirmation phrase now") == 4
    assert "that take is not usable: no speech heard" in result.stderr and result.stderr.count("  ok") == 3
    assert (tmp_path / "state" / "confirm.npz").exists()
