"""Spoken confirmation: enrolment, fail-closed loading, the gate's use of it, and a fast evaluation subset."""

import os
import re
import signal
import stat
import subprocess
import wave

import numpy as np
import pytest
import speech
from assist import HomeAssistant
from conftest import GUARD, alsa_home, run_guard, run_guard_on_a_terminal, until
from mqtt_broker import free_port
from test_gate import PRE_ROLL_SECONDS
from wyoming.audio import AudioChunk, AudioStart, AudioStop

from guard import audit, confirm, confusables, voiceprint
from guard.audit import AuditLog
from guard.config import GateConfig
from guard.daemon import AudioClock
from guard.dsp import FRAME_SAMPLES, FRAME_SECONDS, level_dbfs
from guard.gate import Gate
from guard.sinks import DirectorySink
from guard.vocabulary import State
from guard.wake import FeatureExtractor

PHRASE = "please send it now, guard"
VOICE = "en-us+m2"  # in neither confusables.CALIBRATION_VOICES nor COHORT_VOICES, like a real person
OTHER_VOICES = ("en-us+Alex", "en-us+Mike", "en+m3", "en-gb-x-rp", "en-us", "en-029+f4")


def pending_window(audio: np.ndarray) -> np.ndarray:
    """What a pending window hears: a second of room tone, then `audio`, then a pause."""
    return np.concatenate([speech.silence(1.0), audio, speech.silence(0.5)])


@pytest.fixture(scope="module")
def take_wavs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("takes")
    return [speech.write_wav(folder / f"take{s}.wav", pending_window(speech.say(PHRASE, VOICE, speed_wpm=s)))
            for s in (150, 165, 180)]


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory, take_wavs):
    state = tmp_path_factory.mktemp("state")
    result, terminal = run_guard_on_a_terminal("--config", "/dev/null", "enroll", "confirm", "--phrase", PHRASE,
                                               "--from", *map(str, take_wavs),
                                               env={**os.environ, "STATE_DIRECTORY": str(state)})
    assert result.returncode == 0, terminal
    (state.parent / "enroll-terminal.txt").write_text(terminal)
    return state / "confirm.npz"


def test_enrolment_shows_its_progress_on_a_terminal(enrolled):
    terminal = (enrolled.parent.parent / "enroll-terminal.txt").read_text()
    shown = [int(p) for p in re.findall(r"calibrating: (\d+)% \(\d+/\d+ sound-alikes\)", terminal)]
    assert len(shown) >= 2 and shown == sorted(shown), terminal
    assert terminal.endswith("\x1b[K"), "the progress line is cleared at the end"


def test_enrolment_stores_features_only_privately(enrolled):
    assert stat.S_IMODE(enrolled.stat().st_mode) == 0o600
    with np.load(enrolled, allow_pickle=False) as data:
        takes = [data[k] for k in data.files if k.startswith("take")]
        assert len(takes) == 3 and all(t.ndim == 2 and t.shape[1] == 96 for t in takes)
        voices = [data[k] for k in data.files if k.startswith("voice")]
        assert len(voices) == 3 and all(v.shape[1] == voiceprint.CEPSTRA for v in voices)
        assert all(data[f"detail{i}"].shape[1] == 2 * voiceprint.CEPSTRA for i in range(3))
        assert len([k for k in data.files if k.startswith("cohort")]) == len(confusables.COHORT_VOICES)
        assert 0 < float(data["positive_max"]) < float(data["threshold"]) < float(data["negative_min"])
        assert float(data["speaker_positive_max"]) < float(data["speaker_threshold"]) <= confirm.MAX_SPEAKER_RATIO
        assert str(data["phrase"]) == PHRASE
        assert all(data[k].dtype != np.int16 for k in data.files)  # features and numbers, never samples


