"""What a remote message may ask for: only ever more privacy (mute, unmute a remote mute, cancel, wipe).

Pure functions, no paho: `mqtt.py` hands every inbound message here, and the
daemon maps the verb to the gate. There is no verb that releases audio or
changes where it may go.
"""

import json
import threading
import time
from collections import deque
from collections.abc import Callable

from guard.hermes import TOGGLES

VERBS = ("mute", "unmute", "cancel", "wipe")
MAX_COMMAND_BYTES = 1024
HERMES_SESSION_REASONS = ("dialogueSession", "playAudio", "ttsSay")  # rhasspy-hermes HotwordToggleReason
COMMANDS_PER_MINUTE = 30  # remote commands beyond this are counted, not acted on one by one


class CommandError(ValueError):
    """An inbound message that is not a command guard accepts."""


def parse_command(topic: str, payload: bytes, device_id: str) -> tuple[str, str] | None:
    """Who asks ("remote" for the hub's commands, "rhasspy" for Hermes toggles) and the verb, or None if
    the message is not addressed to commands at all. Rhasspy's unmute lifts only Rhasspy's mute.

    Raises CommandError for anything under our `cmd/` tree (or Hermes toggles for
    this site) that is not one of the documented verbs with a valid payload.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"payload of {len(payload)} bytes on {topic!r} is over {MAX_COMMAND_BYTES}")
    prefix = f"guard/{device_id}/cmd/"
    if topic.startswith(prefix):
        verb = topic[len(prefix):]
        if verb == "remote_mute":  # Home Assistant's switch: ON / OFF on one topic
            text = payload.decode("utf-8", "replace").strip().upper()
            if text not in ("ON", "OFF"):
                raise CommandError(f"remote_mute takes ON or OFF, not {text[:20]!r}")
            return "remote", "mute" if text == "ON" else "unmute"
        if verb not in VERBS:
            raise CommandError(f"unknown command {verb[:40]!r}; known: {', '.join(VERBS)}, remote_mute")
        return "remote", verb
    if topic in TOGGLES:
        try:
            body = json.loads(payload)
            site, reason = body.get("siteId"), body.get("reason", "")
        except (ValueError, AttributeError, RecursionError):
            raise CommandError(f"{topic}: payload is not a JSON object") from None
        if site != device_id or reason in HERMES_SESSION_REASONS:
            return None  # Rhasspy pauses wake words during its own dialogue or playback: not a privacy mute
        return "rhasspy", "mute" if topic.endswith("Off") else "unmute"
    return None


class CommandRate:
    """At most `per_minute` remote commands act in any minute; the excess is told once, then counted.

    Shared by the link's two connections' threads. A mute never asks: it is never held back.

    Args:
        tell: receives the one-line notice of ignored commands (the hub's error topic).
        clock: monotonic seconds.
    """

    def __init__(self, tell: Callable[[str], None], per_minute: int = COMMANDS_PER_MINUTE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tell, self.per_minute, self.clock = tell, per_minute, clock
        self.recent: deque[float] = deque()  # when the commands of the last minute came
        self._ignored = 0
        self._lock = threading.Lock()

    def allows(self) -> bool:
        """True when one more command may act now."""
        with self._lock:
            now = self.clock()
            while self.recent and now - self.recent[0] > 60:
                self.recent.popleft()
            if len(self.recent) < self.per_minute:
                self.recent.append(now)
                if self._ignored:
                    self.tell(f"{self._ignored} remote command(s) over {self.per_minute}/min were ignored")
                    self._ignored = 0
                return True
            self._ignored += 1
            if self._ignored == 1:
                self.tell(f"over {self.per_minute} remote commands a minute: ignoring the excess")
            return False
