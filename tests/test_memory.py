"""No copy of discarded speech stays in the guard's memory: its whole address space is searched.

`guard run` hears a request through the real PortAudio path (an ALSA file PCM),
the request is discarded (timeout, remote mute), the process is stopped, and
every readable mapping in /proc/<pid>/mem is searched for windows of the
request's samples, as int16 (what the microphone delivers) and as float32 (what
the conversion makes of them).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import speech
from conftest import GUARD, alsa_home
from mqtt_broker import Broker, Subscriber

from guard import audit

WINDOW = 16  # samples: 32 bytes as int16, 64 as float32; a chance match in a few hundred MB is ~2**-200
NEEDLES = 24

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="reading a non-dumpable process's memory needs root")


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_guard_outlives_its_test():
    yield
    while STARTED:
        STARTED.pop().kill()


@pytest.fixture(scope="module")
def request_speech() -> np.ndarray:
    return np.concatenate([speech.say("Alexa"), speech.silence(0.3), speech.say("what is my bank password")])


def needles(samples: np.ndarray) -> list[bytes]:
    """Loud windows of the speech, spread over it, in both forms they take in the guard."""
    starts = np.linspace(0, len(samples) - WINDOW, 400).astype(int)
    loud = [s for s in starts if np.abs(samples[s:s + WINDOW].astype(np.int32)).min() > 300][:NEEDLES]
    assert len(loud) == NEEDLES
    windows = [samples[s:s + WINDOW] for s in loud]
    return [w.astype("<i2").tobytes() for w in windows] + [w.astype("<f4").tobytes() for w in windows]


def found_in_memory(pid: int, wanted: list[bytes]) -> list[str]:
    """The mappings of `pid` that hold any of `wanted`."""
    hits = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5] if len(fields) > 5 else "[anonymous]"
            if "r" not in fields[1] or name in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except OSError:
                continue
            hits += [f"{name} {fields[0]}" for needle in wanted if needle in data]
    return hits


# `guard` that stops itself once it has finished (after every wipe at shutdown), so its memory can be searched
GUARD_STOPPING_AT_EXIT = ("import atexit, os, signal, sys; from guard.cli import main; "
                          "atexit.register(os.kill, os.getpid(), signal.SIGSTOP); sys.exit(main())")


def _guard(tmp_path: Path, request: np.ndarray, extra: str = "", pending_timeout: float = 1,
           command: tuple[str, ...] = (str(GUARD),), engine: str = "openwakeword") -> tuple[subprocess.Popen, Path]:
    room = np.random.default_rng(1).normal(0, 30, 16000 * 600)
    samples = np.concatenate([room[:16000], request, np.zeros(16000), room]).clip(-32768, 32767)
    raw = tmp_path / "mic.raw"
    raw.write_bytes(samples.astype("<i2").tobytes())
    env = alsa_home(tmp_path / "home", raw)
    log = tmp_path / "audit.jsonl"
    (tmp_path / "guard.toml").write_text(
        f'[device]\nid = "memtest"\n[audio]\ndevice = "guardtest"\n[wake]\nmodels = ["alexa"]\nengine = "{engine}"\n'
        f'[gate]\npending_timeout_seconds = {pending_timeout}\n[audit]\npath = "{log}"\n{extra}')
    process = subprocess.Popen([*command, "--config", str(tmp_path / "guard.toml"), "run", "--gpio", "mock"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    STARTED.append(process)
    return process, log


def _wait_for(log: Path, kind: str, seconds: float = 60) -> list[dict]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        records = audit.read(log) if log.exists() else []
        if any(r["event"] == kind for r in records):
            return records
        time.sleep(0.05)
    raise AssertionError(f"no {kind} record in {seconds} s")


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "T"


def _search_stopped(process: subprocess.Popen, wanted: list[bytes]) -> list[str]:
    if not _stopped(process.pid):
        process.send_signal(signal.SIGSTOP)
    try:
        return found_in_memory(process.pid, wanted)
    finally:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.communicate(timeout=20)
        finally:
            process.kill()  # a guard that ignores SIGTERM fails the test; it must not outlive it


def test_the_search_finds_speech_that_is_still_held(tmp_path, request_speech):
    """The control: while pending, the capture buffer holds the request, and the search must see it."""
    process, log = _guard(tmp_path, request_speech, pending_timeout=60)
    _wait_for(log, "pending")
    time.sleep(1.0)
    assert _search_stopped(process, needles(request_speech)), "the search cannot see held speech"


@pytest.mark.parametrize("engine", ["openwakeword", "micro"])
def test_invariant3_no_copy_of_timed_out_speech_stays_in_memory(tmp_path, request_speech, engine):
    process, log = _guard(tmp_path, request_speech, engine=engine)
    records = _wait_for(log, "discarded")
    assert [r["event"] for r in records][:3] == ["wake", "pending", "discarded"]
    time.sleep(1.0)  # room noise goes on through the same buffers
    assert _search_stopped(process, needles(request_speech)) == []


def test_invariant3_no_copy_of_speech_stays_in_memory_after_a_remote_mute(tmp_path, request_speech):
    broker = Broker(tmp_path / "broker").start()
    hub = Subscriber(broker.port, ["guard/memtest/state"])
    try:
        process, log = _guard(tmp_path, request_speech, pending_timeout=60,
                              extra=f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ndiscovery = false\n')
        _wait_for(log, "pending")
        hub.publish("guard/memtest/cmd/mute", b"")
        records = _wait_for(log, "muted")
        assert "discarded" in [r["event"] for r in records]
        assert _search_stopped(process, needles(request_speech)) == []
    finally:
        hub.close()
        broker.stop()


def test_invariant3_no_copy_of_speech_stays_in_memory_after_a_shutdown_while_pending(tmp_path, request_speech):
    process, log = _guard(tmp_path, request_speech, pending_timeout=60,
                          command=(sys.executable, "-c", GUARD_STOPPING_AT_EXIT))
    _wait_for(log, "pending")
    process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while not _stopped(process.pid):
        assert time.monotonic() < deadline and process.poll() is None, "the guard did not reach its exit"
        time.sleep(0.05)
    assert [r["event"] for r in audit.read(log)][-1] == "discarded"
    assert _search_stopped(process, needles(request_speech)) == []
