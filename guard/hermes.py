"""This guard as a Rhasspy site over Hermes: what it announces on a wake and what a release sends.

No paho here: `mqtt.py` carries the messages. Rhasspy may pause the wake word
(its toggles, read by commands.py) and opens an ASR session per wake, whose id
the release's stopListening names; nothing Rhasspy sends can release audio.
"""

import json

from guard.vocabulary import Event

TOGGLES = ("hermes/hotword/toggleOff", "hermes/hotword/toggleOn")
START_LISTENING = "hermes/asr/startListening"
SUBSCRIPTIONS = (*TOGGLES, START_LISTENING)


class HermesSite:
    """One Rhasspy site, named by the device id, and the ASR session Rhasspy opened for its latest wake."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.session: str | None = None
        self.audio_topic = f"hermes/audioServer/{device_id}/audioFrame"

    def detected(self, event: Event) -> tuple[str, bytes]:
        """The hotword message for a wake; Rhasspy answers it with a new session."""
        self.session = None
        # wakewordId = device id: the broker ACL can confine a topic, never the siteId inside a payload
        return f"hermes/hotword/{self.device_id}/detected", json.dumps(
            {"siteId": self.device_id, "modelId": event.model, "currentSensitivity": event.threshold}).encode()

    def heard_start_listening(self, payload: bytes) -> None:
        self.session = asr_session(payload, self.device_id) or self.session

    def release(self, chunks: list[bytearray]) -> list[tuple[str, bytes | bytearray]]:
        """A released utterance as audio frames, then the end of the ASR session, so Rhasspy transcribes now."""
        messages: list[tuple[str, bytes | bytearray]] = [(self.audio_topic, chunk) for chunk in chunks]
        if self.session is not None:
            messages.append(("hermes/asr/stopListening",
                             json.dumps({"siteId": self.device_id, "sessionId": self.session}).encode()))
        return messages


def asr_session(payload: bytes, device_id: str) -> str | None:
    """The sessionId of a Hermes asr/startListening for this site, if it is one; it only names the session
    the release's stopListening ends, so anything odd is simply not one."""
    try:
        message = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or message.get("siteId") != device_id:
        return None
    session = message.get("sessionId")
    return session if isinstance(session, str) and 0 < len(session) <= 200 and session.isprintable() else None
