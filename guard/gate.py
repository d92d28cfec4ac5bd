"""The privacy gate: the only code that may hand audio to a sink.

idle -> (wake) -> capturing -> (end of utterance) -> pending -> released | discarded -> idle.
Audio leaves only on a button press that *began* after the LED showed pending,
after the button had been up for a quiet time (so contact bounce and chatter
never count), and ended before a long press; never on a press from before, a
held or stuck button, or any remote command. Everything not released is zeroed: on discard,
timeout, mute, fault and shutdown. Every decision goes to the audit log first.
"""

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from guard.audit import AuditLog
from guard.config import GateConfig
from guard.confirm import SpokenConfirmation
from guard.dsp import RATE_HZ, level_dbfs
from guard.endpoint import EndOfSpeech
from guard.errors import AuditError, DeliveryUncertain, SinkError
from guard.ringbuffer import CaptureBuffer, RingBuffer
from guard.sinks import Sink, Utterance
from guard.vocabulary import Event, EventKind, LedPattern, State
from guard.wake import WakeDetector
from guard.wav import encode_wav

log = logging.getLogger(__name__)

FAULT_SHOW_SECONDS = 3.0  # how long the LED shows a fault before listening resumes


@dataclass
class Delivery:
    """One consented release on its way to its sinks; `run` may happen in another thread.

    The WAV is a bytearray so that it can be zeroed once every sink has it (paho
    keeps its own copy of an MQTT payload until the broker acknowledges it).
    """

    utterance: Utterance
    wav: bytearray
    sinks: list[Sink]
    confirmed_by: str
    duration_seconds: float
    extra: dict
    outcomes: list[tuple[str, EventKind, str, str]] = field(default_factory=list)  # (sink, outcome, where/why, to)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _abandoned: bool = False
    started: bool = False  # a sink has been handed the WAV

    def run(self) -> None:
        """Hand the WAV to each sink in turn and note what happened; then zero it."""
        with self._lock:
            if self._abandoned:
                return
            self.started = True
        try:
            for sink in self.sinks:
                try:
                    to = sink.deliver(self.wav, self.utterance)
                    self._note(sink.name, EventKind.RELEASED, to, to)
                except DeliveryUncertain as e:
                    self._note(sink.name, EventKind.RELEASE_UNKNOWN, str(e), sink.destination())
                except SinkError as e:
                    self._note(sink.name, EventKind.RELEASE_FAILED, str(e), "")
        finally:
            self.wav[:] = bytes(len(self.wav))

    def _note(self, sink: str, outcome: EventKind, detail: str, to: str) -> None:
        with self._lock:
            if not self._abandoned:  # after abandon, the record already says what may have happened
                self.outcomes.append((sink, outcome, detail, to))

    def record(self, record: "Record", state: State) -> EventKind:
        """Put each sink's outcome on the record (a released or release-unknown one names who received the
        audio, `to`); returns RELEASED when a sink has the audio, RELEASE_UNKNOWN when one may, else DISCARDED
        (recorded here: every sink failed)."""
        u = self.utterance.id
        for sink, outcome, detail, to in self.outcomes:
            if outcome is EventKind.RELEASED:
                log.info("released %s to %s (%s)", u, sink, detail)
                record(EventKind.RELEASED, state, u, outcome=True, sink=sink, to=to[:200],
                       confirmed_by=self.confirmed_by, duration_seconds=self.duration_seconds, **self.extra)
            else:
                log.error("%s", detail)
                record(outcome, state, u, outcome=True, sink=sink, reason=detail[:200], to=to[:200] or None)
        kinds = {outcome[1] for outcome in self.outcomes}
        for kind in (EventKind.RELEASED, EventKind.RELEASE_UNKNOWN):
            if kind in kinds:
                return kind
        record(EventKind.DISCARDED, state, u, outcome=True, reason="every sink failed",
               duration_seconds=self.duration_seconds)
        return EventKind.DISCARDED

    def abandon(self, why: str) -> None:
        """Shutdown while sinks still run: whatever they did not finish may still arrive; then stop them."""
        with self._lock:
            self._abandoned = True
            done = {outcome[0] for outcome in self.outcomes}
            if self.started:
                self.outcomes += [(s.name, EventKind.RELEASE_UNKNOWN, f"sink {s.name}: {why}; it may still arrive",
                                   s.destination()) for s in self.sinks if s.name not in done]
            else:
                why = "the guard stopped before it was sent"
                self.outcomes += [(s.name, EventKind.RELEASE_FAILED, f"sink {s.name}: {why}", "") for s in self.sinks]
                self.wav[:] = bytes(len(self.wav))
        for sink in self.sinks:
            sink.cancel()


