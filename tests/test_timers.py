"""Home Assistant's timers: a finished one rings and shows on the LED until a press stops it or the limit
passes; the press that stops a ring releases nothing, even with a request pending."""

import numpy as np
import speech
from conftest import serve

from guard import audit, timers
from guard.dsp import FRAME_SAMPLES
from guard.inbox import ButtonMove, ButtonMoved, TimerHeard
from guard.timers import Timer, Timers
from guard.vocabulary import LedPattern, State, TimerKind


class Clock:
    def __init__(self) -> None:
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds


def test_a_finished_timer_rings_once_until_stopped_or_the_limit_passes():
    rings, clock = [], Clock()
    kept = Timers(rings.append, clock)
    kept.heard(TimerKind.STARTED, Timer("t1", "pasta", 600, 600))
    kept.heard(TimerKind.STARTED, Timer("t2", "", 60, 60))
    kept.heard(TimerKind.CANCELLED, Timer("t2", "", 0, 0))
    assert list(kept.active) == ["t1"] and rings == []
    kept.heard(TimerKind.FINISHED, Timer("t1", "", 0, 0))
    kept.heard(TimerKind.FINISHED, Timer("t3", "", 0, 0))  # a second one while ringing: still one ring
    assert rings == [True] and kept.ringing and kept.active == {}
    clock.seconds += timers.RING_SECONDS - 1
    kept.tick()
    assert kept.ringing, "the second finished timer started the limit again"
    clock.seconds += 1
    kept.tick()
    assert rings == [True, False] and not kept.ringing
    kept.heard(TimerKind.FINISHED, Timer("t4", "", 0, 0))
    kept.stop("the button")
    assert rings == [True, False, True, False]


def test_a_ring_reads_as_ringing_from_the_moment_it_sounds_until_it_has_stopped():
    """Another thread that hears the ring (a speaker, a test waiting on the speaker's file) finds `ringing` True
    for as long as the ring may sound: it is set before the ring starts and cleared once it has stopped (a
    fresh-clone run under load saw 3 s of ring played while `ringing` still read False)."""
    seen = []
    kept = Timers(lambda on: seen.append((on, kept.ringing)), Clock())
    kept.heard(TimerKind.FINISHED, Timer("t1", "", 0, 0))
    kept.stop("the button")
    assert seen == [(True, True), (False, True)] and not kept.ringing


def test_no_more_timers_are_kept_than_the_bound():
    kept = Timers(lambda on: None, Clock())
    for i in range(timers.TIMERS_KEPT + 5):
        kept.heard(TimerKind.STARTED, Timer(f"t{i}", "", 60, 60))
    assert len(kept.active) == timers.TIMERS_KEPT and "t0" not in kept.active and "t36" in kept.active


def test_the_ring_is_three_beeps_then_quiet_and_never_clips():
    ring = timers.ring_sound(1.0)
    assert len(ring) == 3 * int(0.12 * 16000) + 2 * int(0.08 * 16000) + int(0.8 * 16000)
    assert 0.45 * 32767 < np.abs(ring.astype(np.int32)).max() <= 32767
    assert not ring[-int(0.8 * 16000):].any(), "quiet after the beeps"


def test_a_timer_name_is_never_logged(caplog):
    kept = Timers(lambda on: None, Clock())
    with caplog.at_level("INFO"):
        kept.heard(TimerKind.STARTED, Timer("t1", "call the bank about my loan", 600, 600))
        kept.heard(TimerKind.FINISHED, Timer("t1", "call the bank about my loan", 0, 0))
    assert "t1" in caplog.text and "bank" not in caplog.text


# -- in the daemon --------------------------------------------------------------------------------------


def _press(daemon) -> None:
    serve(daemon, ButtonMoved(ButtonMove.DOWN, daemon.clock()))
    daemon.clock.seconds += 0.1
    serve(daemon, ButtonMoved(ButtonMove.UP, daemon.clock()))
    daemon.clock.seconds += 1.0


def _pending(daemon) -> None:
    """Say 'Alexa, what time is it' to the daemon, frame by frame, until the gate holds it pending."""
    audio = np.concatenate([speech.silence(1.0), speech.say("Alexa"), speech.silence(0.3),
                            speech.say("what time is it"), speech.silence(1.6)])
    for frame in speech.frames(audio, FRAME_SAMPLES):
        daemon.audio.post(frame.copy())
        daemon.step()
    assert daemon.gate.state is State.PENDING


def test_a_finished_timer_shows_on_the_led_and_a_press_stops_it_and_nothing_else(daemon):
    serve(daemon, TimerHeard(TimerKind.FINISHED, "t1", "", 0, 0))
    assert daemon.timers.ringing and daemon.outputs.led.showing is LedPattern.TIMER
    _press(daemon)
    assert not daemon.timers.ringing and daemon.outputs.led.showing is LedPattern.IDLE
    assert daemon.gate.state is State.IDLE, "the press that stopped the ring did not mute"


def test_invariant1_the_press_that_stops_a_ring_never_releases_a_pending_request(daemon, tmp_path):
    _pending(daemon)
    daemon.clock.seconds += 0.5
    serve(daemon, TimerHeard(TimerKind.FINISHED, "t1", "", 0, 0))
    assert daemon.outputs.led.showing is LedPattern.TIMER and daemon.gate.state is State.PENDING
    _press(daemon)
    assert daemon.gate.state is State.PENDING and not daemon.timers.ringing
    assert daemon.outputs.led.showing is LedPattern.PENDING, "the pending pattern is back"
    assert "releasing" not in [r["event"] for r in audit.read(tmp_path / "audit.jsonl")]
    _press(daemon)  # the next press is a consent press again (its sinks run in the delivery thread, not here)
    last = audit.read(tmp_path / "audit.jsonl")[-1]
    assert (last["event"], last["confirmed_by"]) == ("releasing", "button")


def test_a_long_press_that_stops_a_ring_does_not_mute(daemon):
    serve(daemon, TimerHeard(TimerKind.FINISHED, "t1", "", 0, 0))
    serve(daemon, ButtonMoved(ButtonMove.DOWN, daemon.clock()), ButtonMoved(ButtonMove.HELD, daemon.clock()),
          ButtonMoved(ButtonMove.UP, daemon.clock()))
    assert daemon.gate.state is State.IDLE and not daemon.timers.ringing


def test_a_ring_nobody_stops_ends_by_itself(daemon):
    serve(daemon, TimerHeard(TimerKind.FINISHED, "t1", "", 0, 0))
    daemon.clock.seconds += timers.RING_SECONDS
    daemon.step()
    assert not daemon.timers.ringing and daemon.outputs.led.showing is LedPattern.IDLE
