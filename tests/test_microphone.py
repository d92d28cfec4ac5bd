"""The microphone's rules on the loop's side, on a clock the test turns: digital zeros, a read that never
returns, a device that flaps, and a fault that outlives a mute. Milliseconds, where the real `guard run`
tests in test_run.py wait the seconds out."""

import threading

import numpy as np
import pytest

from guard.config import AudioConfig
from guard.daemon import AudioClock
from guard.inbox import Inbox
from guard.microphone import FLAP_SECONDS, MIC_HUNG_SECONDS, Microphone

ZEROS_SECONDS = 30.0


def _clock() -> AudioClock:
    clock = AudioClock()
    clock.seconds = 1000.0  # a monotonic clock is well past 0
    return clock


class Loop:
    """What the daemon's loop gives the microphone: the gate's fault and recovery."""

    def __init__(self) -> None:
        self.faults: list[tuple[str, bool]] = []
        self.recoveries: list[str] = []
        self.health: dict[str, str] = {}


@pytest.fixture
def mic():
    clock, loop, listening = _clock(), Loop(), threading.Event()
    listening.set()
    microphone = Microphone(AudioConfig(device="no-such-microphone", zeros_fault_seconds=ZEROS_SECONDS), "mic",
                            False, Inbox(), listening, threading.Event(),
                            lambda reason, lasting: loop.faults.append((reason, lasting)), loop.recoveries.append,
                            loop.health, clock)
    microphone.heard(_sound(), 1)  # the device came, and gave sound: it is back
    loop.faults.clear()
    loop.recoveries.clear()
    return microphone, clock, loop


def _sound() -> np.ndarray:
    return np.full(1280, 300, np.int16)


def test_a_microphone_absent_at_start_is_waited_for_and_back_with_its_first_sound():
    clock, loop, listening = _clock(), Loop(), threading.Event()
    microphone = Microphone(AudioConfig(device="no-such-microphone"), "mic", False, Inbox(), listening,
                            threading.Event(), lambda reason, lasting: loop.faults.append(reason),
                            loop.recoveries.append, loop.health, clock)
    assert microphone.down and loop.health["audio"].startswith("waiting for the microphone: ")
    microphone.heard(np.zeros(1280, np.int16), 1)
    assert microphone.down, "exact zeros are no sound"
    microphone.heard(_sound(), 1)
    assert microphone.down is None and len(loop.recoveries) == 1


def hear_for(microphone: Microphone, clock: AudioClock, seconds: float, frame: np.ndarray) -> None:
    """Frames arriving every second for `seconds`, the loop checking after each, as it does every tick."""
    for _ in range(int(seconds)):
        microphone.heard(frame, 1)
        clock.seconds += 1
        microphone.check(idle=True)


def test_only_digital_zeros_for_the_configured_time_fail_the_microphone(mic):
    microphone, clock, loop = mic
    hear_for(microphone, clock, ZEROS_SECONDS - 1, np.zeros(1280, np.int16))
    assert loop.faults == [], "just under the limit"
    clock.seconds += 1.01
    microphone.check(idle=True)
    assert loop.faults == [(f"audio source failed: no-such-microphone delivered only digital zeros for "
                            f"{ZEROS_SECONDS:g} s (unplugged?); retrying", True)]
    assert loop.health["audio"].startswith("failing, retrying: ")


def test_one_frame_of_sound_restarts_the_count_of_zeros(mic):
    microphone, clock, loop = mic
    hear_for(microphone, clock, ZEROS_SECONDS - 1, np.zeros(1280, np.int16))
    microphone.heard(_sound(), 1)
    hear_for(microphone, clock, ZEROS_SECONDS - 1, np.zeros(1280, np.int16))
    assert loop.faults == []


def test_a_read_that_never_returns_stops_the_guard_for_systemd_to_restart(mic):
    microphone, clock, loop = mic
    clock.seconds += MIC_HUNG_SECONDS - 0.1
    assert microphone.check(idle=True) is False
    clock.seconds += 0.2
    assert microphone.check(idle=True) is True, "the guard must stop"
    assert microphone.failure and "(hung)" in microphone.failure
    assert loop.faults[-1][1] is False, "the hang is final: the guard exits 1"


def test_a_muted_microphone_is_never_hung(mic):
    microphone, clock, loop = mic
    microphone.listening.clear()
    clock.seconds += 10 * MIC_HUNG_SECONDS
    assert microphone.check(idle=True) is False and loop.faults == []


def test_a_microphone_that_fails_again_soon_after_it_came_back_must_give_sound_for_a_while(mic):
    microphone, clock, loop = mic
    clock.seconds += FLAP_SECONDS + 1  # long after it came back in the fixture
    microphone.failed("read error", 1)
    microphone.heard(_sound(), 2)
    assert microphone.down is None and len(loop.recoveries) == 1, "the first failure: back at once"
    clock.seconds += FLAP_SECONDS / 2
    microphone.failed("read error", 2)  # again, within FLAP_SECONDS of coming back
    microphone.heard(_sound(), 3)
    clock.seconds += FLAP_SECONDS - 0.1
    microphone.heard(_sound(), 3)
    assert microphone.down == "read error", "flapping: not back yet"
    clock.seconds += 0.2
    microphone.heard(_sound(), 3)
    assert microphone.down is None and len(loop.recoveries) == 2
    assert len(loop.faults) == 2, "one fault record per failure, none per frame"


def test_a_fault_that_outlives_a_mute_is_shown_again_when_idle(mic):
    microphone, clock, loop = mic
    microphone.failed("device unavailable", 1)
    assert loop.faults == [("audio source failed: device unavailable; retrying", True)]
    microphone.check(idle=False)
    assert len(loop.faults) == 1
    microphone.check(idle=True)
    assert loop.faults[-1] == ("audio source failed: device unavailable; retrying", True)
