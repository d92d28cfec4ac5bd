"""Sound as numbers: 16 kHz mono int16 frames of 80 ms, resampling, channel choice, level.

No I/O here: the sources (wav.py, audio.py) feed these, and everything that hears
frames (the detector, the gate, the spoken confirmation) imports their sizes from here.
"""

import math
from collections.abc import Iterator
from math import ceil, gcd

import numpy as np

RATE_HZ = 16000
FRAME_SAMPLES = 1280  # 80 ms at 16 kHz: the step openWakeWord's models expect
FRAME_SECONDS = FRAME_SAMPLES / RATE_HZ
_KAISER_BETA = 8.0


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