def test_list_and_remove(enrolled, tmp_path):
    env = {**os.environ, "STATE_DIRECTORY": str(enrolled.parent)}
    listed = run_guard("--config", "/dev/null", "enroll", "--list", env=env)
    assert listed.returncode == 0 and "3 takes enrolled" in listed.stdout
    assert "in a noisy room, floored threshold" in listed.stdout
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
    result = run_guard("--config", "/dev/null", "enroll", "confirm", "--phrase", PHRASE, "--from",
                       str(take_wavs[0]), str(bad), str(take_wavs[1]), env=env)
    assert result.returncode == 2
    assert result.stderr.startswith(f"guard: error: {bad}: {needle}") and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "confirm.npz").exists()


def test_two_takes_are_not_enough(tmp_path, take_wavs):
    result = run_guard("--config", "/dev/null", "enroll", "confirm", "--phrase", PHRASE, "--from",
                       *map(str, take_wavs[:2]))
    assert result.returncode == 2 and "at least 3 takes" in result.stderr


@pytest.mark.parametrize("content", [b"not an npz at all", b"PK\x03\x04 truncated zip"])
def test_damaged_templates_fail_closed(tmp_path, content):
    path = tmp_path / "confirm.npz"
    path.write_bytes(content)
    with pytest.raises(confirm.EnrollError, match="damaged confirmation templates"):
        confirm.Enrolment.load(path)


