"""The words every part shares: what the guard is doing, and what it tells the hub.

A leaf module (standard library only), so the MQTT adapter, the satellite and the CLI can speak of states and
events without importing the privacy gate.
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


@dataclass(frozen=True)
class Event:
    """Something the hub may know: never audio, only what happened and to which utterance."""

    kind: str
    state: str
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
