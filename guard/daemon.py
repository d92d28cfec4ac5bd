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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from guard import parts, sinks
from guard.audio import FRAME_SECONDS, MicSource, WavSource
from guard.audit import AuditLog
from guard.config import Config
from guard.confirm import EnrollError, Enrolment, SpokenConfirmation
from guard.errors import DeviceError, ExitStatus, UsageError
from guard.gate import Delivery, Gate
from guard.hardware import ConsentButton, StatusLed, pin_factory
from guard.inbox import (
    ButtonMove,
    ButtonMoved,
    Command,
    Delivered,
    Frame,
    Inbox,
    Lane,
    Message,
    Refusal,
    SourceFailed,
    Stop,
)
from guard.mqtt import MqttLink
from guard.satellite import AssistSatellite
from guard.sound import Chimes, Speaker
from guard.systemd import Notifier
from guard.vocabulary import Event, LedPattern, State
from guard.wake import WakeDetector

log = logging.getLogger(__name__)

TICK_SECONDS = 0.05
AUDIO_STALL_SECONDS = 3.0  # no frame for this long while listening: the audio side is hung (watchdog stops)
DELIVERY_GRACE_SECONDS = 4.0  # at exit, a release still running gets this long; systemd's stop timeout is longer
MIC_HUNG_SECONDS = 10.0  # a read blocked this long cannot be interrupted: exit 1 so that systemd restarts
MIC_RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)  # backoff while the microphone cannot be opened, or gives only zeros
READ_RETRY_SECONDS = 0.05  # a read error: the stream is restarted at once, so a glitch costs a fraction of a second
READ_RETRIES = 10  # restarts in a row that deliver no frame: then the microphone is dropped and backoff begins
FLAP_SECONDS = 10.0  # a microphone that fails again this soon after it came back must give sound this long to be back
QUEUE_FRAMES = 50  # 4 s of audio: a slow loop holds the reader back instead of dropping frames


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


