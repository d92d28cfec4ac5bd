"""`guard run` and `guard demo` as processes: real files, real PortAudio, signals, exit codes."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import speech
from conftest import GUARD, ROOT, alsa_home, consent_window_open, run_guard, until

from guard import audit
from guard.microphone import FLAP_SECONDS, READ_RETRIES


@pytest.fixture(scope="module")
def request_wav(tmp_path_factory):
    audio = np.concatenate([speech.silence(1.0), speech.say("Alexa"), speech.silence(0.3),
                            speech.say("what time is it"), speech.silence(1.6)])
    return speech.write_wav(tmp_path_factory.mktemp("req") / "request.wav", audio)


def _setup(tmp_path, extra: str = "", pending_timeout_seconds: float = 2) -> tuple[dict, dict]:
    home, state, sink, etc = (tmp_path / d for d in ("home", "state", "sink", "etc"))
    for d in (home, state, sink, etc):
        d.mkdir()
    (etc / "guard.toml").write_text(
        f'[device]\nid = "kitchen"\n[wake]\nmodels = ["alexa"]\n'
        f'[gate]\npending_timeout_seconds = {pending_timeout_seconds}\n'
        f'[sinks.box]\npath = "{sink}"\n{extra}')
    env = {**alsa_home(home, tmp_path / "none.raw"), "STATE_DIRECTORY": str(state),
           "GUARD_CONFIG": str(etc / "guard.toml")}
    return env, {"home": home, "state": state, "sink": sink}


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_run_on_a_file_without_a_press_leaves_nothing_but_the_audit_log(tmp_path, request_wav):
    env, dirs = _setup(tmp_path)
    started = time.monotonic()
    result = run_guard("run", "--source", str(request_wav), "--gpio", "mock", env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert [e["kind"] for e in _events(result.stdout)] == ["wake", "pending", "discarded"]
    assert elapsed >= 5.0, "a file plays at real-time pace unless --fast"
    left = sorted(p.relative_to(tmp_path) for d in dirs.values() for p in d.rglob("*") if p.is_file())
    assert [str(p) for p in left if not str(p).startswith("home/.asoundrc")] == ["state/audit.jsonl"]
    records = audit.read(dirs["state"] / "audit.jsonl")
    assert [r["event"] for r in records] == ["wake", "pending", "discarded"]
    assert records[-1]["reason"] == "timeout" and all(r["device"] == "kitchen" for r in records)
    assert audit.verify(dirs["state"] / "audit.jsonl").intact


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130), (signal.SIGHUP, 1)])
def test_a_signal_during_pending_wipes_and_closes_the_record(tmp_path, request_wav, sig, code):
    """SIGTERM is a requested stop (0), Ctrl-C an interrupt (130); a hang-up is not asked for (1: systemd restarts)."""
    env, dirs = _setup(tmp_path, pending_timeout_seconds=60)
    # at the file's own pace: with --fast the end of the file, reached a moment after pending, ends the pending
    # window at once (a timeout), and a loaded machine could get there before the signal does
    proc = subprocess.Popen([str(GUARD), "run", "--source", str(request_wav), "--gpio", "mock"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if json.loads(line)["kind"] == "pending":
            break
    limits = Path(f"/proc/{proc.pid}/limits").read_text()
    assert re.search(r"Max core file size\s+0\s+0", limits), "a core dump would hold the pending request"
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=20)
    assert proc.returncode == code, err
    assert [e["kind"] for e in _events(rest)] == ["discarded"]
    assert audit.read(dirs["state"] / "audit.jsonl")[-1]["reason"] == "shutdown"
    assert list(dirs["sink"].iterdir()) == []


def test_missing_sink_folder_is_reported_and_the_guard_still_runs(tmp_path, request_wav):
    env, dirs = _setup(tmp_path)
    dirs["sink"].rmdir()
    result = run_guard("run", "--source", str(request_wav), "--gpio", "mock", "--fast", env=env)
    assert result.returncode == 0
    assert f"sink box: {dirs['sink']}: no such directory; create it or fix [sinks.box] path" in result.stderr
    assert [e["kind"] for e in _events(result.stdout)] == ["wake", "pending", "discarded"]


def test_no_gpio_here_suggests_mock(tmp_path, request_wav):
    env, _ = _setup(tmp_path)
    result = run_guard("run", "--source", str(request_wav), env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "guard: error: no GPIO here (not a Raspberry Pi, or lgpio missing); "
        "try --gpio mock to simulate, or --gpio none")


def test_gpio_none_warns_that_nothing_can_be_released(tmp_path, request_wav):
    env, _ = _setup(tmp_path)
    result = run_guard("run", "--source", str(request_wav), "--gpio", "none", "--fast", env=env)
    assert result.returncode == 0
    assert "nothing can be released by button" in result.stderr


def test_bad_config_stops_before_listening(tmp_path, request_wav):
    env, _ = _setup(tmp_path, "[gpio]\nled_type = \"rgb\"\n")
    result = run_guard("run", "--source", str(request_wav), "--gpio", "mock", env=env)
    assert result.returncode == 2
    assert "[gpio] led_pins = [27]: a rgb LED takes 3 pin(s)" in result.stderr


def test_demo_runs_with_no_hardware_and_no_broker(tmp_path):
    result = run_guard("demo", env={**alsa_home(tmp_path / "home", tmp_path / "none.raw")})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # one release; the state beside it is whatever the guard was doing when the sink confirmed it (on a loaded
    # machine the second request may already be capturing: the release never holds up listening)
    assert out.count("\n  released   -> ") == 1 and "discarded  -> idle" in out and "reason=timeout" in out
    assert "audit chain: 7 records, intact" in out and "releasing" in out


MUTE_SCRIPT = r"""
import sys, threading, time
from guard import config
from guard.assembly import assemble
from guard.daemon import Daemon, RunOptions
from guard.wake import WakeDetector
from guard.config import WakeModelSettings
cfg, _ = config.load(sys.argv[1])
daemon = assemble(cfg, RunOptions("mic", "mock"), WakeDetector([WakeModelSettings("alexa")]))
loop = threading.Thread(target=daemon.run)
loop.start()
pin = daemon.pin_factory.pin(cfg.gpio.button_pin)
def hold_until(condition):
    pin.drive_low()
    deadline = time.monotonic() + 5
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    pin.drive_high()
time.sleep(0.5)
print("open before:", daemon.audio.source.is_open)
hold_until(lambda: not daemon.audio.source.is_open and daemon.gate.state == "muted")
print("open while muted:", daemon.audio.source.is_open, daemon.gate.state)
hold_until(lambda: daemon.audio.source.is_open and daemon.gate.state == "idle")
print("open after unmute:", daemon.audio.source.is_open, daemon.gate.state)
daemon.stop()
loop.join(5)
"""


def test_mute_closes_the_real_microphone_stream(tmp_path):
    raw = tmp_path / "room.raw"
    raw.write_bytes(np.zeros(16000 * 30, "<i2").tobytes())
    env = alsa_home(tmp_path / "home", raw)
    (tmp_path / "guard.toml").write_text(
        f'[audio]\ndevice = "guardtest"\n[gpio]\nlong_press_seconds = 0.3\nbounce_seconds = 0.0\n'
        f'[audit]\npath = "{tmp_path / "audit.jsonl"}"\n')
    result = subprocess.run([sys.executable, "-c", MUTE_SCRIPT, str(tmp_path / "guard.toml")], env=env,
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.stdout.splitlines() == ["open before: True", "open while muted: False muted",
                                          "open after unmute: True idle"], result.stderr
    assert [r["event"] for r in audit.read(tmp_path / "audit.jsonl")] == ["muted", "unmuted"]


@pytest.mark.parametrize(("memlock_bytes", "unlocked", "locked"), [
    (0, ["pre-roll ring (62 KiB)", "capture (375 KiB)"], []),
    (200_000, ["capture (375 KiB)"], ["pre-roll ring"]),
])
def test_health_names_every_buffer_that_could_not_be_locked(tmp_path, request_wav, memlock_bytes, unlocked, locked):
    env, _ = _setup(tmp_path)
    result = subprocess.run(["prlimit", f"--memlock={memlock_bytes}", "setpriv", "--inh-caps=-ipc_lock",
                             "--bounding-set=-ipc_lock", str(GUARD), "run", "--source", str(request_wav),
                             "--gpio", "mock", "--fast"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stderr.splitlines() if "buffers: " in x)
    assert "not locked in RAM: " in line and "raise LimitMEMLOCK or grant CAP_IPC_LOCK" in line
    for name in unlocked:
        assert name in line
    for name in locked:
        assert name not in line


FLAKY_MIC = """
import sys, time
from guard import audio, cli
real_frames, real_open = audio.MicSource.frames, audio.MicSource.open
failed, reads = [], [0]
def flaky(self):  # after 2 s, once: PortAudio's error when a USB microphone is pulled out, or a read that never returns
    for i, frame in enumerate(real_frames(self)):
        reads[0] += 1
        if sys.argv[1] == "glitches" and 25 <= reads[0] < 30:  # five reads in a row fail (0.4 s), each reopen works
            raise OSError(-9981, "Input overflowed")
        if sys.argv[1] == "broken" and reads[0] >= 25:  # it opens, but every read fails from 2 s on
            raise OSError(-9999, "Unanticipated host error")
        if sys.argv[1] == "flapping" and reads[0] in range(25, 100, 12):  # dies every second, 7 times, then holds
            raise OSError(-9999, "Unanticipated host error")
        if i == 25 and not failed and sys.argv[1] == "error":
            failed.append(i)
            raise OSError(-9999, "Unanticipated host error")
        if i == 25 and sys.argv[1] == "hang":
            time.sleep(3600)
        yield frame
