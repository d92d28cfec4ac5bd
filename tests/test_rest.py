"""Models resting in a quiet room: the same wakes as always-on, at the same frames, with the audio wiped."""

import numpy as np
import pytest
import speech

from guard.config import WakeModelSettings
from guard.dsp import FRAME_SAMPLES, level_dbfs
from guard.wake import FLOOR_LEARN_FRAMES, REPLAY_FRAMES, REST_AFTER_FRAMES, RoomFloor, WakeDetector


def run(detector: WakeDetector, audio: np.ndarray) -> tuple[list, int, dict]:
    """The wakes, how many frames the models rested, and the scores of every frame they did not."""
    found, rested, scored = [], 0, {}
    for index, frame in enumerate(speech.frames(audio)):
        found += [(d.model, round(d.end_seconds, 2), round(d.score, 4)) for d in detector.process(frame)]
        rested += detector.resting
        if not detector.resting:
            scored[index] = detector.scores()
    return found, rested, scored


@pytest.fixture(scope="module")
def day() -> np.ndarray:
    return speech.day_profile()


@pytest.mark.parametrize(("engine", "words", "patience"), [
    ("openwakeword", ["alexa", "hey_jarvis", "hey_mycroft"], 1),
    ("micro", ["alexa", "hey_jarvis", "hey_mycroft", "okay_nabu"], 1),
    ("micro", ["alexa", "hey_mycroft"], 2),  # a replay must also recount the frames over threshold
])
def test_a_resting_detector_finds_exactly_the_wakes_an_always_on_one_does(day, engine, words, patience):
    settings = [WakeModelSettings(w, engine=engine, patience_frames=patience) for w in words]
    always, never_rested, every_score = run(WakeDetector(settings), day)
    resting, rested, scored = run(WakeDetector(settings, rest_below_dbfs=-60), day)
    assert never_rested == 0 and len(always) >= 3, "the day must hold wakes"
    assert rested > 0.6 * len(day) / FRAME_SAMPLES, "the models must rest through most of a quiet day"
    assert resting == always  # same models, same frames, same scores
    assert scored == {index: every_score[index] for index in scored}  # every frame scored, to the last bit


def test_sound_after_rest_is_scored_as_if_the_models_had_never_stopped():
    quiet = np.random.default_rng(0).normal(0, speech.QUIET_ROOM, 16000 * 8)
    audio = np.concatenate([quiet, speech.say("Alexa"), np.zeros(8000)]).astype(np.int16)
    always = WakeDetector([WakeModelSettings("alexa")])
    resting = WakeDetector([WakeModelSettings("alexa")], rest_below_dbfs=-60)
    for frame in speech.frames(audio):
        always.process(frame)
        resting.process(frame)
        if not resting.resting:
            assert resting.scores() == always.scores()
            assert np.array_equal(resting.features.embeddings, always.features.embeddings)


def test_keep_awake_stops_a_rest_and_forbids_the_next():
    detector = WakeDetector([WakeModelSettings("alexa")], rest_below_dbfs=-60)
    silence = np.zeros(FRAME_SAMPLES, np.int16)
    for _ in range(FLOOR_LEARN_FRAMES + REST_AFTER_FRAMES):
        detector.process(silence)
    assert detector.resting
    detector.process(silence, keep_awake=True)
    assert not detector.resting
    for _ in range(30):
        detector.process(silence, keep_awake=True)
    assert not detector.resting


def test_the_frames_kept_for_a_replay_are_wiped():
    detector = WakeDetector([WakeModelSettings("alexa")], rest_below_dbfs=-60)
    detector.process(speech.say("Alexa")[:FRAME_SAMPLES])
    assert detector.holds_audio()
    detector.wipe()
    assert not detector.holds_audio() and not detector.resting
    assert detector._recent.shape == (REPLAY_FRAMES["openwakeword"], FRAME_SAMPLES)


def test_a_long_patience_keeps_enough_frames_to_replay_it():
    detector = WakeDetector([WakeModelSettings("alexa", engine="micro", patience_frames=200)], rest_below_dbfs=-60)
    assert len(detector._recent) >= 200 + detector.words[0].classifier.memory_frames - 1