class Held:
    """Every sample the gate holds: the pre-roll ring while idle, then the capture of one request (its name,
    its audio and where its talker stopped, so what came after is cut before anything is shown or released),
    and what the detector and the spoken confirmation keep of recent audio."""

    def __init__(self, pre_roll_seconds: float, settings: GateConfig, detector: WakeDetector,
                 confirmation: SpokenConfirmation | None) -> None:
        self.detector, self.confirmation = detector, confirmation
        self.ring = RingBuffer(pre_roll_seconds)
        self.capture = CaptureBuffer(pre_roll_seconds + settings.max_utterance_seconds)
        self.end = EndOfSpeech(settings.end_silence_seconds, settings.silence_dbfs)
        self.utterance: Utterance | None = None  # the request held now, from its wake (or question) to its end

    def before(self, frame: np.ndarray, frame_dbfs: float) -> None:
        """A frame heard while idle: kept as pre-roll, and measured for the room's level."""
        self.ring.write(frame)
        self.end.hear(frame_dbfs)

    def begin(self) -> None:
        """A wake: the pre-roll becomes the start of a new request's capture, and the ring is wiped."""
        self._name()
        self.capture.load(self.ring)
        self.ring.wipe()
        self.end.start(len(self.capture))

    def answer(self, prompt_seconds: float) -> None:
        """A hub's question: a new request's capture starts empty (the pre-roll is the prompt and what came
        before), and the ring is wiped."""
        self._name()
        self.capture.wipe()
        self.ring.wipe()
        self.end.answer(prompt_seconds)

    def _name(self) -> None:
        self.utterance = Utterance(uuid.uuid4().hex[:12], datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"))

    def add(self, frame: np.ndarray, frame_dbfs: float) -> bool:
        """A frame of the request; False once the request is complete (full, or its talker stopped)."""
        return self.capture.append(frame) and not self.end.push(frame_dbfs)

    def close(self) -> None:
        """Cut what came after the talker stopped."""
        self.capture.cut(self.end.kept_samples())

    def seconds(self) -> float:
        return round(len(self.capture) / RATE_HZ, 2)

    def wipe(self) -> None:
        self.utterance = None
        self.capture.wipe()
        self.ring.wipe()
        self.detector.wipe()
        if self.confirmation is not None:
            self.confirmation.wipe()

    def is_wiped(self) -> bool:
        """True when no buffer holds a sample of audio."""
        return self.capture.is_zero() and self.ring.is_zero() and not self.detector.holds_audio()


class ConsentPolicy:
    """Which consent releases to which sink: per sink name, "button" and/or "voice"; the button by default."""

    def __init__(self, sinks: list[Sink], accepts: dict[str, tuple[str, ...]]) -> None:
        self.all, self.accepts = sinks, accepts

    def accepted_by(self, sink: Sink) -> tuple[str, ...]:
        return self.accepts.get(sink.name, ("button",))

    def eligible(self, confirmed_by: str) -> list[Sink]:
        """The sinks a release confirmed this way goes to."""
        return [sink for sink in self.all if confirmed_by in self.accepted_by(sink)]


class PressRule:
    """When a press of the consent button may release: it began after the LED showed pending, after the
    button had been up for `quiet_seconds` (so contact bounce and chatter never count), and it came up
    before a long press. Times are the gate's clock seconds."""

    def __init__(self, quiet_seconds: float) -> None:
        self.quiet_seconds = quiet_seconds
        self.opened_at = math.inf  # when the LED began to show pending; no press counts before it
        self._counts = False  # the press now down began inside the window, after a quiet time
        self._up_since = -math.inf

    def open(self, at: float) -> None:
        self.opened_at = at

    def close(self) -> None:
        self.opened_at = math.inf

    def forget(self) -> None:
        """The press now down, if any, will not release (a long press, a new pending)."""
        self._counts = False

    def down(self, at: float, pending: bool) -> None:
        self._counts = pending and at >= self.opened_at and at - self._up_since >= self.quiet_seconds

    def up(self, at: float) -> bool:
        """The button came up: True when this press counts."""
        counts, self._counts = self._counts, False
        self._up_since = at
        return counts


class Record:
    """The gate's one way onto the record: audit first, then log and publish.

    Never raises for the audit log: a mute or a discard must still happen (and is published).
    What must not happen without its record (capture, pending, release) passes `required`: then
    nothing is published and the caller backs out. What a release turned out to be (`outcome`)
    may spend the room the log keeps for it.
    """

    def __init__(self, audit: AuditLog, publish: Callable[[Event], None],
                 holding: Callable[[], str | None] = lambda: None) -> None:
        self.audit, self.publish, self.holding = audit, publish, holding

    def __call__(self, kind: EventKind, state: State, utterance: str | None = None, required: bool = False,
                 outcome: bool = False, **fields) -> bool:
        """Audit, log and publish one decision about `utterance` (default: the one held now); False when the
        audit log could not take it."""
        if utterance is None:
            utterance = self.holding()
        try:
            (self.audit.record_outcome if outcome else self.audit.record)(kind, utterance=utterance, **fields)
            recorded = True
        except AuditError as e:
            recorded = False
            if required:
                log.error("%s; %s refused", e, kind)
                return False
            log.error("%s; %s is kept in memory and written when the log can take it", e, kind)
            self.audit.defer(kind, utterance=utterance, **fields)
        event = Event(kind, state, datetime.now(UTC).isoformat(timespec="milliseconds"), utterance, **fields)
        log.info("%s %s", kind, " ".join(f"{k}={v}" for k, v in event.to_dict().items() if k not in ("kind", "time")))
        self.publish(event)
        return recorded


class Gate:
    """Decides, frame by frame and press by press, what happens to captured audio.

    One loop owns it; PortAudio and gpiozero callbacks only queue messages for
    that loop. Collaborators are passed in, so tests drive it with real models,
    a real audit log and a test clock.

    Args:
        pre_roll_seconds: audio kept before the wake word ends.
        sinks: where a confirmed utterance goes (may be empty: then nothing can leave).
        audit: the decision log, written before each decision takes effect.
        accepts: per sink name, which consents release to it ("button", "voice"); default button only.
        confirmation: the enrolled spoken phrase, or None (then only the button consents).
        publish, show, set_listening: where decisions go: every Event (printing, MQTT), the LED's pattern, the
            microphone opened (True) or closed (False).
        hold_playback: True while nothing from a hub may play (a spoken confirmation may be awaited), else False.
        deliver: runs a Delivery and then hands it back to `delivered` on the loop; default: right here.
        clock: monotonic seconds.
    """

    def __init__(self, settings: GateConfig, detector: WakeDetector, pre_roll_seconds: float,
                 sinks: list[Sink], audit: AuditLog, accepts: dict[str, tuple[str, ...]] | None = None,
                 confirmation: SpokenConfirmation | None = None, publish: Callable[[Event], None] = lambda e: None,
                 show: Callable[[LedPattern], None] = lambda s: None,
                 set_listening: Callable[[bool], None] = lambda b: None,
                 hold_playback: Callable[[bool], None] = lambda b: None,
                 clock: Callable[[], float] = time.monotonic,
                 deliver: Callable[[Delivery], None] | None = None) -> None:
        self.settings = settings
        self.detector = detector
        self.policy = ConsentPolicy(sinks, accepts or {})
        self.record = Record(audit, publish, holding=lambda: self.held.utterance.id if self.held.utterance else None)
        self.confirmation = confirmation if self.policy.eligible("voice") else None
        self.held = Held(pre_roll_seconds, settings, detector, self.confirmation)
        self._show, self._set_listening, self._hold_playback, self.clock = show, set_listening, hold_playback, clock
        self._deliver = deliver or self._deliver_here
        self.state = State.IDLE
        self.muted_by: str | None = None
        self.press = PressRule(settings.button_quiet_seconds)
        self._fault_until = 0.0

    # -- audio -----------------------------------------------------------------

    def feed(self, frame: np.ndarray) -> None:
        """One 80 ms frame from the microphone."""
        if self.state in (State.MUTED, State.FAULT):
            return
        level = level_dbfs(frame)  # measured once: the end of a request and the models' rest both use it
        if self.state is State.IDLE:
            self.held.before(frame, level)
        listening = self.state is State.PENDING and self.confirmation is not None  # for a spoken confirmation
        detections = self.detector.process(frame, keep_awake=listening, frame_dbfs=level)
        if listening and self.confirmation.listen(self.detector.features, frame, level):
            heard = self.confirmation
            self._release("voice", match_score=round(heard.matched_score, 4),
                          speaker_score=round(heard.speaker_score, 3), matched_in_noise=heard.in_noise)
            return
        if self.state is State.IDLE:
            if detections:
                wake = max(detections, key=lambda d: d.score)
                self._start_capture(EventKind.WAKE, self.held.begin, **wake.on_record())
        elif self.state is State.CAPTURING and not self.held.add(frame, level):
            self.end_capture()
        if detections and self.state is not State.CAPTURING:
            log.debug("wake %s ignored while %s", detections[0].model, self.state)

    def follow_up(self, by: str, prompt_seconds: float) -> None:
        """A hub asked a question and its prompt has played: the answer is captured as a request after a wake word
        is, and leaves only on a local consent; refused unless the guard is idle (a mute or a held request wins)."""
        if self.state is not State.IDLE:
            self.refuse(by, f"follow-up: the guard is {self.state}")
            return
        self._start_capture(EventKind.FOLLOW_UP, lambda: self.held.answer(prompt_seconds), by=by)

    def _start_capture(self, kind: EventKind, begin: Callable[[], None], **fields) -> None:
        begin()
        self.press.close()  # no consent window until this utterance's pending is shown
        if not self.record(kind, State.CAPTURING, required=True, **fields):
            self.fault(f"the audit log cannot take the {kind} record; nothing is captured")
            return
        self._enter(State.CAPTURING)

    def end_capture(self) -> None:
        """The utterance is complete: cut what came after its talker stopped, record it, show pending, and
        only then open the consent window."""
        if self.state is not State.CAPTURING:
            return
        self.held.close()
        if self.held.end.unanswered:
            self._discard("unanswered")
            return
        self.press.forget()
        if self.confirmation is not None:
            self.confirmation.reset()  # only what is said from now on can confirm
        levels = self.held.end.levels
        if not self.record(EventKind.PENDING, State.PENDING, required=True, duration_seconds=self.held.seconds(),
                            talker_dbfs=levels.talker_dbfs, room_dbfs=levels.room_dbfs):
            self.fault("the audit log cannot take the pending record; the utterance is wiped")
            return
        self._enter(State.PENDING, show=LedPattern.PENDING_VOICE if self.confirmation is not None else None)
        self.press.open(self.clock())  # the LED shows pending from here: a press must begin after this

    # -- the button ---------------------------------------------------------------

    def button_down(self, at: float) -> None:
        """The button went down at `at` (clock seconds); whether that press may release is the PressRule's."""
        self.press.down(at, pending=self.state is State.PENDING)

    def button_up(self, at: float) -> None:
        """The button came up: a short press that counted releases the audio."""
        if self.press.up(at) and self.state is State.PENDING:
            self._release("button")

    def button_held(self, at: float) -> None:
        """A long press toggles the hardware mute; it never releases anything."""
        self.press.forget()  # a long press never releases
        if self.state is State.MUTED:
            self.unmute("button")
        else:
            self.mute("button")

    # -- decisions ------------------------------------------------------------------

    def _deliver_here(self, delivery: Delivery) -> None:
        delivery.run()
        self.delivered(delivery)

    def _release(self, confirmed_by: str, **extra) -> None:
        """Hand the utterance to every sink that accepts this consent, on the record before and after: the audio
        is encoded and wiped here, the sinks run in `deliver` (another thread in the daemon, so a slow sink
        blocks neither the button nor a mute), and `delivered` records what came of it."""
        eligible = self.policy.eligible(confirmed_by)
        if not eligible:
            self._discard("no sink configured" if not self.policy.all else f"no sink accepts {confirmed_by} consent")
            return
        if not self.record(EventKind.RELEASING, self.state, required=True, sink=",".join(s.name for s in eligible),
                            confirmed_by=confirmed_by, duration_seconds=self.held.seconds(), **extra):
            self.fault("the audit log cannot take the release record; nothing was released")
            return
        delivery = Delivery(self.held.utterance, encode_wav(self.held.capture.view()), eligible, confirmed_by,
                            self.held.seconds(), extra)
        self.held.wipe()
        self._enter(State.IDLE)
        self._deliver(delivery)

    def delivered(self, delivery: Delivery) -> None:
        """The sinks are done: their outcomes go on the record, and the LED shows a release, or a fault when
        no sink is sure it has the audio (unless a new utterance is held: then only the record says so)."""
        outcome = delivery.record(self.record, self.state)
        if outcome is EventKind.RELEASED and self.state is State.IDLE:
            self._show(LedPattern.RELEASED)
        elif outcome is EventKind.RELEASE_UNKNOWN:
            reason, u = "no sink confirmed the release; it may still arrive (see the audit log)", delivery.utterance.id
            if self.state is State.IDLE:
                self.fault(reason, utterance=u, outcome=True)
            else:
                self.record(EventKind.FAULT, self.state, utterance=u, outcome=True, reason=reason)

    def _discard(self, reason: str) -> None:
        """Wipe the request held (captured or waiting for consent), on the record; nothing when none is."""
        if self.state not in (State.CAPTURING, State.PENDING):
            return
        self.record(EventKind.DISCARDED, State.IDLE, reason=reason, duration_seconds=self.held.seconds())
        self.held.wipe()
        self._enter(State.IDLE)

    def tick(self) -> None:
        """Time passing: the confirmation window closes; a shown fault clears."""
        now = self.clock()
        if self.state is State.PENDING and now >= self.expires_at():  # the same sum expires_at() reports
            self._discard("timeout")
        elif self.state is State.FAULT and now >= self._fault_until:
            self._enter(State.IDLE)

    def expires_at(self) -> float | None:
        """When the current state ends by itself (pending window, shown fault), or None."""
        if self.state is State.PENDING:
            return self.press.opened_at + self.settings.pending_timeout_seconds
        if self.state is State.FAULT:
            return self._fault_until
        return None

    def mute(self, by: str) -> None:
        """Close the microphone and wipe everything held; only `by` (or the button) lifts it."""
        if self.state is State.MUTED:
            return
        self._discard(EventKind.MUTED)  # the reason: a mute
        self._set_listening(False)
        self.held.wipe()
        self.muted_by = by
        self._decide(EventKind.MUTED, State.MUTED, by=by)

    def unmute(self, by: str) -> None:
        """Reopen the microphone. Only who muted (or the button) can: a remote unmute never lifts a button mute."""
        if self.state is not State.MUTED:
            return
        if by != "button" and self.muted_by != by:
            self.refuse(by, f"unmute: the {self.muted_by} muted, only the {self.muted_by}"
                            + (" unmutes" if self.muted_by == "button" else " or the button unmutes"))
            return
        self.muted_by = None
        self._decide(EventKind.UNMUTED, State.IDLE, by=by)
        self._set_listening(True)

    def refuse(self, by: str, reason: str, **fields) -> None:
        """Put a request that was not acted on (it would have made the device less private) on the record;
        `fields` say who asked (peer) and how often (count), for refusals counted by their source."""
        self.record(EventKind.REFUSED, self.state, by=by, reason=reason[:200], **fields)

    def cancel(self, by: str) -> None:
        """Discard the utterance being captured or waiting for consent, now."""
        self._discard(f"cancelled by {by}")

    def wipe(self, by: str) -> None:
        """Discard anything held and zero every buffer, whatever the state."""
        self._discard(f"wiped by {by}")
        self.held.wipe()
        self.record(EventKind.WIPED, self.state, by=by)

    def fault(self, reason: str, lasting: bool = False, **fields) -> None:
        """Something broke: close the utterance's record, wipe, and show the fault for FAULT_SHOW_SECONDS (or,
        when `lasting`, until `recovered`); keep serving. A muted guard stays muted: the fault is only recorded."""
        if self.state in (State.CAPTURING, State.PENDING) and self.held.utterance is not None:
            self.record(EventKind.DISCARDED, State.FAULT, reason=f"fault: {reason}"[:200],
                         duration_seconds=self.held.seconds())
        self.held.wipe()
        if self.state is State.MUTED:
            self.record(EventKind.FAULT, State.MUTED, reason=reason[:200], **fields)
            return
        self._fault_until = self.clock() + (math.inf if lasting else FAULT_SHOW_SECONDS)
        self._decide(EventKind.FAULT, State.FAULT, reason=reason[:200], **fields)

    def recovered(self, reason: str) -> None:
        """What a lasting fault waited for is back: listen again (a muted guard stays muted)."""
        self._decide(EventKind.RECOVERED, State.IDLE if self.state is State.FAULT else self.state, reason=reason)

    def shutdown(self) -> None:
        """On SIGTERM/SIGINT: nothing held survives the process."""
        self._discard("shutdown")
        self.held.wipe()

    def _decide(self, kind: EventKind, state: State, **fields) -> None:
        self.record(kind, state, **fields)
        self._enter(state)

    def _enter(self, state: State, show: LedPattern | None = None) -> None:
        """The state changes; while a spoken confirmation may follow, nothing from a hub plays.

        The hold starts with the capture, not with pending: frames heard while the pending record is being
        written are listened to once pending begins, so a sound a hub started then could reach the listener
        (a fresh-clone run under load played 0.7 s of the enrolled phrase in that gap)."""
        self.state = state
        self._hold_playback(self.confirmation is not None and state in (State.CAPTURING, State.PENDING))
        self._show(show or LedPattern.of(state))
