"""Audio sources (microphone, WAV file) and their conversion to 16 kHz mono frames.

The only module that imports pyaudio. It never writes audio anywhere: samples
live in numpy buffers that `wipe()` zeroes.
"""

import json
import math
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from math import ceil, gcd
from pathlib import Path

import numpy as np

from guard.errors import AudioInputError, DeviceError

RATE_HZ = 16000
FRAME_SAMPLES = 1280  # 80 ms at 16 kHz: the step openWakeWord's models expect
FRAME_SECONDS = FRAME_SAMPLES / RATE_HZ
NATIVE_RATES_HZ = (16000, 48000, 44100)  # tried in this order when the config names none
_KAISER_BETA = 8.0
_PCM_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


class StreamResampler:
    """Polyphase windowed-sinc resampler that keeps its state between blocks.

    Args:
        rate_in_hz: the source rate, any integer (8000-192000 in practice).
        rate_out_hz: the target rate (16000).
    """

    def __init__(self, rate_in_hz: int, rate_out_hz: int = RATE_HZ) -> None:
        g = gcd(rate_in_hz, rate_out_hz)
        self.up, self.down = rate_out_hz // g, rate_in_hz // g
        self.taps = 16 * ceil(max(self.up, self.down) / self.up)
        n = self.taps * self.up
        cutoff = 0.46 / max(self.up, self.down)  # cycles per upsampled sample, below both Nyquists
        t = np.arange(n) - (n - 1) / 2
        proto = 2 * cutoff * np.sinc(2 * cutoff * t) * np.kaiser(n, _KAISER_BETA) * self.up
        self._bank = proto.reshape(self.taps, self.up).T.astype(np.float32)  # [phase, tap]
        self._tap_offsets = np.arange(self.taps)
        self.wipe()

    def wipe(self) -> None:
        """Forget the samples held between blocks."""
        self._history = np.zeros(self.taps - 1, np.float32)
        # Start half a filter late so each output sample lines up with its input time (no group delay).
        self._pos = (self.taps - 1) * self.up + (self.taps * self.up - 1) // 2

    def process(self, block: np.ndarray) -> np.ndarray:
        """Resample one block; returns every output sample it can already compute."""
        if self.up == self.down:
            return block
        buf = np.concatenate((self._history, block))
        count = max(0, -(-(len(buf) * self.up - self._pos) // self.down))
        positions = self._pos + self.down * np.arange(count)
        index, phase = np.divmod(positions, self.up)
        windows = buf[index[:, None] - self._tap_offsets]
        out = np.einsum("nk,nk->n", self._bank[phase], windows)
        next_pos = self._pos + count * self.down
        keep_from = next_pos // self.up - (self.taps - 1)
        self._history = buf[keep_from:].copy()
        buf.fill(0)
        self._pos = next_pos - keep_from * self.up
        return out

    def flush(self) -> np.ndarray:
        """The samples still held back by the filter's look-ahead."""
        if self.up == self.down:
            return np.zeros(0, np.float32)
        return self.process(np.zeros(self.taps // 2, np.float32))


class FrameAssembler:
    """Cuts 16 kHz mono samples into 80 ms int16 frames in preallocated buffers.

    The yielded frame is reused for the next one: copy it to keep it.
    """

    def __init__(self) -> None:
        self._pending = np.zeros(FRAME_SAMPLES, np.float32)
        self._filled = 0
        self.frame = np.zeros(FRAME_SAMPLES, np.int16)

    def push(self, mono: np.ndarray) -> Iterator[np.ndarray]:
        while len(mono):
            take = min(FRAME_SAMPLES - self._filled, len(mono))
            self._pending[self._filled:self._filled + take] = mono[:take]
            self._filled += take
            mono = mono[take:]
            if self._filled == FRAME_SAMPLES:
                yield self._emit()

    def flush(self) -> Iterator[np.ndarray]:
        """Yield the last partial frame, padded with silence, so no audio is dropped."""
        if self._filled:
            self._pending[self._filled:] = 0
            yield self._emit()

    def _emit(self) -> np.ndarray:
        np.rint(self._pending, out=self._pending)
        np.clip(self._pending, -32768, 32767, out=self._pending)
        self.frame[:] = self._pending
        self._pending.fill(0)
        self._filled = 0
        return self.frame

    def wipe(self) -> None:
        self._pending.fill(0)
        self.frame.fill(0)
        self._filled = 0


def level_dbfs(frame: np.ndarray) -> float:
    """RMS level of int16 samples in dB relative to full scale (silence is about -180)."""
    samples = frame.astype(np.float64)  # a dot product: a quarter of np.mean(np.square(...))'s time, per frame
    rms = math.sqrt(float(samples @ samples) / max(len(samples), 1)) / 32768
    return 20 * math.log10(max(rms, 1e-9))


def to_mono(samples: np.ndarray, channel: int | None) -> np.ndarray:
    """Pick one channel of a [frames, channels] block, or mix all when channel is None."""
    if channel is None:
        return samples.mean(axis=1, dtype=np.float32)
    return samples[:, channel].astype(np.float32)


class Converter:
    """Interleaved int16 or float blocks at any rate in, 16 kHz mono frames out."""

    def __init__(self, rate_hz: int, channel: int | None) -> None:
        self.channel = channel
        self.resampler = StreamResampler(rate_hz)
        self.assembler = FrameAssembler()

    def push(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        """Args: samples, float32 in int16 scale, shape [frames, channels]."""
        yield from self.assembler.push(self.resampler.process(to_mono(samples, self.channel)))

    def flush(self) -> Iterator[np.ndarray]:
        yield from self.assembler.push(self.resampler.flush())
        yield from self.assembler.flush()

    def wipe(self) -> None:
        self.resampler.wipe()
        self.assembler.wipe()


@dataclass(frozen=True)
class WavFormat:
    """What a WAV header says about its samples."""

    rate_hz: int
    channels: int
    sample_bytes: int
    is_float: bool
    data_offset: int
    data_bytes: int

    @property
    def duration_seconds(self) -> float:
        return self.data_bytes / (self.sample_bytes * self.channels) / self.rate_hz


def _read_chunks(f) -> Iterator[tuple[bytes, int, int]]:
    """Yield (id, offset of body, size) for each RIFF chunk."""
    f.seek(12)
    while True:
        head = f.read(8)
        if len(head) < 8:
            return
        chunk_id, size = struct.unpack("<4sI", head)
        offset = f.tell()
        yield chunk_id, offset, size
        f.seek(offset + size + (size & 1))


def _parse_fmt(body: bytes, path: Path) -> tuple[int, int, int, bool]:
    if len(body) < 16:
        raise AudioInputError(f"{path}: WAV fmt chunk is truncated")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == 0xFFFE and len(body) >= 40:
        sub = body[24:40]
        tag = struct.unpack("<H", sub[:2])[0] if sub[2:] == _PCM_GUID_TAIL else -1
    if tag not in (1, 3):
        raise AudioInputError(f"{path}: WAV encoding {tag:#x} is not PCM or float; convert it: "
                              "sox IN.wav -b 16 -e signed OUT.wav")
    is_float = tag == 3
    if (is_float and bits not in (32, 64)) or (not is_float and bits not in (8, 16, 24, 32)):
        raise AudioInputError(f"{path}: {bits}-bit {'float' if is_float else 'PCM'} WAV is not supported")
    if channels < 1 or rate < 1000:
        raise AudioInputError(f"{path}: WAV header says {channels} channels at {rate} Hz")
    return rate, channels, bits // 8, is_float


def read_wav_format(path: Path) -> WavFormat:
    """Parse a WAV header, including WAVE_FORMAT_EXTENSIBLE, without reading the audio."""
    try:
        with path.open("rb") as f:
            riff = f.read(12)
            if len(riff) == 0:
                raise AudioInputError(f"{path}: file is empty, not a WAV file")
            if len(riff) < 12 or riff[:4] not in (b"RIFF", b"RF64") or riff[8:12] != b"WAVE":
                raise AudioInputError(f"{path}: not a WAV file (no RIFF/WAVE header)")
            fmt = None
            file_bytes = os.fstat(f.fileno()).st_size
            for chunk_id, offset, size in _read_chunks(f):
                if chunk_id == b"fmt ":
                    f.seek(offset)
                    fmt = _parse_fmt(f.read(size), path)
                elif chunk_id == b"data":
                    if fmt is None:
                        raise AudioInputError(f"{path}: WAV data chunk comes before its fmt chunk")
                    rate, channels, width, is_float = fmt
                    size = min(size, file_bytes - offset)  # streamed WAVs leave the size at 0xFFFFFFFF
                    size -= size % (width * channels)
                    return WavFormat(rate, channels, width, is_float, offset, size)
    except IsADirectoryError:
        raise AudioInputError(f"{path}: is a directory, not a WAV file") from None
    except FileNotFoundError:
        raise AudioInputError(f"{path}: no such file") from None
    except PermissionError:
        raise AudioInputError(f"{path}: permission denied") from None
    raise AudioInputError(f"{path}: WAV file has no {'data' if fmt else 'fmt'} chunk")


def decode_samples(data: bytes, fmt: WavFormat) -> np.ndarray:
    """Bytes to float32 in int16 scale, shape [frames, channels]."""
    if fmt.is_float:
        raw = np.frombuffer(data, "<f4" if fmt.sample_bytes == 4 else "<f8")
        samples = raw.astype(np.float32) * 32768
    elif fmt.sample_bytes == 1:
        samples = (np.frombuffer(data, np.uint8).astype(np.float32) - 128) * 256
    elif fmt.sample_bytes == 2:
        samples = np.frombuffer(data, "<i2").astype(np.float32)
    elif fmt.sample_bytes == 3:
        b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
        samples = ((b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) >> 8).astype(np.float32) / 256
    else:
        samples = np.frombuffer(data, "<i4").astype(np.float32) / 65536
    return samples.reshape(-1, fmt.channels)


class WavSource:
    """A WAV file of any PCM or float format, streamed as 16 kHz mono frames.

    Args:
        path: the file.
        channel: which channel to keep (0-based), or None to mix them all.
    """

    BLOCK_SECONDS = 0.5

    def __init__(self, path: Path, channel: int | None = None) -> None:
        self.path = path
        self.format = read_wav_format(path)
        if channel is not None and channel >= self.format.channels:
            raise AudioInputError(f"{path}: has {self.format.channels} channels, no channel {channel}")
        self.converter = Converter(self.format.rate_hz, channel)

    def frames(self) -> Iterator[np.ndarray]:
        """Yield 80 ms int16 frames; the last is padded with silence. Each frame is reused."""
        fmt = self.format
        block_bytes = int(fmt.rate_hz * self.BLOCK_SECONDS) * fmt.sample_bytes * fmt.channels
        remaining = fmt.data_bytes
        with self.path.open("rb") as f:
            f.seek(fmt.data_offset)
            while remaining > 0:
                data = f.read(min(block_bytes, remaining))
                if not data:
                    break
                remaining -= len(data)
                yield from self.converter.push(decode_samples(data, fmt))
        yield from self.converter.flush()

    def wipe(self) -> None:
        self.converter.wipe()

    def close(self) -> None:
        self.wipe()


@dataclass(frozen=True)
class SoundDevice:
    """A capture (or playback) device as PortAudio reports it."""

    index: int
    name: str
    channels: int
    default_rate_hz: int
    rates_hz: tuple[int, ...]

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
    return SoundDevice(index, str(info["name"]), _channels(info, output),
                       int(info["defaultSampleRate"]), _supported_rates(pa, pyaudio, index, 1, output))


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
