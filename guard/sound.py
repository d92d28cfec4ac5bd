"""What the guard plays on the output device: Home Assistant's spoken answers, and short chimes.

The device is opened for each sound and closed after it, so other programs can use it in between; one
sound plays at a time. Nothing here touches the microphone.
"""

import logging
import queue
import threading
import wave
from pathlib import Path

import numpy as np

from guard.audio import find_device, portaudio, quiet_stderr
from guard.dsp import RATE_HZ
from guard.errors import DeviceError
from guard.vocabulary import EventKind

log = logging.getLogger(__name__)

CHIMES = (EventKind.WAKE, EventKind.PENDING, EventKind.RELEASED, EventKind.DISCARDED)  # with a sound (make-chimes)
SOUNDS = Path(__file__).resolve().parent / "sounds"
BUSY_SECONDS = 30.0  # a sound waits this long for the one before it, then gives up


class Speaker:
    """A PortAudio output device, named by index or part of its name (`guard devices --output`)."""

    def __init__(self, device: str) -> None:
        self._pyaudio, self._pa = portaudio()
        try:
            self.info = find_device(self._pa, device, output=True)
        except BaseException:
            self._pa.terminate()
            raise
        self.name = str(self.info["name"])
        self._stream = None
        self._busy = threading.Lock()  # held from start to stop: may be released by another thread

    def start(self, rate_hz: int, width: int, channels: int) -> None:
        """Open the device for one piece of audio in this format (16-bit PCM is what Home Assistant sends)."""
        self.stop()
        if not self._busy.acquire(timeout=BUSY_SECONDS):
            raise DeviceError(f"{self.name}: still playing the sound before after {BUSY_SECONDS:g} s")
        try:
            with quiet_stderr():
                self._stream = self._pa.open(rate=rate_hz, channels=channels, output=True,
                                             format=self._pa.get_format_from_width(width),
                                             output_device_index=int(self.info["index"]))
        except (OSError, ValueError) as e:
            self._busy.release()
            raise DeviceError(f"{self.name}: cannot play {channels} channel(s) of {8 * width}-bit audio at "
                              f"{rate_hz} Hz ({e})") from None

    def write(self, audio: bytes) -> None:
        """Play (blocks until the device has taken it)."""
        if self._stream is not None:
            self._stream.write(audio)

    def stop(self) -> None:
        """Let what was written finish playing, then close the device."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            try:
                stream.stop_stream()
                stream.close()
            finally:
                self._busy.release()

    def play(self, samples: np.ndarray) -> None:
        """One whole 16 kHz mono sound."""
        self.start(RATE_HZ, 2, 1)
        try:
            self.write(samples.tobytes())
        finally:
            self.stop()

    def close(self) -> None:
        self.stop()
        self._pa.terminate()


def read_chime(kind: EventKind, volume: float) -> np.ndarray:
    with wave.open(str(SOUNDS / f"{kind}.wav")) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    return np.round(samples * volume).astype("<i2")


class Chimes:
    """A short sound for wake, pending, released and discarded, so someone who cannot see the LED knows what
    happens (and that a spoken confirmation is being listened for). Played by a thread of their own: the
    loop never waits for a speaker."""

    def __init__(self, speaker: Speaker, volume: float) -> None:
        self.speaker = speaker
        self.sounds = {kind: read_chime(kind, volume) for kind in CHIMES}
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=8)
        self._last: tuple[str, str | None] | None = None
        self._thread = threading.Thread(target=self._run, name="chimes", daemon=True)
        self._thread.start()

    def play(self, kind: EventKind, utterance: str | None = None) -> None:
        """Queue the chime; once per utterance (a release to two sinks chimes once); dropped if 8 wait."""
        if kind not in self.sounds or (kind, utterance) == self._last:
            return
        self._last = (kind, utterance)
        try:
            self._queue.put_nowait(kind)
        except queue.Full:
            log.debug("chime %s dropped: the speaker is behind", kind)

    def _run(self) -> None:
        while (kind := self._queue.get()) is not None:
            try:
                self.speaker.play(self.sounds[kind])
            except (DeviceError, OSError) as e:
                log.warning("chime not played: %s", e)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)
