"""The microphone through PortAudio, and the capture and playback devices it finds.

The only module that imports pyaudio. It never writes audio anywhere: samples
live in numpy buffers that `wipe()` zeroes.
"""

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from math import ceil

import numpy as np

from guard import boards
from guard.dsp import FRAME_SECONDS, Converter
from guard.errors import DeviceError

log = logging.getLogger(__name__)

NATIVE_RATES_HZ = (16000, 48000, 44100)  # tried in this order when the config names none


@dataclass(frozen=True)
class SoundDevice:
    """A capture (or playback) device as PortAudio reports it."""

    index: int
    name: str
    channels: int
    default_rate_hz: int
    rates_hz: tuple[int, ...]
    board: str | None = None  # a board the guard knows (boards.py), by its name

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Hide ALSA's and JACK's start-up chatter, which is noise, not news, to our users."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def portaudio():
    """pyaudio and a PortAudio instance (the caller terminates it), started without ALSA's chatter."""
    import pyaudio

    with quiet_stderr():
        return pyaudio, pyaudio.PyAudio()


def _supported_rates(pa, pyaudio, index: int, channels: int, output: bool) -> tuple[int, ...]:
    rates = []
    for rate in NATIVE_RATES_HZ:
        way = {"output_device": index, "output_channels": channels, "output_format": pyaudio.paInt16} if output \
            else {"input_device": index, "input_channels": channels, "input_format": pyaudio.paInt16}
        try:
            if pa.is_format_supported(rate, **way):
                rates.append(rate)
        except ValueError:
            continue
    return tuple(rates)


def _channels(info: dict, output: bool) -> int:
    return int(info["maxOutputChannels" if output else "maxInputChannels"])


def _describe(pa, pyaudio, info: dict, output: bool) -> SoundDevice:
    index = int(info["index"])
    board = None if output else boards.recognise(str(info["name"]), _channels(info, output))
    return SoundDevice(index, str(info["name"]), _channels(info, output),
                       int(info["defaultSampleRate"]), _supported_rates(pa, pyaudio, index, 1, output),
                       board.name if board else None)


def list_devices(output: bool = False) -> list[SoundDevice]:
    """Every capture (or playback) device PortAudio can see, with the rates it accepts for mono int16."""
    pyaudio, pa = portaudio()
    try:
        with quiet_stderr():
            infos = [pa.get_device_info_by_index(i) for i in range(pa.get_device_count())]
            return [_describe(pa, pyaudio, info, output) for info in infos if _channels(info, output) > 0]
    finally:
        pa.terminate()


def find_device(pa, device: str | int | None, output: bool = False) -> dict:
    """PortAudio's record of the device named by index or part of its name; None or "": the system default."""
    with quiet_stderr():
        found = [pa.get_device_info_by_index(i) for i in range(pa.get_device_count())]
    found = [d for d in found if _channels(d, output) > 0]
    kind = "output" if output else "input"
    if not found:
        if output:
            raise DeviceError("no speaker found; plug one in and check `aplay -l`, or leave [audio] output_device "
                              "empty")
        raise DeviceError("no microphone found; plug one in and check `arecord -l` (without one: guard scan "
                          "FILE.wav, guard run --source FILE.wav, guard enroll confirm --from A.wav B.wav C.wav)")
    if device is None or device == "":
        try:
            with quiet_stderr():
                return pa.get_default_output_device_info() if output else pa.get_default_input_device_info()
        except OSError:
            return found[0]
    if isinstance(device, int) or str(device).isdigit():
        match = [d for d in found if d["index"] == int(device)]
    else:
        match = [d for d in found if str(device).lower() in d["name"].lower()]
    if not match:
        names = "; ".join(f"{d['index']}: {d['name']}" for d in found)
        listing = "guard devices --output" if output else "guard devices"
        raise DeviceError(f"no {kind} device matches {device!r}; `{listing}` lists them ({names})")
    return match[0]


class MicSource:
    """A microphone or mic array read through PortAudio, as 16 kHz mono frames.

    Wiring: any ALSA capture device (USB mic array, I2S HAT). Name it by index
    or by part of its name as `guard devices` shows it.

        mic = MicSource("ReSpeaker", channels=6, channel=0)
        for frame in mic.frames(): ...

    Args:
        device: index, name substring, or None for the system default.
        channels: how many channels to open (a ReSpeaker v2.0 has 6).
        channel: which one to keep (0-based), or None to mix them all.
        rate_hz: native rate to open at; None tries 16000, 48000, 44100.
    """

    def __init__(self, device: str | int | None = None, channels: int = 1,
                 channel: int | None = None, rate_hz: int | None = None) -> None:
        self._pyaudio, self._pa = portaudio()
        try:
            self.info = find_device(self._pa, device)
            self.name = str(self.info["name"])
            board = boards.recognise(self.name, int(self.info["maxInputChannels"]))
            if board is not None and (channels, channel) == (1, None) and board.channels > 1:
                channels, channel = board.channels, board.channel
                log.info("%s: %s; opening %d channels and keeping channel %s ([audio] channels and channel "
                         "choose otherwise)", self.name, board.name, channels, channel)
            if channels > self.info["maxInputChannels"]:
                raise DeviceError(f"{self.name}: has {self.info['maxInputChannels']} input channels, "
                                  f"not {channels}; fix [audio] channels")
            self.channels = channels
            self.rate_hz = rate_hz or self._pick_rate()
            self.converter = Converter(self.rate_hz, channel)
            self._stream = None
            self.open()
        except BaseException:
            self._pa.terminate()
            raise

    def _pick_rate(self) -> int:
        with quiet_stderr():
            rates = _supported_rates(self._pa, self._pyaudio, int(self.info["index"]), self.channels, False)
        return rates[0] if rates else int(self.info["defaultSampleRate"])

    @property
    def block_frames(self) -> int:
        return ceil(self.rate_hz * FRAME_SECONDS)

    def open(self) -> None:
        """Open the input stream (again, after `close_stream`)."""
        if self._stream is not None:
            return
        try:
            with quiet_stderr():
                self._stream = self._pa.open(
                    rate=self.rate_hz, channels=self.channels, format=self._pyaudio.paInt16, input=True,
                    input_device_index=int(self.info["index"]), frames_per_buffer=self.block_frames)
        except (OSError, ValueError) as e:
            raise DeviceError(f"{self.name}: cannot open {self.channels} channel(s) at {self.rate_hz} Hz ({e}); "
                              "try another [audio] rate_hz or channels") from None

    @property
    def is_open(self) -> bool:
        return self._stream is not None

    def frames(self) -> Iterator[np.ndarray]:
        """Yield 80 ms int16 frames until the stream is closed. Each frame is reused."""
        while self._stream is not None:
            data = self._stream.read(self.block_frames, exception_on_overflow=False)
            samples = np.frombuffer(data, "<i2").astype(np.float32).reshape(-1, self.channels)
            yield from self.converter.push(samples)

    def close_stream(self) -> None:
        """Stop capturing: the device is closed, not ignored, and held samples are zeroed."""
        stream, self._stream = self._stream, None  # a stream in error that fails to close is dropped all the same
        self.converter.wipe()
        if stream is not None:
            stream.stop_stream()
            stream.close()

    def wipe(self) -> None:
        self.converter.wipe()

    def close(self) -> None:
        self.close_stream()
        self._pa.terminate()
