"""A release carries only the request: it ends when the talker stops, not when the room goes quiet."""

import dataclasses
import threading
import time
import wave

import eval_rooms
import numpy as np
import pytest
import speech
from conftest import consent_window_open, until

from guard import audit, config
from guard.assembly import assemble
from guard.daemon import RunOptions
from guard.dsp import FRAME_SAMPLES, FRAME_SECONDS, level_dbfs
from guard.endpoint import ANSWER_WAIT_SECONDS, TAIL_FRAMES, EndOfSpeech, Levels, learn

RATE = 16000


@pytest.fixture(scope="module")
def talker() -> np.ndarray:
    return np.concatenate([speech.say("Alexa"), speech.silence(0.3), speech.say("what is the weather like tomorrow")])


@pytest.fixture(scope="module")
def tv() -> np.ndarray:
    return eval_rooms.television(60.0)


def in_the_room(talker, tv, below_db: float, onset: float) -> tuple[np.ndarray, float]:
    """The request with a television `below_db` under it, from the start or from `onset` of the request on; the
    first mix of a few whose wake word the default detector hears (a television 10 dB under hides some)."""
    detector = eval_rooms.default_detector("alexa")
    for seed in range(12):
        audio, said_end = eval_rooms.clip(talker, tv, True, below_db, onset, np.random.default_rng(seed))
        detector.wipe()
        if any(detector.process(frame) for frame in speech.frames(audio)):
            return audio, said_end
    raise AssertionError("no mix whose wake word is heard")


def released_span(audio: np.ndarray, released: np.ndarray) -> tuple[float, float]:
    """Where the released samples lie in what the microphone heard (seconds)."""
    starts = [s for s in range(0, len(audio) - len(released) + 1, FRAME_SAMPLES)
              if np.array_equal(audio[s:s + len(released)], released)]
    assert len(starts) == 1, "a release is one contiguous stretch of what the mic heard"
    return starts[0] / RATE, (starts[0] + len(released)) / RATE


