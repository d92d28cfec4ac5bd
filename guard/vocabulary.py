"""The words every part shares: what the guard is doing, what happened, and what the LED shows.

A leaf module (standard library only), so the MQTT adapter, the satellite and the CLI can speak of states and
events without importing the privacy gate. Each is a StrEnum: the JSON, MQTT and audit words stay as they are,
and a tool can find every use of one.
"""

from dataclasses import asdict, dataclass
from enum import StrEnum


class State(StrEnum):
    """What the guard is doing; the same words in the LED, the audit log and MQTT."""

    IDLE = "idle"
    CAPTURING = "capturing"
    PENDING = "pending"
    MUTED = "muted"
    FAULT = "fault"


class EventKind(StrEnum):
    """What happened; the same words in events, MQTT topics (`event/<kind>`) and the audit log."""

    WAKE = "wake"
    FOLLOW_UP = "follow-up"  # a hub's question was asked: the answer is captured as after a wake word
    PENDING = "pending"
    RELEASING = "releasing"
    RELEASED = "released"
    RELEASE_FAILED = "release-failed"
    RELEASE_UNKNOWN = "release-unknown"
    DISCARDED = "discarded"
    MUTED = "muted"
    UNMUTED = "unmuted"
    REFUSED = "refused"
    WIPED = "wiped"
    FAULT = "fault"
    RECOVERED = "recovered"
    WAKE_WORDS = "wake-words"  # which of the configured wake words are listened for changed
    ERROR = "error"  # the MQTT link's own: a rejected or failed message, never the gate's
    SEALED = "sealed"  # the audit log's own: a line torn by a crash, sealed at the next start


class LedPattern(StrEnum):
    """What the LED shows: one per state, and three that are not states."""

    IDLE = "idle"
    CAPTURING = "capturing"
    PENDING = "pending"
    PENDING_VOICE = "pending_voice"  # pending, and listening for the enrolled phrase too
    RELEASED = "released"  # a short flash after a release, then dark
    MUTED = "muted"
    FAULT = "fault"
    TIMER = "timer"  # a finished timer rings; a press stops it and releases nothing

    @classmethod
    def of(cls, state: State) -> "LedPattern":
        return cls(state.value)


class TimerKind(StrEnum):
    """What Home Assistant says of one of its timers (over the ESPHome API or the Wyoming satellite)."""

    STARTED = "started"
    UPDATED = "updated"
    CANCELLED = "cancelled"
    FINISHED = "finished"


@dataclass(frozen=True)
class Event:
    """Something the hub may know: never audio, only what happened and to which utterance."""

    kind: EventKind
    state: State
    time: str
    utterance: str | None = None
    model: str | None = None
    score: float | None = None
    threshold: float | None = None
    second_opinion: float | None = None  # openWakeWord's score that made a wake of a micro score under threshold
    sink: str | None = None
    reason: str | None = None
    confirmed_by: str | None = None
    duration_seconds: float | None = None
    by: str | None = None
    match_score: float | None = None
    speaker_score: float | None = None
    matched_in_noise: bool | None = None  # a spoken confirmation matched on floored embeddings (confirm.py)
    peer: str | None = None
    count: int | None = None
    to: str | None = None
    talker_dbfs: float | None = None
    room_dbfs: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}
