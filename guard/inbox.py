"""The loop's one inbox: lanes served in order, so the button is never behind a network peer.

Every thread that wants the gate to act posts here; only the daemon's loop takes.
The button's moves, mutes from anywhere, and stop share the first lane; the guard's
own news (deliveries, a failing microphone) the second; what network peers ask
(unmute, cancel, wipe, refusals) the third, which is bounded; audio frames come last.
Nothing here decides anything.
"""

import threading
from collections import deque
from enum import IntEnum
from typing import Any


class Lane(IntEnum):
    """Which messages are served first; a lower lane is always emptied before a higher one."""

    URGENT = 0  # button moves, mutes, stop: the privacy controls
    LOCAL = 1  # deliveries and microphone failures: the guard's own news, never dropped
    REMOTE = 2  # network peers' requests and refusals: bounded, the excess counted
    FRAMES = 3  # audio, held back by the audio thread when the loop is behind


REMOTE_MESSAGES = 64  # a peer that sends faster than the loop serves loses the excess, counted


class Inbox:
    """Thread-safe lanes of (word, payload) messages with one waiting point for the loop.

    Args:
        remote_limit: how many remote messages may wait; more are dropped and counted in `dropped`.
    """

    def __init__(self, remote_limit: int = REMOTE_MESSAGES) -> None:
        self._lanes: list[deque] = [deque() for _ in Lane]
        self._ready = threading.Condition()
        self.remote_limit = remote_limit
        self.dropped = 0  # remote messages refused because the lane was full

    def put(self, lane: Lane, word: Any, payload: Any = None) -> bool:
        """Queue a message; False when a full remote lane dropped it."""
        with self._ready:
            if lane is Lane.REMOTE and len(self._lanes[lane]) >= self.remote_limit:
                self.dropped += 1
                return False
            self._lanes[lane].append((word, payload))
            self._ready.notify()
            return True

    def get(self, timeout_seconds: float) -> tuple[Lane, Any, Any] | None:
        """The first message of the lowest non-empty lane, waiting at most `timeout_seconds`; None if none came."""
        with self._ready:
            if not self._ready.wait_for(self._any, timeout_seconds):
                return None
            for lane in Lane:
                if self._lanes[lane]:
                    word, payload = self._lanes[lane].popleft()
                    return lane, word, payload
        return None

    def _any(self) -> bool:
        return any(self._lanes)

    def size(self, lane: Lane) -> int:
        with self._ready:
            return len(self._lanes[lane])

    def empty(self) -> bool:
        with self._ready:
            return not self._any()

    def take_all(self, lane: Lane) -> list[tuple[Any, Any]]:
        """Remove and return everything waiting in one lane (frames to zero at mute and exit)."""
        with self._ready:
            items = list(self._lanes[lane])
            self._lanes[lane].clear()
            return items

    def peek(self, lane: Lane) -> list[tuple[Any, Any]]:
        """A copy of what waits in a lane, oldest first, leaving it there (tests look at frame copies with it)."""
        with self._ready:
            return list(self._lanes[lane])