def test_a_replay_recounts_the_frames_over_threshold_that_patience_needs():
    """A word always over its threshold (0) with patience 3: the first loud frame after a rest wakes it, as it
    does always-on, because the replay scored the two frames before it again."""
    settings = [WakeModelSettings("alexa", threshold=0.0, patience_frames=3, refractory_seconds=0)]
    quiet = np.random.default_rng(0).normal(0, speech.QUIET_ROOM, 16000 * 9)
    audio = np.concatenate([quiet, speech.say("Alexa")]).astype(np.int16)
    always, resting = WakeDetector(settings), WakeDetector(settings, rest_below_dbfs=-60)
    wakes_on_waking = []
    for frame in speech.frames(audio):
        was_resting = resting.resting
        wakes = len(always.process(frame)), len(resting.process(frame))
        if was_resting and not resting.resting:
            wakes_on_waking.append(wakes)
    assert wakes_on_waking and all(wakes == (1, 1) for wakes in wakes_on_waking)


def quiet_wakes(voices: tuple[str, ...], over_floor_db: tuple[float, ...], room_dbfs: float = -70.0) -> np.ndarray:
    """A room at `room_dbfs`, and in it "Alexa" by each voice with its loudest frame only `over_floor_db` over the
    room's level (down to where micro still hears it), each after 8 s of quiet in which the models rest."""
    rng = np.random.default_rng(7)
    sigma = 32768 * 10 ** (room_dbfs / 20)
    parts = []
    for voice in voices:
        word = speech.say("Alexa", voice).astype(np.float64)
        loudest = max(level_dbfs(f) for f in speech.frames(word.astype(np.int16)))
        for over in over_floor_db:
            parts += [np.zeros(16000 * 8), word * 10 ** ((room_dbfs + over - loudest) / 20)]
    quiet = np.concatenate(parts + [np.zeros(16000 * 2)])
    return np.round(quiet + rng.normal(0, sigma, len(quiet))).astype(np.int16)


@pytest.mark.parametrize("engine", ["micro", "openwakeword"])
def test_quiet_words_an_always_on_detector_hears_are_heard_by_a_resting_one(engine):
    """Once every word here was lost while resting: none rose over rest_below_dbfs (-60), all under -62."""
    audio = quiet_wakes(("en", "en-us", "en+m3", "en-gb-x-rp"), (0.25, 1.0, 2.0, 4.0, 8.0))
    settings = [WakeModelSettings("alexa", engine=engine)]
    always, never_rested, _ = run(WakeDetector(settings), audio)
    resting, rested, _ = run(WakeDetector(settings, rest_below_dbfs=-60), audio)
    if engine == "micro":
        assert len(always) >= 12, "micro hears most of them, some at 0.25 dB over the room's level"
    assert resting == always
    assert rested > 0.5 * len(audio) / FRAME_SAMPLES, "the models still rest through most of the quiet"


def test_room_noise_alone_never_rises_over_the_floor():
    rng = np.random.default_rng(3)
    brown = speech.with_room_noise(np.zeros(16000 * 60, np.int16) + 1, 0, seed=3).astype(np.float64) * 0.3
    for room in (rng.normal(0, 32768 * 10 ** (-70 / 20), 16000 * 60), brown):
        floor = RoomFloor()
        rises = [floor.rises(frame) for frame in speech.frames(np.round(room).astype(np.int16))]
        assert not any(rises[FLOOR_LEARN_FRAMES:])


def test_the_floor_follows_a_room_that_turns_quiet_before_the_models_may_rest():
    """A fan stops: within the 2 s of quiet that a rest needs, the floor is the quiet room's."""
    rng = np.random.default_rng(4)
    fan = rng.normal(0, 32768 * 10 ** (-40 / 20), 16000 * 10)
    quiet = rng.normal(0, 32768 * 10 ** (-70 / 20), 16000 * 10)
    floor = RoomFloor()
    for frame in speech.frames(np.round(fan).astype(np.int16)):
        floor.rises(frame)
    floors = []
    for frame in speech.frames(np.round(quiet).astype(np.int16)):
        floor.rises(frame)
        floors.append(floor.floor.copy())
    assert np.allclose(floors[REST_AFTER_FRAMES], floors[-1], atol=2.0)