def counted_open(self):
    if self._stream is None:
        print("stream opened", file=sys.stderr, flush=True)
    real_open(self)
audio.MicSource.frames, audio.MicSource.open = flaky, counted_open
sys.exit(cli.main(sys.argv[2:]))
"""


def _flaky_guard(tmp_path, failure: str, room: np.int16, declared: bool = True) -> tuple[subprocess.Popen, Path]:
    """`guard run` on the real PortAudio path (an ALSA file PCM), with an error or a hang injected above it."""
    raw = tmp_path / "room.raw"
    noise = np.random.default_rng(0).integers(-room, room + 1, 16000 * 60) if room else np.zeros(16000 * 60)
    raw.write_bytes(noise.astype("<i2").tobytes())
    env = alsa_home(tmp_path / "home", raw)
    if not declared:  # the microphone is not plugged in yet
        (tmp_path / "home" / ".asoundrc").rename(tmp_path / "asoundrc.later")
    (tmp_path / "guard.toml").write_text(f'[audio]\ndevice = "guardtest"\nzeros_fault_seconds = 1\n'
                                         f'[audit]\npath = "{tmp_path / "a.jsonl"}"\n')
    process = subprocess.Popen([sys.executable, "-c", FLAKY_MIC, failure, "--config", str(tmp_path / "guard.toml"),
                                "run", "--gpio", "mock"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=ROOT)
    return process, tmp_path / "a.jsonl"


def _events_when(log: Path, wanted: list[str], seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    events: list[str] = []
    while time.monotonic() < deadline:
        events = [r["event"] for r in audit.read(log)] if log.exists() else []
        if events[:len(wanted)] == wanted:
            break
        time.sleep(0.1)
    return events


def _seconds_between(first: dict, then: dict) -> float:
    """How long after one audit record another was written."""
    return (datetime.fromisoformat(then["time"]) - datetime.fromisoformat(first["time"])).total_seconds()


def _stop(process: subprocess.Popen) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    return process.returncode, stderr


def test_a_microphone_error_is_a_fault_until_the_microphone_is_opened_afresh(tmp_path):
    process, log = _flaky_guard(tmp_path, "error", np.int16(120))
    events = _events_when(log, ["fault", "recovered"], 60)
    code, stderr = _stop(process)
    assert events == ["fault", "recovered"], stderr
    assert code == 0, stderr
    assert stderr.count("stream opened") == 2
    assert stderr.count("Unanticipated host error") == 1  # one line for the failure, not one per attempt
    fault, back = audit.read(log)
    assert fault["reason"] == "audio source failed: [Errno -9999] Unanticipated host error; retrying"
    assert back["reason"] == "guardtest delivers sound again"


def test_read_errors_that_a_reopen_cures_cost_under_a_second_however_many_come_in_a_row(tmp_path):
    """Five failed reads in a row (each reopen works): once this was 18 s of deafness, backoff at every error."""
    process, log = _flaky_guard(tmp_path, "glitches", np.int16(120))
    events = _events_when(log, ["fault", "recovered"], 60)
    code, stderr = _stop(process)
    assert events == ["fault", "recovered"], stderr
    assert code == 0, stderr
    assert stderr.count("stream opened") == 6, stderr  # the first, and one after each error
    fault, back = audit.read(log)
    deaf = _seconds_between(fault, back)
    assert deaf < 1.0, deaf


def test_a_microphone_that_keeps_failing_soon_after_it_is_back_is_one_fault_not_a_record_per_flap(tmp_path):
    """Seven failures a second apart, each cured by a restart: the first fault and its recovery are recorded at
    once; the second comes too soon after, so the guard waits for 10 s of unbroken sound before it is back.
    On a loaded machine the loop may not see sound between two flaps (a failure is served before the frames
    queued ahead of it): then all seven are one fault, and it is back when sound comes. Never a record per
    flap (the rule itself, on a test clock: tests/test_microphone.py)."""
    process, log = _flaky_guard(tmp_path, "flapping", np.int16(120))
    events = _events_when(log, ["fault", "recovered", "fault", "recovered"], 60)
    time.sleep(2)
    code, stderr = _stop(process)
    assert code == 0, stderr
    records = audit.read(log)
    assert [r["event"] for r in records] == events, stderr
    assert events in (["fault", "recovered"] * 2, ["fault", "recovered"]), stderr
    assert stderr.count("stream opened") == 1 + 7  # a quick restart after each failure, no backoff
    if len(events) == 4:  # the loop saw it back between two flaps
        assert _seconds_between(records[2], records[3]) >= FLAP_SECONDS, "sound for 10 s after the last flap"


def test_a_microphone_that_opens_but_never_reads_is_dropped_and_retried_with_backoff(tmp_path):
    process, log = _flaky_guard(tmp_path, "broken", np.int16(120))
    assert _events_when(log, ["fault"], 60) == ["fault"]
    time.sleep(6)
    assert process.poll() is None, "a failing microphone does not end the guard"
    code, stderr = _stop(process)
    assert code == 0, stderr
    assert [r["event"] for r in audit.read(log)] == ["fault"]
    opened = stderr.count("stream opened")  # a quick restart per error, then backoff (1, 2, 5 s): not 20 a second
    assert READ_RETRIES + 2 <= opened <= 3 * (READ_RETRIES + 2), stderr


def test_a_microphone_delivering_zeros_is_reopened_with_backoff_and_recorded_once(tmp_path):
    process, log = _flaky_guard(tmp_path, "none", np.int16(0))
    events = _events_when(log, ["fault"], 60)
    time.sleep(8)  # zeros go on: attempts after 1, 2 and 5 s
    assert process.poll() is None, "a failing microphone does not end the guard"
    code, stderr = _stop(process)
    assert code == 0, stderr
    assert [r["event"] for r in audit.read(log)] == events == ["fault"]
    assert 3 <= stderr.count("stream opened") <= 5, stderr
    assert stderr.count("delivered only digital zeros") == 1


def test_a_microphone_missing_at_start_is_waited_for(tmp_path):
    process, log = _flaky_guard(tmp_path, "never", np.int16(120), declared=False)
    assert _events_when(log, ["fault"], 60) == ["fault"]
    missing = r"(no microphone found; plug one in|no input device matches 'guardtest')"  # no sound card / others
    assert re.match(f"audio source failed: {missing}.*; retrying$", audit.read(log)[0]["reason"])
    (tmp_path / "asoundrc.later").rename(tmp_path / "home" / ".asoundrc")  # plugged in
    events = _events_when(log, ["fault", "recovered"], 60)
    code, stderr = _stop(process)
    assert events == ["fault", "recovered"], stderr
    assert code == 0, stderr
    assert re.search(f"audio: waiting for the microphone: {missing}", stderr)


def test_a_microphone_read_that_never_returns_exits_1_for_systemd(tmp_path):
    """A read blocked inside PortAudio cannot be interrupted from this process; systemd restarts it."""
    process, log = _flaky_guard(tmp_path, "hang", np.int16(120))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    assert stderr.strip().splitlines()[-1].startswith("guard: error: the audio source failed")
    assert "no audio from guardtest for 10 s (hung)" in stderr
    assert [r["event"] for r in audit.read(log)] == ["fault"]


def test_stop_takes_under_10_s_while_a_microphone_read_hangs(tmp_path):
    process, _ = _flaky_guard(tmp_path, "hang", np.int16(120))
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(process.stderr), daemon=True)
    reader.start()
    assert until(lambda: any("guarding as" in line for line in said), 120), "".join(said)  # a loaded machine: slow
    time.sleep(3)  # the read hangs from 2 s of audio on, well before the 10 s that make it a failure
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(20)
    assert time.monotonic() - started < 10, "".join(said)
    reader.join(5)
    assert code == 0, "".join(said)


def test_core_dumps_are_forbidden_even_outside_systemd():
    probe = ("import ctypes; from guard.process import forbid_core_dumps; forbid_core_dumps(); "
             "print(ctypes.CDLL('libc.so.6').prctl(3, 0, 0, 0, 0))")  # PR_GET_DUMPABLE
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                          check=True).stdout.strip() == "0"


def test_a_slow_sink_blocks_neither_the_button_nor_shutdown(tmp_path, request_wav):
    """A command sink that takes a minute: the button still mutes at once, and SIGTERM-like stop takes < 10 s."""
    import dataclasses
    import threading

    from guard import config
    from guard.assembly import assemble
    from guard.config import WakeModelSettings
    from guard.daemon import RunOptions
    from guard.vocabulary import State
    from guard.wake import WakeDetector

    pid_file = tmp_path / "sink.pid"
    slow = f"import os, sys, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    base = config.Config()
    cfg = dataclasses.replace(
        base, device=config.DeviceConfig("kitchen"), wake=dataclasses.replace(base.wake, models=("alexa",)),
        gpio=dataclasses.replace(base.gpio, bounce_seconds=0.0, long_press_seconds=0.3),
        audit=config.AuditConfig(str(tmp_path / "audit.jsonl")),
        sinks={"slow": config.SinkConfig(type="command", command=(sys.executable, "-c", slow), timeout_seconds=120)})
    daemons = []

    def press_when_pending_shows(event) -> None:
        if event.kind == "pending":
            def press() -> None:
                while not consent_window_open(daemons[0]):
                    time.sleep(0.005)
                pin = daemons[0].pin_factory.pin(cfg.gpio.button_pin)
                pin.drive_low()
                pin.drive_high()
            threading.Thread(target=press, daemon=True).start()

    daemon = assemble(cfg, RunOptions(str(request_wav), "mock", publish=press_when_pending_shows),
                    WakeDetector([WakeModelSettings("alexa")]))
    daemons.append(daemon)
    loop = threading.Thread(target=daemon.run)
    loop.start()
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pid_file.exists(), "the release reached the slow sink"
    pin = daemon.pin_factory.pin(cfg.gpio.button_pin)
    pin.drive_low()  # a long press while the sink is still busy
    deadline = time.monotonic() + 3
    while daemon.gate.state is not State.MUTED and time.monotonic() < deadline:
        time.sleep(0.02)
    pin.drive_high()
    assert daemon.gate.state is State.MUTED, "the loop served the button while the sink ran"
    stopped = time.monotonic()
    daemon.stop()
    loop.join(15)
    assert not loop.is_alive() and time.monotonic() - stopped < 10
    records = audit.read(tmp_path / "audit.jsonl")
    assert [r["event"] for r in records if r["event"].startswith("releas")] == ["releasing", "release-unknown"]
    unknown, = [r for r in records if r["event"] == "release-unknown"]
    assert "still delivering when the guard stopped" in unknown["reason"] and "may still arrive" in unknown["reason"]
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_a_read_only_audit_log_keeps_the_guard_guarding_but_capturing_nothing(tmp_path):
    late_request = speech.write_wav(tmp_path / "late.wav", np.concatenate([  # after the 3 s the fault is shown
        speech.silence(4.0), speech.say("Alexa"), speech.silence(0.3), speech.say("what time is it"),
        speech.silence(1.6)]))
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], check=True)
    try:
        env, dirs = _setup(tmp_path, extra=f'[audit]\npath = "{ro / "audit.jsonl"}"\n')
        result = run_guard("run", "--source", str(late_request), "--gpio", "mock", "--fast", env=env)
    finally:
        subprocess.run(["umount", "--lazy", str(ro)], check=True)
    assert result.returncode == 0, result.stderr
    events = _events(result.stdout)
    assert events and {e["kind"] for e in events} == {"fault"}, [e["kind"] for e in events]
    assert "audit log unavailable" in events[0]["reason"] and "Read-only file system" in events[0]["reason"]
    assert any("cannot take the wake record; nothing is captured" in e["reason"] for e in events)
    assert list(dirs["sink"].iterdir()) == []


def test_on_a_terminal_each_event_shows_once(tmp_path, request_wav):
    import pty
    env, _ = _setup(tmp_path)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([str(GUARD), "run", "--source", str(request_wav), "--gpio", "mock", "--fast"], env=env,
                            stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(30)
    os.close(leader)
    text = seen.decode()
    assert proc.returncode == 0, text
    assert text.count('"kind": "pending"') == 1 and "guard.gate: pending" not in text, text
    assert "buffers: " in text, "the health lines still show"
