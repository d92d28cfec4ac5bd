"""`guard run`: one loop owns the gate; the audio thread and gpiozero only queue messages.

The audio thread reads the source and posts copies of 80 ms frames; when the
gate mutes, that same thread closes the microphone stream. The loop zeroes
every frame after the gate has seen it, and drains the queue on mute and exit.
A microphone that errors, vanishes or delivers only zeros is a lasting fault:
the audio thread drops it and opens it afresh with backoff until it is back.
"""

import logging
import queue
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from guard.audit import AuditLog
from guard.config import Config
from guard.dsp import FRAME_SECONDS
from guard.errors import ExitStatus
from guard.esphome import EsphomeServer
from guard.gate import Delivery, Gate
from guard.hardware import ConsentButton
from guard.inbox import (
    ButtonMove,
    ButtonMoved,
    ChooseWakeWords,
    Command,
    Delivered,
    FollowUp,
    Frame,
    Inbox,
    Lane,
    Message,
    Refusal,
    SourceFailed,
    Stop,
    TimerHeard,
)
from guard.microphone import Microphone
from guard.mqtt import MqttLink
from guard.outputs import Outputs
from guard.satellite import AssistSatellite
from guard.sinks import Sink
from guard.sound import Speaker
from guard.systemd import Notifier
from guard.timers import Timer, Timers
from guard.vocabulary import Event, EventKind, State

log = logging.getLogger(__name__)

TICK_SECONDS = 0.05  # the loop wakes at least this often for its timers and the watchdog
DELIVERY_GRACE_SECONDS = 4.0  # at exit, a release still running gets this long; systemd's stop timeout is longer


class AudioClock:
    """Time measured in audio consumed, for `--fast` file runs that must not wait in real time."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds


@dataclass
class RunOptions:
    """Per-run choices: where audio comes from, which GPIO, how fast a file plays."""

    source: str = "mic"
    gpio: str = "auto"
    fast: bool = False
    publish: Callable[[Event], None] = field(default=lambda e: None)


class Deliveries:
    """Consented releases, run one at a time and in order in a thread of their own, so a slow sink holds up
    neither the button, remote mute nor the watchdog; each is posted back to the loop to be recorded.

    Args:
        post: the loop's inbox, which receives `Delivered` for each release once its sinks are done.
    """

    def __init__(self, post: Callable[[Delivered], object]) -> None:
        self.post = post
        self.unfinished: list[Delivery] = []  # handed to the thread and not yet recorded by the loop
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, delivery: Delivery) -> None:
        self.unfinished.append(delivery)
        self._queue.put(delivery)

    def recorded(self, delivery: Delivery) -> None:
        """The loop has recorded this release's outcomes."""
        self.unfinished = [d for d in self.unfinished if d is not delivery]

    def _run(self) -> None:
        while (delivery := self._queue.get()) is not None:
            delivery.run()
            self.post(Delivered(delivery))

    def finish(self, record: Callable[[Delivery], None]) -> None:
        """At exit: give releases still on their way a moment, then stop them and record what really happened."""
        self._queue.put(None)
        self._thread.join(DELIVERY_GRACE_SECONDS)
        for delivery in self.unfinished:  # not yet recorded by the loop; abandoning a finished one changes nothing
            delivery.abandon("still delivering when the guard stopped; stopped")
        self._thread.join(1.0)
        for delivery in self.unfinished:
            record(delivery)
        self.unfinished = []


