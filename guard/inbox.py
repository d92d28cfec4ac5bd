"""The loop's one inbox: typed messages in lanes served in order, so the button is never behind a network peer.

Every thread that wants the gate to act posts a message here; only the daemon's loop takes,
and it dispatches on the message's type. Which lane a message goes to is decided here and
nowhere else (`lane_of`): the button's moves, mutes from anywhere, and stop share the first
lane; the guard's own news (deliveries, a failing microphone) the second; what network peers
ask (unmute, cancel, wipe) and their counted refusals the third, which is bounded; audio
frames come last. Nothing here decides what a message means.
"""

import threading
from collections import deque
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from guard.vocabulary import TimerKind


class Lane(IntEnum):
    """Which messages are served first; a lower lane is always emptied before a higher one."""

    URGENT = 0  # button moves, mutes, stop: the privacy controls
    LOCAL = 1  # deliveries and microphone failures: the guard's own news, never dropped
    REMOTE = 2  # network peers' requests and refusals: bounded, the excess counted
    FRAMES = 3  # audio, held back by the audio thread when the loop is behind


REMOTE_MESSAGES = 64  # a peer that sends faster than the loop serves loses the excess, counted


class ButtonMove(StrEnum):
    """What gpiozero saw the consent button do."""

    DOWN = "down"
    UP = "up"
    HELD = "held"


@dataclass(frozen=True)
class ButtonMoved:
    """The button moved (gpiozero's thread), stamped with the time it happened."""

    move: ButtonMove
    at: float


@dataclass(frozen=True)
class Command:
    """A remote command (paho's or the satellite's thread) and who sent it; commands.py says which verbs exist."""

    by: str
    verb: str


@dataclass(frozen=True)
class Refusal:
    """Requests a peer made that were refused, counted (the satellite's thread)."""

    by: str
    peer: str
    kind: str
    reason: str
    count: int


@dataclass(frozen=True)
class ChooseWakeWords:
    """Which of the configured wake words to listen for (the ESPHome server's thread), and who chose."""

    by: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class TimerHeard:
    """What Home Assistant said of a timer (the ESPHome server's or the satellite's thread): started, updated,
    cancelled or finished."""

    kind: "TimerKind"
    timer_id: str
    name: str
    total_seconds: int
    seconds_left: int


@dataclass(frozen=True)
class FollowUp:
    """Home Assistant asked a question and its prompt has played (the ESPHome server's thread): capture the
    answer as after a wake word; it leaves only on a local consent, like any request."""

    by: str
    prompt_seconds: float  # how long the question played: the room is measured from before it


@dataclass(frozen=True)
class SourceFailed:
    """The microphone or file failed (the audio thread); `generation` names the stream that failed."""

    reason: str
    generation: int


@dataclass(frozen=True)
class Delivered:
    """A release has been handed to its sinks (the delivery thread); its outcomes are ready to record."""

    delivery: object  # gate.Delivery: the inbox sits below the gate and does not import it


@dataclass(frozen=True)
class Stop:
    """Wakes the loop so it sees that it is to stop."""


@dataclass(frozen=True, eq=False)
class Frame:
    """80 ms of audio (a private copy the loop zeroes after use) from stream `generation`."""

    samples: "np.ndarray"
    generation: int


Message = (ButtonMoved | Command | Refusal | ChooseWakeWords | TimerHeard | FollowUp | SourceFailed | Delivered | Stop
           | Frame)


def lane_of(message: Message) -> Lane:
    """The one place that ranks messages: a mute goes with the button, whoever sends it."""
    match message:
        case ButtonMoved() | Stop() | Command(verb="mute"):
            return Lane.URGENT
        case SourceFailed() | Delivered():
            return Lane.LOCAL
        case Command() | Refusal() | ChooseWakeWords() | TimerHeard() | FollowUp():
            return Lane.REMOTE
        case Frame():
            return Lane.FRAMES
    raise TypeError(f"not an inbox message: {message!r}")


class Inbox:
    """Thread-safe lanes of messages with one waiting point for the loop.

    Args:
        remote_limit: how many remote messages may wait; more are dropped and counted in `dropped`.
    """

    def __init__(self, remote_limit: int = REMOTE_MESSAGES) -> None:
        self._lanes: list[deque[Message]] = [deque() for _ in Lane]
        self._ready = threading.Condition()
        self.remote_limit = remote_limit
        self.dropped = 0  # remote messages refused because the lane was full

    def post(self, message: Message) -> bool:
        """Queue a message in its lane; False when a full remote lane dropped it. Never raises for a message."""
        lane = lane_of(message)
        with self._ready:
            if lane is Lane.REMOTE and len(self._lanes[lane]) >= self.remote_limit:
                self.dropped += 1
                return False
            self._lanes[lane].append(message)
            self._ready.notify()
            return True

    def get(self, timeout_seconds: float) -> Message | None:
        """The first message of the lowest non-empty lane, waiting at most `timeout_seconds`; None if none came."""
        with self._ready:
            if not self._ready.wait_for(self._any, timeout_seconds):
                return None
            for lane in Lane:
                if self._lanes[lane]:
                    return self._lanes[lane].popleft()
        return None

    def _any(self) -> bool:
        return any(self._lanes)

    def size(self, lane: Lane) -> int:
        with self._ready:
            return len(self._lanes[lane])

    def empty(self) -> bool:
        with self._ready:
            return not self._any()

    def take_all(self, lane: Lane) -> list[Message]:
        """Remove and return everything waiting in one lane (frames to zero at mute and exit)."""
        with self._ready:
            items = list(self._lanes[lane])
            self._lanes[lane].clear()
            return items

    def peek(self, lane: Lane) -> list[Message]:
        """A copy of what waits in a lane, oldest first, leaving it there (tests look at frame copies with it)."""
        with self._ready:
            return list(self._lanes[lane])