def _gate(tmp_path, detector, enrolment, accepts, settings=None):
    detector.wipe()
    events, clock = [], AudioClock()
    sink_dir = tmp_path / "sink"
    sink_dir.mkdir()
    listener = confirm.SpokenConfirmation(enrolment) if enrolment else None
    gate = Gate(settings or GateConfig(), detector, PRE_ROLL_SECONDS, [DirectorySink("box", sink_dir, "test")],
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
    feed(np.concatenate([speech.say(PHRASE, VOICE, speed_wpm=170, pitch=40), speech.silence(0.5)]))
    released = [e for e in events if e.kind == "released"]
    assert len(released) == 1 and released[0].confirmed_by == "voice"
    assert released[0].match_score <= confirm.Enrolment.load(enrolled).threshold
    assert released[0].speaker_score <= confirm.Enrolment.load(enrolled).speaker_threshold
    assert gate.confirmation.heard.is_zero()
    assert len(list(sink.iterdir())) == 1
    record = [r for r in audit.read(tmp_path / "audit.jsonl") if r["event"] == "released"][0]
    assert record["confirmed_by"] == "voice"
    assert record["match_score"] == round(gate.confirmation.score, 4)
    assert record["speaker_score"] == round(gate.confirmation.speaker_score, 3)


def test_voice_releases_beside_people_talking_and_the_audit_says_so(tmp_path, detector, enrolled, rooms):
    """Beside people talking 20 dB under it the phrase confirms on its floored match; the record says which."""
    gate, feed, events, sink = _gate(tmp_path, detector, confirm.Enrolment.load(enrolled), ("button", "voice"))
    feed(np.concatenate([speech.silence(1.0), speech.say("Alexa"), speech.silence(0.3),
                         speech.say("what time is it"), speech.silence(1.5)]))
    assert gate.state is State.PENDING
    noise, below = rooms["people"]
    feed(_in_room(speech.say(PHRASE, VOICE, speed_wpm=170, pitch=40), noise, below, 3))
    released = [e for e in events if e.kind == "released"]
    assert len(released) == 1 and released[0].confirmed_by == "voice" and released[0].matched_in_noise is True
    assert released[0].match_score <= confirm.Enrolment.load(enrolled).floored_threshold
    record = [r for r in audit.read(tmp_path / "audit.jsonl") if r["event"] == "released"][0]
    assert record["matched_in_noise"] is True and record["match_score"] == released[0].match_score
    assert not gate.detector.features._floored.any()  # the floored mel window is zeroed after each use


def test_an_enrolment_made_before_floored_takes_still_confirms_in_a_quiet_room(enrolled, tmp_path):
    """Files from older guards have no floored takes: they load, and the raw match alone confirms."""
    with np.load(enrolled, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if not k.startswith("floored")}
    older = tmp_path / "older.npz"
    with older.open("wb") as f:
        np.savez(f, **arrays)
    older.chmod(0o600)
    enrolment = confirm.Enrolment.load(older)
    assert enrolment.floored == () and enrolment.floored_threshold == 0.0
    assert Listener(enrolment).confirms(pending_window(speech.say(PHRASE, VOICE, speed_wpm=170, pitch=40)))


def test_invariant1_the_matcher_gets_the_embedding_of_the_newest_frame(tmp_path, detector, enrolled):
    """An older embedding would reach 80 ms further back, into the request, when the window opens."""
    gate, feed, events, sink = _gate(tmp_path, detector, confirm.Enrolment.load(enrolled), ("button", "voice"))
    request = np.concatenate([speech.silence(1.0), speech.say("Alexa"), speech.silence(0.3),
                              speech.say("what time is it"), speech.silence(1.5)])
    feed(request)
    assert gate.state is State.PENDING
    matched, push = [], gate.confirmation.matchers[0].push

    def watched(embedding):
        matched.append(embedding.copy())
        return push(embedding)
    gate.confirmation.matchers[0].push = watched
    later = speech.ordinary_speech(2.0)
    feed(later)
    heard = np.concatenate([a[:len(a) // FRAME_SAMPLES * FRAME_SAMPLES] for a in (request, later)])  # as fed
    expected = confirm.embed(heard, FeatureExtractor(16))[-len(matched):]
    assert len(matched) > 10 and np.allclose(matched, expected, atol=1e-4)


def test_the_phrase_inside_the_utterance_never_confirms(tmp_path, detector, enrolled):
    gate, feed, events, sink = _gate(tmp_path, detector, confirm.Enrolment.load(enrolled), ("button", "voice"))
    feed(np.concatenate([speech.silence(1.0), speech.say("Alexa"), speech.silence(0.2),
                         speech.say(PHRASE, VOICE), speech.silence(12.0)]))
    assert [e.kind for e in events] == ["wake", "pending", "discarded"] and list(sink.iterdir()) == []


def test_button_only_sinks_never_take_voice(tmp_path, detector, enrolled):
    gate, feed, events, sink = _gate(tmp_path, detector, confirm.Enrolment.load(enrolled), ("button",))
    assert gate.confirmation is None
    feed(np.concatenate([speech.silence(1.0), speech.say("Alexa"), speech.silence(0.3),
                         speech.say("what time is it"), speech.silence(1.5),
                         speech.say(PHRASE, VOICE), speech.silence(11.0)]))
    assert "released" not in [e.kind for e in events] and list(sink.iterdir()) == []


def _run_with_templates(tmp_path, templates, wav):
    """`guard run` on a file, with a voice sink and the given template file."""
    (tmp_path / "guard.toml").write_text(
        f'[wake]\nmodels = ["alexa"]\n[gate]\npending_timeout_seconds = 2\n[sinks.box]\npath = "{tmp_path}"\n'
        f'confirm = ["button", "voice"]\n[confirm]\ntemplates_path = "{templates}"\n'
        f'[audit]\npath = "{tmp_path / "audit.jsonl"}"\n')
    return run_guard("--config", str(tmp_path / "guard.toml"), "run", "--source", str(wav), "--gpio", "mock",
                     "--fast")


def test_missing_templates_leave_the_button_working(tmp_path, request_wav_for_run):
    result = _run_with_templates(tmp_path, tmp_path / "none.npz", request_wav_for_run)
    assert result.returncode == 0
    assert "spoken confirmation off: " in result.stderr and "the button still works" in result.stderr
    assert "spoken confirmation: off" in result.stderr


@pytest.fixture(scope="module")
def request_wav_for_run(tmp_path_factory):
    audio = np.concatenate([speech.silence(1.0), speech.say("Alexa"), speech.silence(0.3),
                            speech.say("what time is it"), speech.silence(1.5)])
    return speech.write_wav(tmp_path_factory.mktemp("run") / "req.wav", audio)


class Listener:
    """Fresh pending windows through SpokenConfirmation, as the gate drives it."""

    def __init__(self, enrolment: confirm.Enrolment) -> None:
        self.listener = confirm.SpokenConfirmation(enrolment)
        self.features = FeatureExtractor(16)

    def confirms(self, audio: np.ndarray) -> bool:
        self.listener.reset()
        self.features.wipe()
        for frame in audio[:len(audio) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES):
            self.features.push(frame)
            if self.listener.listen(self.features, frame, level_dbfs(frame)):
                return True
        return False


@pytest.fixture(scope="module")
def listener(enrolled):
    return Listener(confirm.Enrolment.load(enrolled))


def test_enrolled_voice_confirms_at_other_speeds_pitches_and_in_room_noise(listener):
    clean = [(130, 30), (150, 60), (190, 45), (210, 70), (140, 50), (175, 35)]
    accepted = sum(listener.confirms(pending_window(speech.say(PHRASE, VOICE, speed_wpm=s, pitch=p)))
                   for s, p in clean)
    assert accepted >= 5, f"{accepted}/{len(clean)}"
    noisy = [(140, 40), (170, 55), (190, 35)]
    accepted = sum(listener.confirms(speech.with_room_noise(pending_window(
        speech.say(PHRASE, VOICE, speed_wpm=s, pitch=p)), 10, seed=s)) for s, p in noisy)
    assert accepted >= 2, f"{accepted}/{len(noisy)} at 10 dB SNR"


@pytest.fixture(scope="module")
def rooms():
    """A fan 15 dB under the phrase and three people talking 20 dB under it (issue 27's rooms)."""
    return {"fan": (speech.fan(40.0, np.random.default_rng(5)), 15.0), "people": (speech.babble(40.0), 20.0)}


def _in_room(audio: np.ndarray, noise: np.ndarray, below_db: float, take: int) -> np.ndarray:
    """A pending window (two seconds of the room, then `audio`) heard over the room."""
    window = np.concatenate([speech.silence(2.0), audio, speech.silence(1.0)])
    return speech.in_noise(window, noise[take * 3 * 16000:], below_db)


def test_the_enrolled_phrase_confirms_beside_a_fan_and_people_talking(listener, rooms):
    """Issue 27: noise under the phrase filled its quiet parts and the raw embedding followed it; the phrase
    confirmed in 20 of 24 trials beside a fan 15 dB under, in 1 of 24 beside people 20 dB under."""
    said = [(130, 35), (150, 60), (170, 45), (190, 70), (210, 30), (160, 50)]
    for name, (noise, below) in rooms.items():
        accepted = sum(listener.confirms(_in_room(speech.say(PHRASE, VOICE, speed_wpm=s, pitch=p), noise, below, i))
                       for i, (s, p) in enumerate(said))
        assert accepted >= 5, f"{name}: {accepted}/{len(said)}"


@pytest.mark.parametrize("text", ["please send it now, garden", "please send it now, guarded",
                                  "please spend it now, god", "please send it now, card", "send it now, guard"])
def test_invariant1_a_near_phrase_beside_people_talking_does_not_confirm(listener, rooms, text):
    """The room rule for the phrase's end (quiet as the room was before it) must not let "guard-en" through."""
    for name, (noise, below) in rooms.items():
        for i, speed in enumerate((140, 180)):
            assert not listener.confirms(_in_room(speech.say(text, VOICE, speed_wpm=speed), noise, below, i)), \
                (name, speed)


@pytest.mark.parametrize("speed", [110, 120])
def test_invariant1_a_slow_phrase_is_not_a_noisy_room_of_its_own(listener, speed):
    """The room is what came before the match's start: a phrase said slower than the takes must not count its
    own first words as a noisy room (that let "guard it" confirm on the floored match in a quiet room)."""
    for text in ("please send it now, guard it", "please send it now, guarded", "please send it now, guards"):
        assert not listener.confirms(pending_window(speech.say(text, VOICE, speed_wpm=speed))), text


def test_invariant1_the_exact_phrase_by_another_voice_beside_people_talking_does_not_confirm(listener, rooms):
    noise, below = rooms["people"]
    for i, voice in enumerate(OTHER_VOICES):
        assert not listener.confirms(_in_room(speech.say(PHRASE, voice), noise, below, i)), voice


@pytest.mark.parametrize("voice", OTHER_VOICES)
def test_invariant1_the_exact_phrase_by_another_voice_does_not_confirm(listener, voice):
    assert not listener.confirms(pending_window(speech.say(PHRASE, voice)))


@pytest.mark.parametrize("text", ["please send it now", "send it now, guard", "it now, guard", "please send it",
                                  "now, guard"])
def test_invariant1_a_partial_phrase_does_not_confirm(listener, text):
    assert not listener.confirms(pending_window(speech.say(text, VOICE)))


@pytest.mark.parametrize("text", ["please spend it now, god", "police end it now, guard", "please send it now, guys",
                                  "please lend it now, guard", "please send it out, guard", "please send it now, card",
                                  "please send it now, garden", "please send it now, guarded",
                                  "please send it now, guards"])
def test_invariant1_a_near_phrase_does_not_confirm_even_in_the_enrolled_voice(listener, text):
    assert not listener.confirms(pending_window(speech.say(text, VOICE)))


def test_invariant1_a_minimal_pair_at_the_start_does_not_confirm_in_the_enrolled_voice():
    """"card" for "guard": the coarse match and the speaker check cannot tell them apart; the every-part check
    must (it did not when it judged the phrase in sixths)."""
    phrase, voice = "guard, release the recording", "en+f3"
    takes = [pending_window(speech.say(phrase, voice, speed_wpm=s)) for s in (150, 165, 180)]
    listening = Listener(confirm.calibrate(phrase, takes, FeatureExtractor(16)))
    for speed in (140, 160, 200):
        assert not listening.confirms(pending_window(speech.say("card, release the recording", voice,
                                                                  speed_wpm=speed))), speed
    assert sum(listening.confirms(pending_window(speech.say(phrase, voice, speed_wpm=s))) for s in (140, 200)) == 2


def test_invariant1_ordinary_speech_does_not_confirm(listener):
    others = ["please pass the salt and the pepper", "we should send it by train instead", "right, okay then",
              "not now, I am busy with the dishes", "the guard dog barked at the mailman", "yes, send it now"]
    for i, text in enumerate(others + speech.paragraphs()[:10]):
        assert not listener.confirms(pending_window(speech.say(text, (VOICE, *OTHER_VOICES)[i % 7]))), text


def test_invariant1_the_first_embeddings_of_a_pending_window_are_never_matched(enrolled):
    """An embedding sees 775 ms (10 frames); the first 10 of a window reach back into the utterance."""
    enrolment = confirm.Enrolment.load(enrolled)
    spoken = confirm.SpokenConfirmation(enrolment)
    template = enrolment.templates[0]
    silence = np.zeros(FRAME_SAMPLES, np.int16)
    spoken.reset()
    assert not any(spoken.push(e, silence) for e in template)  # the phrase, right as pending begins
    assert spoken.score > enrolment.threshold  # its first 10 frames were never matched: only the tail counts
    spoken.reset()
    for e in np.concatenate([np.repeat(template[:1], 10, axis=0), template]):
        spoken.push(e, silence)
    assert spoken.score <= enrolment.threshold  # the same embeddings, heard after the first 10, do match


def test_invariant1_a_phrase_ending_as_the_utterance_is_cut_at_its_maximum_length_never_confirms(tmp_path,
                                                                                               detector, enrolled):
    wake = np.concatenate([speech.silence(1.0), speech.say("Alexa"), speech.silence(0.1)])
    said = speech.say(PHRASE, VOICE)
    settings = GateConfig(max_utterance_seconds=round((len(said) + 2 * FRAME_SAMPLES) / 16000, 2))
    gate, feed, events, sink = _gate(tmp_path, detector, confirm.Enrolment.load(enrolled), ("button", "voice"),
                                     settings)
    feed(np.concatenate([wake, said, speech.silence(12.0)]))
    kinds = [e.kind for e in events]
    assert kinds == ["wake", "pending", "discarded"], kinds
    held = PRE_ROLL_SECONDS + settings.max_utterance_seconds  # full; then cut after the phrase's voiced end
    assert held - 0.5 <= events[1].duration_seconds <= held + 0.01
    assert list(sink.iterdir()) == []


def test_reset_and_wipe_zero_the_audio_kept_for_the_speaker_check(enrolled):
    spoken = confirm.SpokenConfirmation(confirm.Enrolment.load(enrolled))
    frame = speech.say(PHRASE, VOICE)[:FRAME_SAMPLES]
    spoken.push(np.ones(96, np.float32), frame)
    assert not spoken.heard.is_zero()
    spoken.reset()
    assert spoken.heard.is_zero()
    spoken.push(np.ones(96, np.float32), frame)
    spoken.wipe()
    assert spoken.heard.is_zero()


@pytest.mark.parametrize("phrase", ["right", "yes", "send it", "do it"])
def test_short_common_phrases_are_refused(tmp_path, take_wavs, phrase):
    result = run_guard("--config", "/dev/null", "enroll", "confirm", "--phrase", phrase, "--from",
                       *map(str, take_wavs), env={**os.environ, "STATE_DIRECTORY": str(tmp_path)})
    assert result.returncode == 2
    assert "syllable" in result.stderr and "choose a phrase of at least 4 syllables" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "confirm.npz").exists()


def test_takes_of_a_short_word_are_refused():
    takes = [pending_window(speech.say("yes", VOICE, speed_wpm=s)) for s in (150, 165, 180)]
    with pytest.raises(confirm.EnrollError, match="at least 0.8 s to say"):
        confirm.calibrate("okay then, send my request", takes, FeatureExtractor(16))


def test_enrolling_needs_the_phrase_text(tmp_path, take_wavs):
    result = run_guard("--config", "/dev/null", "enroll", "confirm", "--from", *map(str, take_wavs),
                       env={**os.environ, "STATE_DIRECTORY": str(tmp_path)})
    assert result.returncode == 2 and '--phrase "okay then, send my request"' in result.stderr


def _copy(enrolled, tmp_path, mode=0o600):
    copy = tmp_path / "confirm.npz"
    copy.write_bytes(enrolled.read_bytes())
    copy.chmod(mode)
    return copy


@pytest.mark.parametrize("mode", [0o620, 0o606, 0o666])
def test_templates_others_can_write_are_refused(enrolled, tmp_path, mode):
    with pytest.raises(confirm.EnrollError, match=f"mode 0{mode:o}: others can rewrite it; fix: sudo chmod go-w"):
        confirm.Enrolment.load(_copy(enrolled, tmp_path, mode))


def test_templates_owned_by_someone_else_are_refused(enrolled, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another owner (CI runs as root)")
    copy = _copy(enrolled, tmp_path)
    os.chown(copy, 65534, 65534)
    with pytest.raises(confirm.EnrollError, match="owned by nobody"):
        confirm.Enrolment.load(copy)


def _edited(enrolled, path, key, value):
    """A copy of the templates with one number changed by hand, mode 0600."""
    with np.load(enrolled, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[key] = np.array(value)
    with path.open("wb") as f:
        np.savez(f, **arrays)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(("key", "value"), [("threshold", 5.0), ("speaker_threshold", 9.0),
                                            ("unevenness_threshold", 40.0), ("threshold", 0.0001),
                                            ("floored_threshold", 5.0), ("floored_threshold", 0.0001)])
def test_hand_edited_thresholds_are_refused(enrolled, tmp_path, key, value):
    with pytest.raises(confirm.EnrollError, match="which calibration never produces"):
        confirm.Enrolment.load(_edited(enrolled, tmp_path / "confirm.npz", key, value))


def test_an_edited_template_file_turns_voice_off_and_the_button_still_works(tmp_path, enrolled, request_wav_for_run):
    edited = _edited(enrolled, tmp_path / "edited.npz", "threshold", 10.0)  # silence would "confirm"
    result = _run_with_templates(tmp_path, edited, request_wav_for_run)
    assert result.returncode == 0
    assert "spoken confirmation off: " in result.stderr and "which calibration never produces" in result.stderr
    assert not list(tmp_path.glob("*.wav"))


def test_a_voice_sink_without_an_led_is_refused(tmp_path, request_wav_for_run):
    (tmp_path / "guard.toml").write_text(f'[sinks.box]\npath = "{tmp_path}"\nconfirm = ["button", "voice"]\n'
                                         f'[audit]\npath = "{tmp_path / "audit.jsonl"}"\n')
    result = run_guard("--config", str(tmp_path / "guard.toml"), "run", "--source", str(request_wav_for_run),
                       "--gpio", "none", "--fast")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("guard: error: [sinks.box]")
    assert "[sinks.box] accepts spoken confirmation, but --gpio none has no LED" in result.stderr


def test_voice_alone_is_refused(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('[sinks.box]\npath = "/tmp"\nconfirm = ["voice"]\n')
    result = run_guard("--config", str(path), "config", "check")
    assert result.returncode == 2 and "voice alone is refused" in result.stderr


def test_sink_confirm_values_are_checked(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('[sinks.box]\npath = "/tmp"\nconfirm = ["voice", "wink"]\n')
    result = run_guard("--config", str(path), "config", "check")
    assert result.returncode == 2 and 'must be ["button"] or ["button", "voice"]' in result.stderr


def test_live_enrolment_through_portaudio_retries_a_silent_take(tmp_path):
    from conftest import alsa_home
    window = int(3.5 * 16000)

    def padded(audio):
        return np.concatenate([audio, speech.silence((window - len(audio)) / 16000)])[:window]

    takes = [speech.silence(3.5)] + [padded(np.concatenate([speech.silence(0.4), speech.say(PHRASE, VOICE,
                                                                                             speed_wpm=s)]))
                                      for s in (150, 165, 180)]
    raw = tmp_path / "mic.raw"
    raw.write_bytes(np.concatenate(takes).astype("<i2").tobytes())
    (tmp_path / "guard.toml").write_text('[audio]\ndevice = "guardtest"\n')
    env = {**alsa_home(tmp_path / "home", raw), "STATE_DIRECTORY": str(tmp_path / "state"),
           "GUARD_CONFIG": str(tmp_path / "guard.toml")}
    result = run_guard("enroll", "confirm", "--phrase", PHRASE, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("say your confirmation phrase now") == 4
    assert "that take is not usable: no speech heard" in result.stderr and result.stderr.count("  ok") == 3
    assert (tmp_path / "state" / "confirm.npz").exists()


def test_invariant1_voice_consent_releases_only_to_sinks_that_accept_voice(tmp_path, detector, enrolled):
    detector.wipe()
    clock = AudioClock()
    folders = {name: tmp_path / name for name in ("voicebox", "buttonbox")}
    for folder in folders.values():
        folder.mkdir()
    events = []
    gate = Gate(GateConfig(), detector, PRE_ROLL_SECONDS,
                [DirectorySink(name, folder, "test") for name, folder in folders.items()],
                AuditLog(tmp_path / "audit.jsonl", "test"),
                accepts={"voicebox": ("button", "voice"), "buttonbox": ("button",)},
                confirmation=confirm.SpokenConfirmation(confirm.Enrolment.load(enrolled)), publish=events.append,
                clock=clock)
    audio = np.concatenate([speech.silence(1.0), speech.say("Alexa"), speech.silence(0.3),
                            speech.say("what time is it"), speech.silence(1.5),
                            speech.say(PHRASE, VOICE, speed_wpm=165), speech.silence(0.5)])
    for frame in audio[:len(audio) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES):
        gate.feed(frame.copy())
        clock.seconds += FRAME_SECONDS
        gate.tick()
    released = [e for e in events if e.kind == "released"]
    assert [e.sink for e in released] == ["voicebox"] and released[0].confirmed_by == "voice"
    assert len(list(folders["voicebox"].iterdir())) == 1 and list(folders["buttonbox"].iterdir()) == []
    releasing, = [r for r in audit.read(tmp_path / "audit.jsonl") if r["event"] == "releasing"]
    assert releasing["sink"] == "voicebox"


def test_enrolling_as_root_for_the_service_leaves_the_templates_to_the_service_user(enrolled, tmp_path):
    """`sudo guard enroll` writes into the service's state folder; the service (its owner) must be able to read it."""
    if os.geteuid() != 0:
        pytest.skip("needs root, as `sudo guard enroll` has (CI runs as root)")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)  # the service user's folder, as StateDirectory= makes it
    confirm.Enrolment.load(enrolled).save(state / "confirm.npz")
    info = (state / "confirm.npz").stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (65534, 65534, 0o600)


def test_invariant1_the_enrolled_phrase_sent_to_the_speaker_while_pending_is_never_played(tmp_path, enrolled,
                                                                                        request_wav_for_run):
    """Nothing the guard plays can confirm a release: while a spoken confirmation is awaited, Home Assistant's
    audio (here the owner's own phrase, in the enrolled voice) is not played; once pending has ended it is."""
    played = tmp_path / "played.raw"
    env = alsa_home(tmp_path / "home", tmp_path / "none.raw")
    (tmp_path / "home" / ".asoundrc").write_text(
        f'pcm.speaker {{\n  type file\n  slave.pcm "null"\n  file "{played}"\n  format "raw"\n}}\n')
    port, log = free_port(), tmp_path / "audit.jsonl"
    (tmp_path / "box").mkdir()
    (tmp_path / "guard.toml").write_text(
        f'[wake]\nmodels = ["alexa"]\n[gate]\npending_timeout_seconds = 4\n[audio]\noutput_device = "speaker"\n'
        f'[sinks.box]\npath = "{tmp_path / "box"}"\nconfirm = ["button", "voice"]\n'
        f'[confirm]\ntemplates_path = "{enrolled}"\n[audit]\npath = "{log}"\n'
        f'[wyoming]\nuri = "tcp://127.0.0.1:{port}"\nzeroconf = false\n')
    with wave.open(str(request_wav_for_run)) as w:  # the request, then quiet that outlasts the test
        request = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    source = speech.write_wav(tmp_path / "request.wav", np.concatenate([request, speech.silence(60)]))
    guard = subprocess.Popen([str(GUARD), "--config", str(tmp_path / "guard.toml"), "run", "--source",
                              str(source), "--gpio", "mock"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    phrase = speech.say(PHRASE, VOICE)

    def said(kind: str) -> bool:
        return log.exists() and any(r["event"] == kind for r in audit.read(log))

    def play_through(home_assistant: HomeAssistant) -> None:
        before = home_assistant.types().count("played")
        pieces = [phrase[i:i + 1024] for i in range(0, len(phrase), 1024)]
        home_assistant.send(AudioStart(rate=16000, width=2, channels=1).event(),
                            *[AudioChunk(rate=16000, width=2, channels=1, audio=p.tobytes()).event() for p in pieces],
                            AudioStop().event())
        assert until(lambda: home_assistant.types().count("played") > before, 20)
    try:
        home_assistant = HomeAssistant(port)
        assert until(lambda: said("pending"), 60), guard.stderr
        play_through(home_assistant)
        assert not played.exists() or not np.frombuffer(played.read_bytes(), "<i2").any(), "nothing played"
        assert until(lambda: said("discarded"), 20)

        def played_after_pending() -> bool:  # the hold lifts just after the discard is on the record: on a busy
            play_through(home_assistant)  # machine an answer in between is still held (the safe side); send again
            return played.exists() and np.frombuffer(played.read_bytes(), "<i2").any()
        assert until(played_after_pending, 30)
        home_assistant.close()
    finally:
        guard.send_signal(signal.SIGTERM)
        _, stderr = guard.communicate(timeout=30)
    assert guard.returncode == 0, stderr
    assert not said("releasing") and list((tmp_path / "box").iterdir()) == []
    assert np.array_equal(np.trim_zeros(np.frombuffer(played.read_bytes(), "<i2")), np.trim_zeros(phrase)), \
        "after pending the same audio plays: the hold, not a broken speaker, kept it silent"
    refused = [r for r in audit.read(log) if r["event"] == "refused"]
    assert refused and all("a spoken confirmation is awaited" in r["reason"] for r in refused)