@dataclass(eq=False)
class Daemon:
    """Runs the loop over parts `assembly.assemble` built from the config: one message at a time, then the timers
    and the watchdog; at exit everything held is wiped and every part closed."""

    config: Config
    options: RunOptions
    inbox: Inbox  # every thread posts here; the loop serves the button's lane first
    clock: Callable[[], float]
    listening: threading.Event  # cleared while muted: the audio thread then closes the microphone
    stopping: threading.Event
    audit: AuditLog
    mqtt: MqttLink | None
    speaker: Speaker | None
    satellite: AssistSatellite | None
    esphome: EsphomeServer | None
    sinks: list[Sink]
    pin_factory: object | None  # tests press its mock pins
    button: ConsentButton | None
    outputs: Outputs  # the LED, chimes and ring the gate shows itself through
    deliveries: Deliveries
    gate: Gate
    audio: Microphone
    health: dict[str, str]
    notifier: Notifier
    _dropped_reported: int = field(default=0, init=False)
    _swallowing: bool = field(default=False, init=False)  # the press that stopped a ring: its up and hold go nowhere

    @property
    def timers(self) -> Timers:
        """Home Assistant's timers: the outputs own them, since a ring shows on the LED over the gate's pattern."""
        return self.outputs.timers

    def set_listening(self, on: bool) -> None:
        """The gate's mute (the audio thread closes the microphone; frames already queued are zeroed) or unmute."""
        if on:
            self.audio.listening_again()
            self.listening.set()
            return
        self.listening.clear()
        self._drain()

    def _drain(self) -> None:
        """Zero and drop queued frames (mute, exit)."""
        for frame in self.inbox.take_all(Lane.FRAMES):
            frame.samples.fill(0)

    def stop(self) -> None:
        """Ask the loop to finish (signal handlers call this)."""
        self.stopping.set()
        self.listening.set()
        self.inbox.post(Stop())

    def run(self) -> None:
        """Serve until stopped, or until a file source ends and nothing is pending.

        Raises:
            AuditError: another guard is writing the same audit log.
        """
        self.audit.open()
        self.deliveries.start()
        if self.audit.problem:  # read-only or full: keep guarding, but nothing can be captured without a record
            self.gate.fault(f"audit log unavailable: {self.audit.problem}")
        if self.mqtt is not None:
            self.mqtt.start()
        if self.satellite is not None:
            self.satellite.start()
        if self.esphome is not None:
            self.esphome.start()
        reader = threading.Thread(target=self.audio.read, name="audio", daemon=True)
        reader.start()
        self.audio.listening_again()
        self.notifier.ready(f"guarding as {self.config.device.resolved_id()}")
        log.info("guarding as %s: %d sink(s), audit log %s", self.config.device.resolved_id(), len(self.sinks),
                 self.audit.path)
        try:
            while not self.stopping.is_set():
                self.step()
                if self.audio.ended.is_set() and self.inbox.empty() and self._file_done():
                    break
        finally:
            self.notifier.stopping()
            self.stopping.set()
            self.listening.set()
            self._drain()
            self.gate.shutdown()
            self.deliveries.finish(self.gate.delivered)
            reader.join(timeout=2)
            if self.satellite is not None:
                self.satellite.stop()  # its last counts of refusals come to the inbox: record them
            for message in self.inbox.take_all(Lane.REMOTE):
                if isinstance(message, Refusal):
                    self._handle(message)
            if self.mqtt is not None:
                self.mqtt.stop()
            if self.esphome is not None:
                self.esphome.stop()
            self._close()

    def step(self) -> None:
        """The loop's body: serve the next message (or none within a tick), then the timers and the watchdog."""
        message = self.inbox.get(TICK_SECONDS)
        try:
            self._handle(message)
            self.gate.tick()
            self.timers.tick()
            self.notifier.watchdog(self.audio.alive())
            self._report_dropped()
            if self.audio.check(idle=self.gate.state is State.IDLE):
                self.stop()
        except Exception as e:  # the loop's edge: log, wipe, show fault, keep serving
            log.exception("fault in the guard loop")
            self.gate.fault(f"{type(e).__name__}: {e}")
        finally:
            if isinstance(message, Frame):
                message.samples.fill(0)

    def _report_dropped(self) -> None:
        """Remote requests the bounded lane had no room for: one warning each time more were dropped."""
        dropped = self.inbox.dropped
        if dropped > self._dropped_reported:
            log.warning("%d remote request(s) dropped: they came faster than the guard serves them",
                        dropped - self._dropped_reported)
            self._dropped_reported = dropped

    def _handle(self, message: Message | None) -> None:
        match message:
            case Frame(samples, generation):
                self._hear(samples, generation)
            case ButtonMoved(move) if self.timers.ringing or self._swallowing:
                self._stop_ring(move)
            case ButtonMoved(ButtonMove.DOWN, at):
                self.gate.button_down(at)
            case ButtonMoved(ButtonMove.UP, at):
                self.gate.button_up(at)
            case ButtonMoved(ButtonMove.HELD, at):
                self.gate.button_held(at)
            case Command(by, verb):
                {"mute": self.gate.mute, "unmute": self.gate.unmute, "cancel": self.gate.cancel,
                 "wipe": self.gate.wipe}[verb](by)
            case Refusal(by, peer, kind, reason, count):
                self.gate.refuse(by, f"{kind}: {reason}", peer=peer, count=count)
            case ChooseWakeWords(by, names):
                self._choose_wake_words(by, names)
            case TimerHeard(kind, timer_id, name, total, left):
                self.timers.heard(kind, Timer(timer_id, name, total, left))
            case FollowUp(by, prompt_seconds):
                self.gate.follow_up(by, prompt_seconds)
            case SourceFailed(reason, generation):
                self.audio.failed(reason, generation)
            case Delivered(delivery):
                self.deliveries.recorded(delivery)
                self.gate.delivered(delivery)

    def _choose_wake_words(self, by: str, names: tuple[str, ...]) -> None:
        """Listen for these of the configured wake words only (others are ignored); the change is on the record."""
        configured = self.config.wake.models
        chosen = tuple(name for name in configured if name in names)
        self.gate.record(EventKind.WAKE_WORDS, self.gate.state, by=by, model=",".join(chosen) or "none")
        self.gate.detector.active = frozenset(chosen)
        if self.esphome is not None:
            self.esphome.show_wake_words(chosen)

    def _stop_ring(self, move: ButtonMove) -> None:
        """A press while a timer rings only stops the ring: the gate never hears it, so it releases nothing."""
        if move is ButtonMove.DOWN:
            self.timers.stop("the button")
            self._swallowing = True
        elif move is ButtonMove.UP:
            self._swallowing = False

    def _hear(self, samples: np.ndarray, generation: int) -> None:
        self.audio.heard(samples, generation)
        self.gate.feed(samples)
        if self.options.fast:
            self.clock.seconds += FRAME_SECONDS

    def _file_done(self) -> bool:
        """After a file ends: close the utterance, let a pending window run out, then stop."""
        if self.gate.state is State.CAPTURING:
            self.gate.end_capture()
        expires = self.gate.expires_at()
        if expires is not None and self.options.fast:
            self.clock.seconds = max(self.clock.seconds, expires)
        return expires is None

    def _close(self) -> None:
        self.audit.close()
        self.outputs.close()
        if self.speaker is not None:
            self.speaker.close()
        self.audio.drop()
        if self.button is not None:
            self.button.close()


def serve(daemon: Daemon) -> int:
    """Run the loop with SIGTERM, SIGINT and SIGHUP asking it to stop cleanly (buffers wiped, records closed).

    Returns:
        OK after SIGTERM or the end of a file; INTERRUPTED (130) after Ctrl-C; FAILURE after SIGHUP (a
        hang-up nobody asked for: systemd's Restart=on-failure starts it again).
    """
    received: list[int] = []

    def handler(signum, frame) -> None:
        received.append(signum)
        daemon.stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        daemon.run()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if signal.SIGHUP in received:
        log.warning("hung up (SIGHUP): everything held was wiped; exiting 1 so that systemd starts a fresh guard")
        return ExitStatus.FAILURE
    return ExitStatus.INTERRUPTED if signal.SIGINT in received else ExitStatus.OK
