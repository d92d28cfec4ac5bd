"""The pre-roll ring buffer: order across wrap-around, wipe to zeros, no per-frame allocation."""

import subprocess
import sys

import numpy as np
from conftest import ROOT

from guard.dsp import FRAME_SAMPLES
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


ALLOCATION_PROBE = """
import tracemalloc
import numpy as np
from guard.dsp import FRAME_SAMPLES
from guard.ringbuffer import RingBuffer
ring = RingBuffer(seconds=2.0)
frame = np.ones(FRAME_SAMPLES, np.int16)
ring.write(frame)
tracemalloc.start()
base = tracemalloc.get_traced_memory()[0]
for _ in range(1000):
    ring.write(frame)
current, peak = tracemalloc.get_traced_memory()
print(current - base, peak - base, frame.nbytes)
"""


def test_writing_frames_allocates_nothing():
    """In a process of its own: tracemalloc counts every thread's allocations, and inside the full suite
    (other tests' threads still running) this check failed twice by 24 bytes."""
    kept, peak, frame_bytes = map(int, subprocess.run([sys.executable, "-c", ALLOCATION_PROBE], check=True,
                                                      capture_output=True, text=True).stdout.split())
    assert kept < 1024, f"{kept} bytes kept by 1000 writes"
    assert peak < frame_bytes, f"a temporary of {peak} bytes: as large as a frame"


NO_IPC_LOCK = ["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock"]  # even root then obeys the limit
LOCK_PROBE = """
from pathlib import Path
from guard.ringbuffer import RingBuffer
def locked():
    return int(Path("/proc/self/status").read_text().split("VmLck:")[1].split()[0])
before = locked()
ring = RingBuffer(seconds=10.0)
print(ring.locked, locked() - before, ring.capacity * 2 // 1024)
"""


def test_buffer_is_locked_in_ram_and_knows_when_it_is_not():
    """In a fresh process, so memory locked and freed by other tests cannot blur the count."""
    result = subprocess.run([sys.executable, "-c", LOCK_PROBE], capture_output=True, text=True, cwd=ROOT)
    locked, grew_kib, size_kib = result.stdout.split()
    assert locked == "True" and int(grew_kib) >= int(size_kib)
    refused = subprocess.run(["prlimit", "--memlock=0", *NO_IPC_LOCK, sys.executable, "-c", LOCK_PROBE],
                             capture_output=True, text=True, cwd=ROOT)
    locked, grew_kib, _ = refused.stdout.split()
    assert locked == "False" and int(grew_kib) == 0
