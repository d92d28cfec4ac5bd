"""The pre-roll buffer: a fixed, preallocated, RAM-locked ring of int16 samples.

It never grows, never allocates per frame, and `wipe()` leaves only zeros.
It must never be written to disk or logged.
"""

import ctypes
import ctypes.util

import numpy as np

from guard.dsp import RATE_HZ


def lock_in_ram(array: np.ndarray) -> bool:
    """Ask the kernel to keep `array` out of swap; returns whether it agreed."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return False
    address = ctypes.c_void_p(array.ctypes.data)
    return libc.mlock(address, ctypes.c_size_t(array.nbytes)) == 0


class LockedSamples:
    """A fixed array of int16 samples, locked in RAM where the kernel allows, and how many of them hold audio.

    Args:
        seconds: capacity.
        rate_hz: sample rate of what is held.
    """

    def __init__(self, seconds: float, rate_hz: int = RATE_HZ) -> None:
        self._samples = np.zeros(int(round(seconds * rate_hz)), np.int16)
        self._count = 0
        self.locked = lock_in_ram(self._samples)

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return self._samples.nbytes

    def wipe(self) -> None:
        """Zero every sample and forget them."""
        self._samples.fill(0)
        self._count = 0

    def is_zero(self) -> bool:
        """True when no sample holds audio: what tests and the shutdown path check."""
        return not self._samples.any()


class RingBuffer(LockedSamples):
    """The last `seconds` of 16 kHz audio, oldest overwritten first.

        ring = RingBuffer(seconds=2.0)
        ring.write(frame)
        pre_roll = ring.snapshot()
        ring.wipe()

    Args:
        seconds: capacity (default 2 s = 32000 samples, 64 KB).
        rate_hz: sample rate of what is written.
    """

    def __init__(self, seconds: float = 2.0, rate_hz: int = RATE_HZ) -> None:
        super().__init__(seconds, rate_hz)
        self.capacity = len(self._samples)
        if self.capacity < 1:
            raise ValueError(f"ring buffer of {seconds} s holds no samples")
        self._head = 0  # where the next sample goes

    def write(self, samples: np.ndarray) -> None:
        """Append samples, overwriting the oldest; no allocation."""
        n = len(samples)
        if n >= self.capacity:
            self._samples[:] = samples[n - self.capacity:]
            self._head, self._count = 0, self.capacity
            return
        first = min(n, self.capacity - self._head)
        self._samples[self._head:self._head + first] = samples[:first]
        self._samples[:n - first] = samples[first:]
        self._head = (self._head + n) % self.capacity
        self._count = min(self.capacity, self._count + n)

    def snapshot(self, out: np.ndarray | None = None) -> np.ndarray:
        """The held samples, oldest first, copied into `out` (or a new array)."""
        if out is None:
            out = np.empty(self._count, np.int16)
        start = (self._head - self._count) % self.capacity
        first = min(self._count, self.capacity - start)
        out[:first] = self._samples[start:start + first]
        out[first:self._count] = self._samples[:self._count - first]
        return out[:self._count]

    def wipe(self) -> None:
        super().wipe()
        self._head = 0


class CaptureBuffer(LockedSamples):
    """One utterance (pre-roll + speech) in a fixed, RAM-locked array; `wipe()` zeroes it.

    Args:
        seconds: capacity; appends past it are refused (the gate ends capture there).
        rate_hz: sample rate of what is appended.
    """

    def load(self, ring: RingBuffer) -> None:
        """Start from the ring's pre-roll."""
        self._count = len(ring.snapshot(self._samples))

    def append(self, samples: np.ndarray) -> bool:
        """Add samples; False (and nothing added) when they would not fit."""
        end = self._count + len(samples)
        if end > len(self._samples):
            return False
        self._samples[self._count:end] = samples
        self._count = end
        return True

    def cut(self, count: int) -> None:
        """Keep the first `count` samples; zero the rest."""
        count = min(count, self._count)
        self._samples[count:self._count] = 0
        self._count = count

    def view(self) -> np.ndarray:
        """The captured samples (a view: valid until the next wipe)."""
        return self._samples[:self._count]