class Daemon:
    """Wires source, detector, gate, button, LED, sinks and audit together, and runs the loop."""

    def __init__(self, config: Config, options: RunOptions, detector: WakeDetector) -> None:
        self.config, self.options = config, options
        self.inbox = Inbox()  # every thread posts here; the loop serves the button's lane first
        self._dropped_reported = 0
        self.listening = threading.Event()
        self.listening.set()
        self.stopping = threading.Event()
        self.clock = AudioClock() if options.fast else time.monotonic
        device_id = config.device.resolved_id()
        self.audit = AuditLog(config.audit.resolved_path(), device_id)
        self.mqtt = MqttLink(config.mqtt, device_id, self._post_command, self.audit,
                             config.audit.resolved_path().parent / "mqtt-discovered") \
            if config.mqtt.host else None
        self.speaker = Speaker(config.audio.output_device) if config.audio.output_device else None
        self.chimes = Chimes(self.speaker, config.audio.chime_volume) if config.audio.chimes else None
        self.satellite = AssistSatellite(config.wyoming, device_id, self.inbox.post, list(config.wake.models),
                                         self.speaker) if config.wyoming.uri else None
        self.sinks = sinks.build(config.sinks, device_id, self.mqtt, self.satellite)
        self.pin_factory, self.button, self.led = self._gpio()  # tests press the mock factory's pins
        accepts = {name: sink.confirm for name, sink in config.sinks.items()}
        self._outgoing: queue.Queue[Delivery | None] = queue.Queue()  # consented releases for the delivery thread
        self._unfinished: list[Delivery] = []
        self._delivery_thread = threading.Thread(target=self._deliveries, name="delivery", daemon=True)
        self.gate = Gate(config.gate, detector, config.audio.pre_roll_seconds, self.sinks, self.audit,
                         accepts=accepts, confirmation=self._spoken_confirmation(accepts), publish=self._publish,
                         show=self._show, set_listening=self._set_listening,
                         clock=self.clock, deliver=self._deliver_in_background)
        self._mic_down: str | None = None  # why the microphone is failing, until it delivers sound again
        self._generation = 0  # counts microphones opened afresh: frames of a failed one never prove it is back
        self._down_generation = -1
        self._frame_generation = 0  # the generation of the newest frame the loop has seen
        self._reopen = threading.Event()  # the loop asks the audio thread to drop the microphone and open it afresh
        self._attempt = 0  # reopen attempts since the microphone last delivered sound (the backoff's step)
        self._back_at = -FLAP_SECONDS  # when the microphone last came back (monotonic)
        self._flapping = False  # it failed again within FLAP_SECONDS of coming back
        self._sound_since: float | None = None  # since when a reopened microphone has given sound, unbroken
        self._audio_heartbeat = time.monotonic()  # the audio thread is alive (reading, or waiting to retry)
        self.source = self._open_source()
        self.health = self._health()
        if self.mqtt is not None:
            self.mqtt.health = self.health
        self._eof = threading.Event()
        self.source_failure: str | None = None  # why the audio source is beyond retrying: `guard run` exits 1
        self._zeros_since: float | None = None  # since when the microphone has delivered only exact zeros
        self.notifier = Notifier()
        self._last_frame = time.monotonic()

    def _gpio(self) -> tuple[object | None, ConsentButton | None, StatusLed | None]:
        if self.options.gpio == "none":
            voice = [name for name, sink in self.config.sinks.items() if "voice" in sink.confirm]
            if voice:
                raise UsageError(f"[sinks.{voice[0]}] accepts spoken confirmation, but --gpio none has no LED to "
                                 "show that a release is pending; use --gpio auto, or remove \"voice\" from its "
                                 "confirm list")
            log.warning("no GPIO (--gpio none): nothing can be released by button; every utterance is wiped")
            return None, None, None
        factory = pin_factory(self.options.gpio)
        return factory, ConsentButton(self.config.gpio, self._post_move, factory), StatusLed(self.config.gpio, factory)

    def _open_source(self) -> MicSource | WavSource | None:
        """The file, or the microphone; None (retried by the audio thread) when the microphone is not there yet."""
        if self.options.source != "mic":
            return WavSource(Path(self.options.source))
        try:
            return self._new_mic()
        except DeviceError as e:
            self._mic_down = str(e)
            return None

    def _new_mic(self) -> MicSource:
        return parts.microphone(self.config.audio)

    @property
    def _mic_label(self) -> str:
        source = self.source  # the audio thread may drop it meanwhile
        return source.name if isinstance(source, MicSource) else str(self.config.audio.device or
                                                                     "the default microphone")

    def _publish(self, event: Event) -> None:
        if self.chimes is not None:
            self.chimes.play(event.kind, event.utterance)
        self.options.publish(event)
        if self.mqtt is not None:
            self.mqtt.event(event)

    def _spoken_confirmation(self, accepts: dict[str, tuple[str, ...]]) -> SpokenConfirmation | None:
        """The enrolled phrase if some sink accepts voice; fails closed (button only) on any problem."""
        if not any("voice" in a for a in accepts.values()):
            return None
        try:
            return SpokenConfirmation(Enrolment.load(self.config.confirm.resolved_path()))
        except EnrollError as e:
            log.warning("spoken confirmation off: %s; the button still works", e)
            return None

    def _health(self) -> dict[str, str]:
        """One line per part, logged at start and kept in the retained MQTT state for `guard status`."""
        words = self.gate.detector.words
        return {
            "audio": self._audio_health(),
            "models": ", ".join(f"{w.name} ({w.settings.engine}, threshold {w.threshold:g})" for w in words),
            "buffers": self._buffers_health(),
            "gpio": {"none": "none: nothing can be released by button", "mock": "simulated pins"}.get(
                self.options.gpio, f"button GPIO{self.config.gpio.button_pin}, "
                                   f"{self.config.gpio.led_type} LED GPIO{list(self.config.gpio.led_pins)}"),
            "mqtt": f"{self.config.mqtt.host}:{self.config.mqtt.port}" if self.mqtt else "off",
            "assist satellite": self._satellite_health(),
            "sinks": ", ".join(f"{s.name} ({type(s).__name__}, by {' or '.join(self.gate.accepted_by(s))})"
                               for s in self.sinks) or "none",
            "spoken confirmation": "listening while pending" if self.gate.confirmation else "off",
        }

    def _satellite_health(self) -> str:
        if self.satellite is None:
            return "off"
        speaker = self.satellite.speaker
        return f"{self.config.wyoming.uri} as {self.satellite.name!r}; answers " + (
            f"play on {speaker.name}" if speaker else "are not played (no [audio] output_device)")

    def _audio_health(self) -> str:
        source = self.source  # the audio thread may drop it meanwhile
        if isinstance(source, MicSource):
            return f"{source.name} at {source.rate_hz} Hz"
        return str(source.path) if isinstance(source, WavSource) else f"waiting for the microphone: {self._mic_down}"

    def _buffers_health(self) -> str:
        """Every buffer that holds audio and could not be locked in RAM, by name and size."""
        buffers = {"pre-roll ring": self.gate.ring, "capture": self.gate.capture}
        if self.gate.confirmation is not None:
            buffers["spoken-confirmation window"] = self.gate.confirmation.heard
        unlocked = [f"{name} ({b.nbytes // 1024} KiB)" for name, b in buffers.items() if not b.locked]
        if not unlocked:
            return f"all {len(buffers)} locked in RAM"
        problem = (f"not locked in RAM: {', '.join(unlocked)}; they may swap to disk; "
                   "raise LimitMEMLOCK or grant CAP_IPC_LOCK")
        log.warning("mlock refused: %s", problem)
        return problem

    def _deliver_in_background(self, delivery: Delivery) -> None:
        """Queue a release for the delivery thread: a slow sink holds up neither the button, remote mute nor
        the watchdog. Releases go out one at a time, in order."""
        self._unfinished.append(delivery)
        self._outgoing.put(delivery)

    def _deliveries(self) -> None:
        """The delivery thread: run each release, then hand it back to the loop to be recorded."""
        while True:
            delivery = self._outgoing.get()
            if delivery is None:
                return
            delivery.run()
            self.inbox.post(Delivered(delivery))

    def _finish_deliveries(self) -> None:
        """At exit: give releases still on their way a moment, then stop them and record what really happened."""
        self._outgoing.put(None)
        self._delivery_thread.join(DELIVERY_GRACE_SECONDS)
        for delivery in self._unfinished:  # not yet recorded by the loop; abandoning a finished one changes nothing
            delivery.abandon("still delivering when the guard stopped; stopped")
        self._delivery_thread.join(1.0)
        for delivery in self._unfinished:
            self.gate.delivered(delivery)
        self._unfinished = []

    def _post_move(self, move: ButtonMove) -> None:
        """The button moved (gpiozero's thread), stamped with the time it happened."""
        self.inbox.post(ButtonMoved(move, self.clock()))

    def _post_command(self, by: str, verb: str) -> None:
        """A remote command (paho's thread)."""
        self.inbox.post(Command(by, verb))

    def _show(self, pattern: LedPattern) -> None:
        """The LED shows the pattern; while a spoken confirmation is awaited nothing from the hub plays."""
        if self.satellite is not None:
            held = pattern is LedPattern.PENDING_VOICE
            (self.satellite.playback_held.set if held else self.satellite.playback_held.clear)()
        if self.led is not None:
            self.led.show(pattern)

    def _set_listening(self, on: bool) -> None:
        if on:
            self._last_frame = time.monotonic()  # the reopened mic gets its own grace period
            self._zeros_since = None
            self.listening.set()
            return
        self.listening.clear()
        self._drain()

    def _drain(self) -> None:
        """Zero and drop queued frames (mute, exit)."""
        for frame in self.inbox.take_all(Lane.FRAMES):
            frame.samples.fill(0)

    # -- the audio thread -----------------------------------------------------------

    def _frames(self) -> Iterator[np.ndarray]:
        """Frames while listening. Muted, a mic's stream is closed here, in the thread that reads it."""
        if isinstance(self.source, WavSource):
            for frame in self.source.frames():
                while not self.listening.is_set() and not self.stopping.is_set():
                    self.listening.wait(TICK_SECONDS)  # a file pauses while muted
                yield frame
            return
        restarts = 0  # stream restarts in a row whose stream failed before it delivered a frame
        while not self.stopping.is_set():
            self._audio_heartbeat = time.monotonic()
            if not self.listening.is_set():
                if self.source is not None:
                    self.source.close_stream()
                self.listening.wait(TICK_SECONDS)
                continue
            if self._reopen.is_set() or restarts > READ_RETRIES:  # zeros, or a stream that fails at every read
                self._back_off()
                restarts = 0
                continue
            try:
                self._open_stream()
            except Exception as e:  # no such device, PortAudio's OSError: open it afresh, with backoff
                self._post_failure(e)
                self._back_off()
                continue
            delivered = False
            try:
                for frame in self.source.frames():  # the loop's _last_frame shows these are alive
                    delivered = True
                    yield frame
                    if not self.listening.is_set() or self.stopping.is_set() or self._reopen.is_set():
                        break
            except Exception as e:  # a read error (a USB glitch, an overrun, a vanished device): restart the stream
                self._post_failure(e)
                restarts = 1 if delivered else restarts + 1
                self._restart_stream()

    def _open_stream(self) -> None:
        """Open the microphone's stream if it is closed; each stream opened is a new generation of frames."""
        if self.source is None:
            self.source = self._new_mic()  # opens its stream
        elif not self.source.is_open:
            self.source.open()
        else:
            return
        self._generation += 1

    def _post_failure(self, error: Exception) -> None:
        self.inbox.post(SourceFailed(str(error) or type(error).__name__, self._generation))

    def _restart_stream(self) -> None:
        """A read failed: close the stream and let the next turn open it again, without the backoff that
        only a microphone that cannot be opened earns."""
        try:
            self.source.close_stream()
        except Exception as e:  # a stream in error may fail to close; it is dropped all the same
            log.debug("closing the failed stream: %s", e)
        self._wait(READ_RETRY_SECONDS)

    def _back_off(self) -> None:
        """Drop the microphone and wait longer at each attempt, until it delivers sound again."""
        self._drop_mic()
        self._wait(MIC_RETRY_SECONDS[min(self._attempt, len(MIC_RETRY_SECONDS) - 1)])
        self._attempt += 1
        self._reopen.clear()

    def _drop_mic(self) -> None:
        """Close the microphone and PortAudio itself: a device plugged back in is only seen by a fresh start."""
        source, self.source = self.source, None
        if isinstance(source, MicSource):
            try:
                source.close()
            except Exception as e:  # a device that has gone may fail to close; it is dropped all the same
                log.debug("closing the failed microphone: %s", e)

    def _wait(self, seconds: float) -> None:
        """Sleep in the audio thread, staying responsive to stop and showing it is alive to the watchdog."""
        until = time.monotonic() + seconds
        while not self.stopping.is_set() and time.monotonic() < until:
            self._audio_heartbeat = time.monotonic()
            self.stopping.wait(TICK_SECONDS)

    def _read(self) -> None:
        paced = isinstance(self.source, WavSource) and not self.options.fast
        next_due = time.monotonic()
        try:
            for frame in self._frames():
                if paced:  # like a microphone, a frame is there once its 80 ms have been heard
                    next_due = max(next_due + FRAME_SECONDS, time.monotonic() - FRAME_SECONDS)  # no burst after a pause
                    time.sleep(max(0.0, next_due - time.monotonic()))
                if self.stopping.is_set():
                    break
                while self.inbox.size(Lane.FRAMES) >= QUEUE_FRAMES and not self.stopping.is_set():
                    time.sleep(TICK_SECONDS / 10)  # back-pressure: the loop is behind
                self.post_frame(frame)
        except Exception as e:  # a dying audio thread must not take the guard's state with it
            log.error("audio source failed: %s", e)
            self._post_failure(e)
        finally:
            if self.source is not None:
                self.source.wipe()
            self._eof.set()

    def post_frame(self, frame: np.ndarray) -> None:
        """Hand a copy of one frame to the loop (the copy is zeroed once the gate has seen it)."""
        self.inbox.post(Frame(frame.copy(), self._generation))

    # -- the loop -----------------------------------------------------------------

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
        self._delivery_thread.start()
        if self.audit.problem:  # read-only or full: keep guarding, but nothing can be captured without a record
            self.gate.fault(f"audit log unavailable: {self.audit.problem}")
        if self.mqtt is not None:
            self.mqtt.start()
        if self.satellite is not None:
            self.satellite.start()
        reader = threading.Thread(target=self._read, name="audio", daemon=True)
        reader.start()
        self._last_frame = time.monotonic()
        self.notifier.ready(f"guarding as {self.config.device.resolved_id()}")
        log.info("guarding as %s: %d sink(s), audit log %s", self.config.device.resolved_id(), len(self.sinks),
                 self.audit.path)
        try:
            while not self.stopping.is_set():
                self.step()
                if self._eof.is_set() and self.inbox.empty() and self._file_done():
                    break
        finally:
            self.notifier.stopping()
            self.stopping.set()
            self.listening.set()
            self._drain()
            self.gate.shutdown()
            self._finish_deliveries()
            reader.join(timeout=2)
            if self.satellite is not None:
                self.satellite.stop()  # its last counts of refusals come to the inbox: record them
            for message in self.inbox.take_all(Lane.REMOTE):
                if isinstance(message, Refusal):
                    self._handle(message)
            if self.mqtt is not None:
                self.mqtt.stop()
            self._close()

    def step(self) -> None:
        """The loop's body: serve the next message (or none within a tick), then the timers and the watchdog."""
        message = self.inbox.get(TICK_SECONDS)
        try:
            self._handle(message)
            self.gate.tick()
            self.notifier.watchdog(self._audio_alive())
            self._report_dropped()
            self._check_microphone()
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

    def _audio_alive(self) -> bool:
        """Frames keep coming, the audio thread is waiting to retry a failed mic, or no frames are expected
        (muted, or the file has ended)."""
        expected = self.listening.is_set() and not self._eof.is_set()
        return not expected or time.monotonic() - self._last_alive() < AUDIO_STALL_SECONDS

    def _last_alive(self) -> float:
        return max(self._last_frame, self._audio_heartbeat)

    def _check_microphone(self) -> None:
        """A microphone that delivers only exact zeros has failed (open it afresh); one whose read never returns
        cannot be helped from inside this process (stop, exit 1, systemd restarts)."""
        if self.options.source != "mic" or not self.listening.is_set() or self.source_failure:
            return
        if self._mic_down is not None and self.gate.state is State.IDLE:  # unmuted while it is still failing
            self.gate.fault(f"audio source failed: {self._mic_down}; retrying", lasting=True)
        now, limit = time.monotonic(), self.config.audio.zeros_fault_seconds
        if now - self._last_alive() >= MIC_HUNG_SECONDS:
            self.source_failure = f"no audio from {self._mic_label} for {MIC_HUNG_SECONDS:g} s (hung)"
            self.gate.fault(f"audio source failed: {self.source_failure}")
            self.stop()
        elif limit and self._zeros_since is not None and now - self._zeros_since >= limit:
            self._source_failed(f"{self._mic_label} delivered only digital zeros for {limit:g} s (unplugged?)")

    def _source_failed(self, why: str, generation: int | None = None) -> None:
        """A file that cannot be read ends the run (exit 1); a failing microphone is a fault until a stream
        opened after `generation` (the failed one's) delivers sound. Without a generation the failure is the
        loop's own finding (zeros): then the audio thread must drop the microphone and open it afresh."""
        if self.options.source != "mic":
            self.source_failure = why
            self.gate.fault(f"audio source failed: {why}")
            return
        if generation is None:
            self._reopen.set()
            generation = self._frame_generation
        self._zeros_since = self._sound_since = None
        self._down_generation = max(self._down_generation, generation)
        if self._mic_down == why:
            log.debug("microphone still failing: %s", why)
            return
        first = self._mic_down is None
        if first:  # a microphone that keeps failing soon after it is back is one fault, not a record per flap
            self._flapping = time.monotonic() - self._back_at < FLAP_SECONDS
        self._mic_down = why
        self.health["audio"] = f"failing, retrying: {why}"
        if first:
            self.gate.fault(f"audio source failed: {why}; retrying", lasting=True)
        else:
            log.warning("microphone still failing, now: %s; retrying", why)

    def _sound_again(self) -> None:
        """Sound from a microphone opened after it failed: it is back, or, after flapping, once that lasts."""
        now = time.monotonic()
        if self._sound_since is None:
            self._sound_since = now
        if not self._flapping or now - self._sound_since >= FLAP_SECONDS:
            self._mic_back()

    def _mic_back(self) -> None:
        self._back_at, self._flapping, self._sound_since = time.monotonic(), False, None
        self._mic_down = None
        self._attempt = 0
        self.health["audio"] = self._audio_health()
        self.gate.recovered(f"{self._mic_label} delivers sound again")

    def _handle(self, message: Message | None) -> None:
        match message:
            case Frame(samples, generation):
                self._hear(samples, generation)
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
            case SourceFailed(reason, generation):
                self._source_failed(reason, generation)
            case Delivered(delivery):
                self._unfinished = [d for d in self._unfinished if d is not delivery]
                self.gate.delivered(delivery)

    def _hear(self, samples: np.ndarray, generation: int) -> None:
        self._last_frame = time.monotonic()
        self._frame_generation = generation
        if samples.any():
            self._zeros_since = None
            if self._mic_down is not None and generation > self._down_generation:
                self._sound_again()
        elif self._zeros_since is None:
            self._zeros_since = self._last_frame
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
        if self.chimes is not None:
            self.chimes.close()
        if self.speaker is not None:
            self.speaker.close()
        self._drop_mic()
        for part in (self.button, self.led):
            if part is not None:
                part.close()


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
