"""The pre-roll ring buffer: order across wrap-around, wipe to zeros, no per-frame allocation."""

import tracemalloc
from pathlib import Path

import numpy as np

from guard.audio import FRAME_SAMPLES
from guard.ringbuffer import RingBuffer


def test_snapshot_is_oldest_first_across_wrap_around():
    ring = RingBuffer(seconds=0.25)  # 4000 samples
    written = np.arange(1, 10 * FRAME_SAMPLES + 1, dtype=np.int32) % 30000
    for frame in written.astype(np.int16).reshape(-1, FRAME_SAMPLES):
        ring.write(frame)
    assert len(ring) == ring.capacity == 4000
    assert np.array_equal(ring.snapshot(), written[-4000:].astype(np.int16))


def test_partial_fill_and_oversized_writes():
    ring = RingBuffer(seconds=0.25)
    ring.write(np.full(100, 7, np.int16))
    assert np.array_equal(ring.snapshot(), np.full(100, 7, np.int16))
    big = np.arange(5000, dtype=np.int16)
    ring.write(big)
    assert np.array_equal(ring.snapshot(), big[-4000:])


def test_wipe_leaves_only_zeros():
    ring = RingBuffer(seconds=0.5)
    for _ in range(20):
        ring.write(np.random.default_rng(1).integers(-30000, 30000, FRAME_SAMPLES, dtype=np.int16))
    assert not ring.is_zero()
    ring.wipe()
    assert ring.is_zero() and len(ring) == 0
    assert ring.snapshot().size == 0
    assert not ring._samples.any()


def test_writing_frames_allocates_nothing():
    ring = RingBuffer(seconds=2.0)
    frame = np.ones(FRAME_SAMPLES, np.int16)
    ring.write(frame)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(1000):
        ring.write(frame)
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename") if s.size_diff > 0)
    tracemalloc.stop()
    assert grown < 2048, f"{grown} bytes allocated by 1000 writes"


def _locked_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmLck:")[1].split()[0])


def test_buffer_is_locked_in_ram_or_says_why_not(caplog):
    before = _locked_kib()
    ring = RingBuffer(seconds=10.0)  # 320 KB
    if ring.locked:
        assert _locked_kib() - before >= ring.capacity * 2 // 1024
    else:
        assert "mlock refused" in caplog.text and "LimitMEMLOCK" in caplog.text
