"""Home Assistant's timers on the guard: started, updated, cancelled and finished; a finished one rings.

Home Assistant keeps the time and says when a timer finishes (over the ESPHome API or the Wyoming
satellite); the guard rings on [audio] output_device and the LED shows it, until a press stops it or
RING_SECONDS pass. A ring is not a consent window: the press that stops it releases nothing and mutes
nothing. A timer's name (which someone said) is never logged: the log names it by its id.
"""

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from guard.dsp import RATE_HZ
from guard.errors import DeviceError
from guard.vocabulary import TimerKind

log = logging.getLogger(__name__)

RING_SECONDS = 120.0  # a ring nobody stops ends by itself
TIMERS_KEPT = 32  # Home Assistant's timers for this device; more are forgotten, oldest first


@dataclass(frozen=True)
class Timer:
    """A timer as Home Assistant last described it."""

    id: str
    name: str
    total_seconds: int
    seconds_left: int


def ring_sound(volume: float = 0.5) -> np.ndarray:
    """One ring: three short beeps at 880 Hz, then quiet (1.32 s), played again and again."""
    t = np.arange(int(0.12 * RATE_HZ)) / RATE_HZ
    beep = np.sin(2 * np.pi * 880 * t) * np.hanning(len(t))
    gap = np.zeros(int(0.08 * RATE_HZ))
    ring = np.concatenate([beep, gap, beep, gap, beep, np.zeros(int(0.8 * RATE_HZ))])
    return np.round(ring * 32767 * volume).astype("<i2")


class Timers:
    """The timers Home Assistant runs for this device, and whether one is ringing.

    Args:
        ring: called with True when a finished timer starts ringing, False when the ring stops.
        clock: monotonic seconds.
    """

    def __init__(self, ring: Callable[[bool], None], clock: Callable[[], float]) -> None:
        self.ring, self.clock = ring, clock
        self.active: dict[str, Timer] = {}
        self.ringing_until: float | None = None

    @property
    def ringing(self) -> bool:
        return self.ringing_until is not None

    def heard(self, kind: TimerKind, timer: Timer) -> None:
        """What Home Assistant said of one timer."""
        if kind in (TimerKind.STARTED, TimerKind.UPDATED):
            self.active.pop(timer.id, None)
            self.active[timer.id] = timer
            while len(self.active) > TIMERS_KEPT:
                self.active.pop(next(iter(self.active)))
            log.info("timer %s %s: %d s left", timer.id, kind, timer.seconds_left)
        elif kind is TimerKind.CANCELLED:
            self.active.pop(timer.id, None)
            log.info("timer %s cancelled", timer.id)
        elif kind is TimerKind.FINISHED:
            self.active.pop(timer.id, None)
            log.info("timer %s finished: ringing until a press stops it (at most %g s)", timer.id, RING_SECONDS)
            ringing, self.ringing_until = self.ringing, self.clock() + RING_SECONDS  # ringing before it sounds
            if not ringing:
                self.ring(True)

    def stop(self, why: str) -> None:
        if self.ringing:
            log.info("timer ring stopped: %s", why)
            self.ring(False)
            self.ringing_until = None  # only once the ring has stopped

    def tick(self) -> None:
        if self.ringing and self.clock() >= self.ringing_until:
            self.stop(f"nobody pressed in {RING_SECONDS:g} s")


class Ringer:
    """Plays the ring again and again on the speaker, in a thread of its own, until stopped."""

    def __init__(self, speaker, volume: float = 0.5) -> None:
        self.speaker, self.sound = speaker, ring_sound(volume)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.stop()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ring", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """One stream for the whole ring, written a tenth of a second at a time, so a press stops it at once."""
        step = RATE_HZ // 10
        try:
            self.speaker.start(RATE_HZ, 2, 1)
            try:
                while not self._stop.is_set():
                    for at in range(0, len(self.sound), step):
                        if self._stop.is_set():
                            break
                        self.speaker.write(self.sound[at:at + step].tobytes())
            finally:
                self.speaker.stop()
        except (DeviceError, OSError) as e:
            log.warning("timer ring not played: %s", e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
