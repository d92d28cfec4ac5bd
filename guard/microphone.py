"""The audio source, supervised: read in its own thread, a stream a glitch broke restarted at once, a microphone
that cannot be opened (or gives only digital zeros) retried with backoff, and the loop told when it failed and
when it is back.

The audio thread only reads and posts (frames and failures, to the inbox). What a failure means is decided in
the loop, here too (`failed`, `heard`, `check`), and shown through the gate's fault and recovery records.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from guard import parts
from guard.audio import MicSource
from guard.config import AudioConfig
from guard.dsp import FRAME_SECONDS
from guard.errors import DeviceError
from guard.inbox import Frame, Inbox, Lane, SourceFailed
from guard.wav import WavSource

log = logging.getLogger(__name__)

TICK_SECONDS = 0.05
AUDIO_STALL_SECONDS = 3.0  # no frame for this long while listening: the audio side is hung (watchdog stops)
MIC_HUNG_SECONDS = 10.0  # a read blocked this long cannot be interrupted: exit 1 so that systemd restarts
MIC_RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)  # backoff while the microphone cannot be opened, or gives only zeros
READ_RETRY_SECONDS = 0.05  # a read error: the stream is restarted at once, so a glitch costs a fraction of a second
READ_RETRIES = 10  # restarts in a row that deliver no frame: then the microphone is dropped and backoff begins
FLAP_SECONDS = 10.0  # a microphone that fails again this soon after it came back must give sound this long to be back
QUEUE_FRAMES = 50  # 4 s of audio: a slow loop holds the reader back instead of dropping frames


class Microphone:
    """The configured microphone (`source` "mic"), or a file played as if it were, read by `read` in its own thread.

    Args:
        audio: the [audio] table.
        source: "mic", or a WAV file played as if it were the microphone.
        fast: a file plays as fast as it can be read (time is then measured in audio by the caller).
        inbox: where frames and failures go.
        listening: cleared while muted (a microphone's stream is then closed, a file pauses).
        stopping: set when the guard stops.
        fault, recovered: the gate's fault and recovery, for a microphone that fails and one that is back.
        health: the guard's health lines (shown at start and in the retained MQTT state); "audio" is kept here.
        clock: monotonic seconds for the rules (zeros, a hung read, flapping, backoff); tests pass their own.
    """

    def __init__(self, audio: AudioConfig, source: str, fast: bool, inbox: Inbox, listening: threading.Event,
                 stopping: threading.Event, fault: Callable[[str, bool], None], recovered: Callable[[str], None],
                 health: dict[str, str], clock: Callable[[], float] = time.monotonic) -> None:
        self.audio, self.is_mic, self.fast, self.clock = audio, source == "mic", fast, clock
        self.inbox, self.listening, self.stopping = inbox, listening, stopping
        self._fault, self._recovered, self._health = fault, recovered, health
        self.down: str | None = None  # why the microphone is failing, until it delivers sound again
        self.failure: str | None = None  # why the source is beyond retrying: `guard run` exits 1
        self._generation = 0  # counts microphones opened afresh: frames of a failed one never prove it is back
        self._down_generation = -1
        self._frame_generation = 0  # the generation of the newest frame the loop has seen
        self._reopen = threading.Event()  # the loop asks the audio thread to drop the microphone and open it afresh
        self._attempt = 0  # reopen attempts since the microphone last delivered sound (the backoff's step)
        self._back_at = -FLAP_SECONDS  # when the microphone last came back (monotonic)
        self._flapping = False  # it failed again within FLAP_SECONDS of coming back
        self._sound_since: float | None = None  # since when a reopened microphone has given sound, unbroken
        self._zeros_since: float | None = None  # since when the microphone has delivered only exact zeros
        self._heartbeat = self.clock()  # the audio thread is alive (reading, or waiting to retry)
        self._last_frame = self.clock()
        self.ended = threading.Event()  # the audio thread has finished (a file's end, or stop)
        self.source = WavSource(Path(source)) if not self.is_mic else self._open_mic()
        health["audio"] = self.health()

    def _open_mic(self) -> MicSource | None:
        """The microphone; None (retried by the audio thread) when it is not there yet."""
        try:
            return parts.microphone(self.audio)
        except DeviceError as e:
            self.down = str(e)
            return None

    @property
    def label(self) -> str:
        source = self.source  # the audio thread may drop it meanwhile
        return source.name if isinstance(source, MicSource) else str(self.audio.device or "the default microphone")

    def health(self) -> str:
        source = self.source  # the audio thread may drop it meanwhile
        if isinstance(source, MicSource):
            return f"{source.name} at {source.rate_hz} Hz"
        return str(source.path) if isinstance(source, WavSource) else f"waiting for the microphone: {self.down}"

    # -- the audio thread -----------------------------------------------------------

    def read(self) -> None:
        """The audio thread: frames to the inbox at the pace they are heard, until stopped or the file ends."""
        paced = not self.is_mic and not self.fast
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
                self.post(frame)
        except Exception as e:  # a dying audio thread must not take the guard's state with it
            log.error("audio source failed: %s", e)
            self._post_failure(e)
        finally:
            if self.source is not None:
                self.source.wipe()
            self.ended.set()

    def post(self, frame: np.ndarray) -> None:
        """Hand a copy of one frame to the loop (the copy is zeroed once the gate has seen it)."""
        self.inbox.post(Frame(frame.copy(), self._generation))

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
            self._heartbeat = self.clock()
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
                for frame in self.source.frames():  # the loop's last frame shows these are alive
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
            self.source = parts.microphone(self.audio)  # opens its stream
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
        self.drop()
        self._wait(MIC_RETRY_SECONDS[min(self._attempt, len(MIC_RETRY_SECONDS) - 1)])
        self._attempt += 1
        self._reopen.clear()

    def drop(self) -> None:
        """Close the microphone and PortAudio itself: a device plugged back in is only seen by a fresh start."""
        source, self.source = self.source, None
        if isinstance(source, MicSource):
            try:
                source.close()
            except Exception as e:  # a device that has gone may fail to close; it is dropped all the same
                log.debug("closing the failed microphone: %s", e)

    def _wait(self, seconds: float) -> None:
        """Sleep in the audio thread, staying responsive to stop and showing it is alive to the watchdog."""
        until = self.clock() + seconds
        while not self.stopping.is_set() and self.clock() < until:
            self._heartbeat = self.clock()
            self.stopping.wait(TICK_SECONDS)

    # -- the loop's side ------------------------------------------------------------

    def heard(self, samples: np.ndarray, generation: int) -> None:
        """A frame reached the loop: it proves the audio side alive, and sound from a microphone opened after
        it failed proves it is back; only exact zeros count towards `zeros_fault_seconds`."""
        self._last_frame = self.clock()
        self._frame_generation = generation
        if samples.any():
            self._zeros_since = None
            if self.down is not None and generation > self._down_generation:
                self._sound_again()
        elif self._zeros_since is None:
            self._zeros_since = self._last_frame

    def listening_again(self) -> None:
        """Unmuted: the reopened microphone gets its own grace period."""
        self._last_frame = self.clock()
        self._zeros_since = None

    def alive(self) -> bool:
        """Frames keep coming, the audio thread is waiting to retry a failed mic, or no frames are expected
        (muted, or the file has ended)."""
        expected = self.listening.is_set() and not self.ended.is_set()
        return not expected or self.clock() - self._last_alive() < AUDIO_STALL_SECONDS

    def _last_alive(self) -> float:
        return max(self._last_frame, self._heartbeat)

    def check(self, idle: bool) -> bool:
        """A microphone that delivers only exact zeros has failed (open it afresh); one whose read never returns
        cannot be helped from inside this process: True, the guard must stop (exit 1, systemd restarts).
        `idle`: the gate is idle."""
        if not self.is_mic or not self.listening.is_set() or self.failure:
            return False
        if self.down is not None and idle:  # unmuted while it is still failing
            self._fault(f"audio source failed: {self.down}; retrying", True)
        now, limit = self.clock(), self.audio.zeros_fault_seconds
        if now - self._last_alive() >= MIC_HUNG_SECONDS:
            self.failure = f"no audio from {self.label} for {MIC_HUNG_SECONDS:g} s (hung)"
            self._fault(f"audio source failed: {self.failure}", False)
            return True
        if limit and self._zeros_since is not None and now - self._zeros_since >= limit:
            self.failed(f"{self.label} delivered only digital zeros for {limit:g} s (unplugged?)")
        return False

    def failed(self, why: str, generation: int | None = None) -> None:
        """A file that cannot be read ends the run (exit 1); a failing microphone is a fault until a stream
        opened after `generation` (the failed one's) delivers sound. Without a generation the failure is the
        loop's own finding (zeros): then the audio thread must drop the microphone and open it afresh."""
        if not self.is_mic:
            self.failure = why
            self._fault(f"audio source failed: {why}", False)
            return
        if generation is None:
            self._reopen.set()
            generation = self._frame_generation
        self._zeros_since = self._sound_since = None
        self._down_generation = max(self._down_generation, generation)
        if self.down == why:
            log.debug("microphone still failing: %s", why)
            return
        first = self.down is None
        if first:  # a microphone that keeps failing soon after it is back is one fault, not a record per flap
            self._flapping = self.clock() - self._back_at < FLAP_SECONDS
        self.down = why
        self._health["audio"] = f"failing, retrying: {why}"
        if first:
            self._fault(f"audio source failed: {why}; retrying", True)
        else:
            log.warning("microphone still failing, now: %s; retrying", why)

    def _sound_again(self) -> None:
        """Sound from a microphone opened after it failed: it is back, or, after flapping, once that lasts."""
        now = self.clock()
        if self._sound_since is None:
            self._sound_since = now
        if not self._flapping or now - self._sound_since >= FLAP_SECONDS:
            self._back()

    def _back(self) -> None:
        self._back_at, self._flapping, self._sound_since = self.clock(), False, None
        self.down = None
        self._attempt = 0
        self._health["audio"] = self.health()
        self._recovered(f"{self.label} delivers sound again")