def guard_run(tmp_path, audio: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """`guard run` on a WAV at real-time pace, the button pressed once pending shows: what was released."""
    wav = speech.write_wav(tmp_path / "kitchen.wav", audio)
    (tmp_path / "box").mkdir(mode=0o700)
    base = config.Config()
    cfg = dataclasses.replace(
        base, device=config.DeviceConfig("kitchen"), wake=dataclasses.replace(base.wake, models=("alexa",)),
        gpio=dataclasses.replace(base.gpio, bounce_seconds=0.0),
        audit=config.AuditConfig(str(tmp_path / "audit.jsonl")),
        sinks={"box": config.SinkConfig(type="directory", path=str(tmp_path / "box"))})
    daemon = assemble(cfg, RunOptions(str(wav), "mock"), eval_rooms.default_detector("alexa"))
    loop = threading.Thread(target=daemon.run)
    loop.start()
    try:
        assert until(lambda: consent_window_open(daemon), 30), "pending never showed"
        pin = daemon.pin_factory.pin(cfg.gpio.button_pin)
        pin.drive_low()
        time.sleep(0.1)
        pin.drive_high()
        assert until(lambda: any((tmp_path / "box").glob("*.wav")), 10), "nothing released"
    finally:
        daemon.stop()
        loop.join(10)
    wav_path, = (tmp_path / "box").glob("*.wav")
    with wave.open(str(wav_path)) as w:
        released = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    return released, audit.read(tmp_path / "audit.jsonl")


def test_beside_a_television_10_db_under_the_request_the_release_ends_with_the_request(tmp_path, talker, tv):
    """Once the capture ran to its 10 s maximum here, and a press released 8 s of the programme."""
    audio, said_end = in_the_room(talker, tv, 10, 0.0)
    released, records = guard_run(tmp_path, audio)
    start, end = released_span(audio, released)
    assert said_end <= end < said_end + 1.0, (said_end, end)
    pending = next(r for r in records if r["event"] == "pending")
    assert pending["talker_dbfs"] - pending["room_dbfs"] > 5, "the room was heard in the pre-roll"
    assert pending["duration_seconds"] == round(len(released) / RATE, 2)


def test_a_quiet_room_releases_the_request_and_a_fade_not_a_second_of_silence(tmp_path, talker):
    lead = np.random.default_rng(1).normal(0, speech.QUIET_ROOM, RATE * 2)
    audio = np.concatenate([lead, talker, np.zeros(RATE * 4)]).astype(np.int16)
    said_end = 2 + speech.voiced_end_seconds(talker)
    released, _ = guard_run(tmp_path, audio)
    _, end = released_span(audio, released)
    assert said_end <= end < said_end + 0.5, (said_end, end)


@pytest.mark.parametrize(("below_db", "cut"), [(20, True), (15, True), (6, False)])
def test_background_speech_starting_mid_request(talker, tv, below_db, cut):
    """What docs/rooms.md promises: someone who starts talking mid-request 15 dB or more under the talker is cut
    within 1 s of the request's end; louder, the capture runs on while they talk, up to its maximum (the pending
    record's duration shows it, and the owner may let it time out)."""
    audio, said_end = in_the_room(talker, tv, below_db, 0.5)
    detector = eval_rooms.default_detector("alexa")
    frames = speech.frames(audio)
    woke = next(i for i, frame in enumerate(frames) if detector.process(frame))
    end = EndOfSpeech(1.0, -45.0)
    for frame in frames[:woke + 1]:
        end.hear(level_dbfs(frame))
    first = woke + 1 - 25  # the 2 s pre-roll
    end.start(25 * FRAME_SAMPLES)
    stopped = next((i for i in range(woke + 1, woke + 1 + 125) if end.push(level_dbfs(frames[i]))), None)
    kept_end = (first * FRAME_SAMPLES + end.kept_samples()) / RATE
    if cut:
        assert stopped is not None and said_end <= kept_end < said_end + 1.0, (said_end, kept_end)
    else:
        assert kept_end > said_end + 3, "it runs on while the other person talks (up to the maximum)"


def test_the_talker_and_the_room_are_learned_from_what_was_heard_before_the_wake():
    room, wake = [-41.0 + (i % 5) for i in range(100)], [-21.0 + (i % 3) for i in range(15)]
    levels = learn(room + wake, -45.0)
    assert (levels.room_dbfs, levels.talker_dbfs) == (-37.0, -19.0)  # the 90th percentiles: loud moments
    assert levels.threshold_dbfs == pytest.approx((levels.room_dbfs + levels.talker_dbfs) / 2, abs=0.06)
    quiet = learn([-80.0] * 100 + wake, -60.0)
    assert quiet.threshold_dbfs == quiet.talker_dbfs - 10, "never far under the talker"
    loud = learn(wake * 8, -45.0)
    assert loud.threshold_dbfs == loud.talker_dbfs - 3, "a room as loud as the talker: 3 dB under the talker"
    assert learn([-37.33] * 100 + [-19.02] * 15, -45.0) == Levels(-19.0, -37.3, -28.2), "halfway, in tenths"
    assert learn([-180.0] * 40, -45.0).threshold_dbfs == -45.0, "never under the floor"
    assert learn([], -45.0).threshold_dbfs == -45.0


def test_a_pause_on_the_television_is_not_the_room():
    """The room is learned over 10 s: a 0.5 s pause between two programmes' lines before the wake word does
    not make the room quiet (it once held a capture open for 5.6 s of the programme)."""
    television = [-33.0, -28.0, -30.0, -27.0, -35.0, -29.0] * 20
    pause = [-180.0] * 7
    end = EndOfSpeech(1.0, -45.0)
    for level in television + pause + [-20.0] * 15:
        end.hear(level_dbfs(np.full(FRAME_SAMPLES, 32768 * 10 ** (level / 20) if level > -180 else 0, np.int16)))
    end.start(25 * FRAME_SAMPLES)
    assert end.levels.room_dbfs >= -28.5 and end.levels.threshold_dbfs > -27.0


def _level(dbfs: float) -> float:
    """The level of a steady frame about `dbfs` loud, as measured (int16 samples round it)."""
    return level_dbfs(np.full(FRAME_SAMPLES, round(32768 * 10 ** (dbfs / 20)), np.int16))


def _after_a_wake(room_dbfs: float = -60.0, talker_dbfs: float = -20.0) -> EndOfSpeech:
    """10 s of a room, then a 1.2 s wake word; the pre-roll is 25 frames."""
    end = EndOfSpeech(1.0, -45.0)
    for level in [room_dbfs] * 125 + [talker_dbfs] * 15:
        end.hear(_level(level))
    end.start(25 * FRAME_SAMPLES)
    return end


def _push(end: EndOfSpeech, levels: list[float]) -> int | None:
    """The index of the frame on which the request ended, if it did."""
    for i, level in enumerate(levels):
        if end.push(_level(level)):
            return i
    return None


def test_the_release_keeps_a_240_ms_fade_after_the_talkers_last_frame():
    end = _after_a_wake()
    assert _push(end, [-20.0] * 10 + [-60.0] * 11) is None, "a second may hold one of the talker's frames"
    assert _push(end, [-60.0]) == 0
    assert end.kept_samples() == (25 + 10 + 3) * FRAME_SAMPLES


@pytest.mark.parametrize(("quiet_before", "loud", "stretches"), [(4, 1, True), (5, 1, False), (6, 2, True)])
def test_a_loud_frame_stretches_the_release_only_within_400_ms_of_the_talkers_speech(quiet_before, loud, stretches):
    """A syllable 320 ms after the last one is the talker's, and so are two loud frames in a row; a lone peak
    400 ms later is the room's."""
    end = _after_a_wake()
    _push(end, [-20.0] * 10 + [-60.0] * quiet_before + [-20.0] * loud + [-60.0] * 13)
    talker_end = 10 + quiet_before + loud if stretches else 10
    assert end.kept_samples() == (25 + talker_end + 3) * FRAME_SAMPLES


def test_a_frame_between_the_room_and_the_talker_counts_as_the_talkers_only_above_halfway():
    end = _after_a_wake(room_dbfs=-40.0, talker_dbfs=-20.0)
    assert end.levels.threshold_dbfs == -30.0
    assert _push(end, [-30.5] * 13) == 12, "just under halfway: the room"
    end = _after_a_wake(room_dbfs=-40.0, talker_dbfs=-20.0)
    assert _push(end, [-29.5] * 30) is None, "just over: the talker, still talking"


def test_the_wake_word_is_the_last_1_2_s_and_levels_are_kept_to_a_tenth_of_a_db():
    rising = [-35.3 + 0.97 * i for i in range(15)]  # 15 frames: 1.2 s
    levels = learn([-60.0] * 100 + rising, -45.0)
    assert levels.talker_dbfs == -23.1 and levels.room_dbfs == -60.0  # the 90th percentile is -23.078
    assert learn([], -45.0) == Levels(-180.0, -180.0, -45.0), "nothing heard yet: no talker, no room"


def test_the_room_is_the_10_s_before_the_wake_word_and_no_more():
    end = EndOfSpeech(1.0, -45.0)
    heard = [-30.0] * 23 + [-60.0] * 112 + [-20.0] * 15  # 12 s; the 10 oldest fall out of the 11.2 s kept
    for level in heard:
        end.hear(_level(level))
    end.start(25 * FRAME_SAMPLES)
    kept = [_level(level) for level in heard[-140:-15]]
    assert end.levels.room_dbfs == round(float(np.percentile(kept, 90)), 1) != -60.0


def test_a_lone_loud_frame_right_after_the_wake_word_does_not_stretch_the_release():
    end = _after_a_wake()
    _push(end, [-20.0] + [-60.0] * 13)
    assert end.kept_samples() == (25 + 3) * FRAME_SAMPLES


def test_a_questions_answer_is_measured_against_the_room_before_the_prompt_not_the_prompt():
    """No wake word teaches the talker's level after a hub's question: the room is what was heard before the
    prompt played (the prompt's echo would set the bar above a person's answer)."""
    end = EndOfSpeech(1.0, -80.0)
    for level in [-70.06] * 50 + [-50.06] * 50 + [-20.0] * 30:  # 8 s of the room, then 2.4 s of the prompt
        end.hear(level)
    end.answer(2.4)
    assert (end.levels.room_dbfs, end.levels.threshold_dbfs) == (-50.1, -47.1)  # the room's loud moments + 3 dB
    end.answer(0.0)  # measured with the prompt in it: the answer would have to beat the prompt
    assert end.levels.threshold_dbfs == -17.0
    short = EndOfSpeech(1.0, -80.0)
    for level in [-70.0] * 9 + [-20.0] * 3:  # a prompt of exactly three frames
        short.hear(level)
    short.answer(0.24)
    assert short.levels.threshold_dbfs == -67.0, "all three of the prompt's frames are left out"
    quiet = EndOfSpeech(1.0, -45.0)
    quiet.answer(0.0)
    assert quiet.levels.threshold_dbfs == -42.0, "nothing heard yet: 3 dB over the floor"


def test_a_question_waits_for_its_answer_then_ends_when_the_talker_stops_or_unanswered():
    end = EndOfSpeech(1.0, -45.0)
    end.answer(0.0)
    wait = 100  # 8 s of 80 ms frames, as docs/home-assistant.md says
    assert pytest.approx(wait) == ANSWER_WAIT_SECONDS / FRAME_SECONDS
    assert not any(end.push(-70.0) for _ in range(wait - 1)), "quiet before the answer does not end it"
    assert end.push(-70.0) and end.unanswered
    end.answer(0.0)
    assert not any(end.push(level) for level in [-70.0] * 30 + [-20.0] * 20)
    ended = [end.push(-70.0) for _ in range(round(1.0 / FRAME_SECONDS))]
    assert ended[-1] and not any(ended[:-1]) and not end.unanswered
    assert end.kept_samples() == (30 + 20 + TAIL_FRAMES) * FRAME_SAMPLES, "from the question to the answer's fade"
    end.start(0)
    assert not end.unanswered, "a request after a wake word is never a question"
