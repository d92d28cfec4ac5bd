"""Where a request ends: when the person who said the wake word stops, not when the room goes quiet.

The talker's level is learned from the wake word (the last 1.2 s before it was
heard), the room's from the 10 s before that: a television's voices, a fan. A frame is the
talker's when it is louder than halfway between the two (in dB). The request ends
on a quiet frame when the last `end_silence_seconds` hold at most one of the
talker's (one background peak does not hold a request open), and what came after
the talker's last frame (but a short fade) is not part of the release.
"""

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from guard.dsp import FRAME_SAMPLES, FRAME_SECONDS

WAKE_SECONDS = 1.2  # the last frames before a wake hold the wake word: the talker's level
ROOM_SECONDS = 10.0  # and the frames before them the room: long enough that a pause on the television is not all
LOUD_PERCENTILE = 90  # the talker's voiced frames, and the room's loud moments (a television's words), not averages
NEAREST_TO_TALKER_DB = 3.0  # a room as loud as the talker: frames must still come this close to the talker
FURTHEST_FROM_TALKER_DB = 10.0  # even in a silent room, frames this far under the talker are not theirs
#   (bench/eval_rooms.py: it cuts one who starts talking mid-request 15 dB under; at 6 dB a fading talker loses words)
STRAY_FRAMES = 1  # background peaks a quiet second may hold and still end the request
NEIGHBOUR_FRAMES = 5  # a frame is the talker's when another was this close before it (400 ms): syllables come in runs
TAIL_FRAMES = 3  # kept after the talker's last frame: the fading end of a word (240 ms)
ANSWER_WAIT_SECONDS = 8.0  # how long a hub's question waits for its answer to begin


@dataclass(frozen=True)
class Levels:
    """What the wake word taught: the talker's level, the room's, and the line between them (dBFS)."""

    talker_dbfs: float
    room_dbfs: float
    threshold_dbfs: float


def learn(levels: list[float], floor_dbfs: float) -> Levels:
    """The talker's and the room's levels from the frame levels heard before a wake (oldest first).

    `floor_dbfs` is the level below which a frame is never speech, however quiet the room.
    """
    levels = levels or [-180.0]
    wake_frames = max(1, round(WAKE_SECONDS / FRAME_SECONDS))
    wake, before = levels[-wake_frames:], levels[:-wake_frames]
    talker = float(np.percentile(wake, LOUD_PERCENTILE))
    room = float(np.percentile(before, LOUD_PERCENTILE)) if before else min(wake)
    middle = (talker + room) / 2
    threshold = min(max(middle, talker - FURTHEST_FROM_TALKER_DB), talker - NEAREST_TO_TALKER_DB)
    return Levels(round(talker, 1), round(room, 1), round(max(threshold, floor_dbfs), 1))


class EndOfSpeech:
    """Follows one request frame by frame: has its talker stopped, and how much of it to keep.

    Holds frame levels (numbers, a loudness contour at 12.5 a second) and yes/no marks only, never audio.

    Args:
        end_silence_seconds: how long the talker must have been quiet.
        floor_dbfs: frames quieter than this are never the talker's.
    """

    def __init__(self, end_silence_seconds: float, floor_dbfs: float) -> None:
        self.floor_dbfs = floor_dbfs
        self.window = max(1, math.ceil(end_silence_seconds / FRAME_SECONDS - 1e-9))
        self.levels = Levels(0.0, 0.0, floor_dbfs)
        self._heard: deque[float] = deque(maxlen=round((ROOM_SECONDS + WAKE_SECONDS) / FRAME_SECONDS))
        self._recent: deque[bool] = deque(maxlen=self.window)
        self._length = 0  # samples of the request so far, pre-roll included
        self._talker_end = 0  # samples up to the end of the talker's last frame
        self._last_talker = -math.inf  # the request's frame count at the talker's last frame
        self._question = False  # this capture is the answer to a hub's question, not a request after a wake word
        self._waiting = 0  # frames a question's answer may still take to begin (0: it began, or no question)

    def hear(self, frame_dbfs: float) -> None:
        """The level of a frame heard while listening for a wake word: the room, and then the wake word itself."""
        self._heard.append(frame_dbfs)

    def start(self, pre_roll_samples: int) -> None:
        """A wake word was just heard, at the end of a pre-roll this long: learn the levels, count from here."""
        self.levels = learn(list(self._heard), self.floor_dbfs)
        self._recent.clear()
        self._length = self._talker_end = pre_roll_samples
        self._last_talker = -math.inf
        self._question, self._waiting = False, 0

    def answer(self, prompt_seconds: float) -> None:
        """A hub asked a question whose prompt just played; no wake word taught the talker's level, so a frame
        NEAREST_TO_TALKER_DB over the room's loud moments before the prompt is the answer's. It must begin
        within ANSWER_WAIT_SECONDS."""
        prompt = round(prompt_seconds / FRAME_SECONDS)
        heard = list(self._heard)
        room_levels = heard[:len(heard) - prompt] if prompt else heard
        room = float(np.percentile(room_levels, LOUD_PERCENTILE)) if room_levels else self.floor_dbfs
        threshold = round(max(room + NEAREST_TO_TALKER_DB, self.floor_dbfs), 1)
        self.levels = Levels(threshold, round(room, 1), threshold)  # the talker: the least a frame of theirs is
        self._recent.clear()
        self._length = self._talker_end = 0
        self._last_talker = -math.inf
        self._question, self._waiting = True, round(ANSWER_WAIT_SECONDS / FRAME_SECONDS)

    @property
    def unanswered(self) -> bool:
        """A question whose answer never began."""
        return self._question and self._last_talker == -math.inf

    def push(self, frame_dbfs: float) -> bool:
        """The level of the request's next frame; True once the talker has stopped."""
        talker = frame_dbfs >= self.levels.threshold_dbfs
        self._recent.append(talker)
        self._length += FRAME_SAMPLES
        if talker:
            frame = self._length // FRAME_SAMPLES
            if frame - self._last_talker <= NEIGHBOUR_FRAMES:  # a lone peak does not stretch the release
                self._talker_end = self._length
            self._last_talker = frame
        if self._waiting:  # a question: quiet frames before its answer begins do not end it
            self._waiting = 0 if talker else self._waiting - 1
            return not talker and self._waiting == 0
        return not talker and len(self._recent) == self.window and sum(self._recent) <= STRAY_FRAMES

    def kept_samples(self) -> int:
        """How much of the request to release: up to the talker's last frame and a short fade."""
        return min(self._length, self._talker_end + TAIL_FRAMES * FRAME_SAMPLES)
