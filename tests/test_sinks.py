"""Sinks on their own: what arrives, and that a failed or killed release leaves nothing half-done behind."""

import asyncio
import io
import os
import re
import stat
import struct
import sys
import threading
import types
import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import fill, until

from guard import config
from guard.errors import DeliveryUncertain, GuardError, SinkError
from guard.hubloop import release_on
from guard.sinks import (
    COMMAND_PATH,
    AssistSink,
    CommandSink,
    DirectorySink,
    HermesSink,
    MqttSink,
    Utterance,
    build,
)
from guard.wav import encode_wav

UTTERANCE = Utterance("a1b2c3d4e5f6", "20261123T031500Z")
SAMPLES = (np.sin(np.arange(8002) / 7) * 12000).astype(np.int16)  # 16004 bytes: sizes added, not or-ed, show


def test_a_release_is_a_16_khz_mono_16_bit_wav_of_exactly_the_samples(tmp_path):
    wav = encode_wav(SAMPLES)
    (tmp_path / "r.wav").write_bytes(wav)
    with wave.open(str(tmp_path / "r.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, len(SAMPLES))
        assert np.array_equal(np.frombuffer(w.readframes(len(SAMPLES)), "<i2"), SAMPLES)
    # the sizes and rates a strict reader checks, which the wave module does not
    assert struct.unpack("<4sI4s4sIHHIIHH4sI", wav[:44]) == (
        b"RIFF", len(wav) - 8, b"WAVE", b"fmt ", 16, 1, 1, 16000, 32000, 2, 16, b"data", 2 * len(SAMPLES))
    assert len(wav) == 44 + 2 * len(SAMPLES)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_a_directory_release_is_one_private_file_named_for_device_time_and_utterance(tmp_path):
    where = DirectorySink("box", tmp_path, "kitchen").deliver(encode_wav(SAMPLES), UTTERANCE)
    assert where == str(tmp_path / "kitchen-20261123T031500Z-a1b2c3d4e5f6.wav")
    assert os.listdir(tmp_path) == ["kitchen-20261123T031500Z-a1b2c3d4e5f6.wav"]
    assert Path(where).read_bytes() == encode_wav(SAMPLES)
    assert stat.S_IMODE(os.stat(where).st_mode) == 0o600


def test_a_directory_release_on_a_full_disk_fails_and_leaves_no_part_behind(full_disk):
    fill(full_disk)
    with pytest.raises(SinkError, match=f"^sink small: {full_disk}: No space left on device$") as e:
        DirectorySink("small", full_disk, "kitchen").deliver(encode_wav(SAMPLES), UTTERANCE)
    assert not isinstance(e.value, DeliveryUncertain)  # it did not arrive, for sure
    assert not [n for n in os.listdir(full_disk) if "a1b2c3d4e5f6" in n]


def test_a_stale_part_from_a_crash_is_removed_and_the_next_release_arrives(tmp_path):
    stale = tmp_path / ".kitchen-20261123T031500Z-a1b2c3d4e5f6.wav.partial"
    stale.write_bytes(b"half")
    sink = DirectorySink("box", tmp_path, "kitchen")
    with pytest.raises(SinkError, match="File exists"):
        sink.deliver(encode_wav(SAMPLES), UTTERANCE)
    assert not stale.exists()
    assert Path(sink.deliver(encode_wav(SAMPLES), UTTERANCE)).read_bytes() == encode_wav(SAMPLES)


def test_a_folder_that_goes_after_the_check_is_a_failure_and_leaves_nothing(tmp_path, monkeypatch):
    """A USB stick pulled between the check and the write: a failure naming the folder, no crash, no file."""
    folder = tmp_path / "stick"
    folder.mkdir()
    sink = DirectorySink("stick", folder, "kitchen")
    checked = sink.problem

    def check_then_pull() -> str | None:
        problem = checked()
        folder.rmdir()
        return problem
    monkeypatch.setattr(sink, "problem", check_then_pull)
    with pytest.raises(SinkError, match=f"^sink stick: {folder}: No such file or directory$"):
        sink.deliver(encode_wav(SAMPLES), UTTERANCE)
    assert os.listdir(tmp_path) == []


def test_a_directory_sink_says_what_is_wrong_with_its_folder(tmp_path):
    assert DirectorySink("box", tmp_path, "k").problem() is None
    assert DirectorySink("box", tmp_path / "gone", "k").problem() == (
        f"sink box: {tmp_path / 'gone'}: no such directory; create it or fix [sinks.box] path")
    assert DirectorySink("proc", Path("/proc/self"), "k").problem() == (
        "sink proc: /proc/self: not writable by this user")


def _command(tmp_path: Path, body: str, timeout: float = 10.0) -> CommandSink:
    return CommandSink("cmd", (sys.executable, "-c", body, str(tmp_path)), timeout, "kitchen")


def test_a_command_gets_the_wav_on_stdin_and_nothing_of_the_guards_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GUARD_SECRET_TOKEN", "do-not-pass")
    body = ("import json, os, sys; d = sys.argv[1]; open(d + '/got.wav', 'wb').write(sys.stdin.buffer.read()); "
            "json.dump(dict(os.environ), open(d + '/env.json', 'w'))")
    sink = _command(tmp_path, body)
    assert sink.deliver(encode_wav(SAMPLES), UTTERANCE) == " ".join(sink.argv)
    assert (tmp_path / "got.wav").read_bytes() == encode_wav(SAMPLES)
    env = __import__("json").loads((tmp_path / "env.json").read_text())
    assert {k: v for k, v in env.items() if k != "LC_CTYPE"} == {
        "PATH": COMMAND_PATH, "LANG": os.environ.get("LANG", "C.UTF-8"),
        "GUARD_DEVICE": "kitchen", "GUARD_UTTERANCE": "a1b2c3d4e5f6"}


def test_a_failing_command_is_named_with_its_exit_code_and_last_line_cut_to_200(tmp_path):
    body = "import sys; sys.stdin.buffer.read(); print('first\\n' + 'x' * 300, file=sys.stderr); sys.exit(3)"
    with pytest.raises(SinkError) as e:
        _command(tmp_path, body).deliver(encode_wav(SAMPLES), UTTERANCE)
    assert str(e.value) == f"sink cmd: {sys.executable} exited 3: {'x' * 200}"
    assert not isinstance(e.value, DeliveryUncertain)
    long = "import sys; sys.stdin.buffer.read(); sys.stderr.write('noise\\n' * 1500 + 'the real reason'); sys.exit(5)"
    with pytest.raises(SinkError, match=r"exited 5: the real reason$"):  # the end of 9 KB, to its last byte
        _command(tmp_path, long).deliver(encode_wav(SAMPLES), UTTERANCE)
    with pytest.raises(SinkError, match=r"exited 4$"):
        _command(tmp_path, "import sys; sys.exit(4)").deliver(encode_wav(SAMPLES), UTTERANCE)


def test_a_command_that_cannot_start_is_a_failure_not_a_crash(tmp_path):
    with pytest.raises(SinkError, match=f"^sink cmd: {tmp_path}/nothing: not an executable file; give its full path; "
                                        "not run$"):
        CommandSink("cmd", (str(tmp_path / "nothing"), "--quiet"), 5.0, "k").deliver(encode_wav(SAMPLES), UTTERANCE)
    assert CommandSink("cmd", (str(tmp_path / "nothing"),), 5.0, "k").problem() == (
        f"sink cmd: {tmp_path}/nothing: not an executable file; give its full path")
    assert CommandSink("cmd", (sys.executable,), 5.0, "k").problem() is None
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    assert CommandSink("cmd", (str(plain),), 5.0, "k").problem() == (
        f"sink cmd: {plain}: not an executable file; give its full path")
    # the program is the first word, whatever its arguments are
    assert CommandSink("cmd", (str(plain), sys.executable), 5.0, "k").problem() == (
        f"sink cmd: {plain}: not an executable file; give its full path")
    assert CommandSink("cmd", (sys.executable, str(plain)), 5.0, "k").problem() is None


def test_a_command_the_kernel_cannot_run_is_a_failure_named_by_its_program(tmp_path):
    """Executable but not a program (no #! line): it passes the check and fails to start, and is named."""
    program = tmp_path / "not-a-program"
    program.write_bytes(b"\x00\x01 not an executable format")
    program.chmod(0o755)
    sink = CommandSink("cmd", (str(program), "--quiet"), 5.0, "k")
    assert sink.problem() is None
    with pytest.raises(SinkError, match=f"^sink cmd: {program}: Exec format error$") as e:
        sink.deliver(encode_wav(SAMPLES), UTTERANCE)
    assert not isinstance(e.value, DeliveryUncertain), "it never started, so nothing was sent"


HELPER = ("import subprocess, sys; p = subprocess.Popen(['sleep', '600']); "
          "open(sys.argv[1] + '/helper', 'w').write(str(p.pid)); sys.stdin.buffer.read(); ")


def test_a_command_over_its_time_is_killed_with_what_it_started_and_may_have_sent_part(tmp_path):
    with pytest.raises(DeliveryUncertain, match=rf"^sink cmd: {re.escape(sys.executable)} still running after 0\.5 s; "
                                            "killed with everything it started"):
        _command(tmp_path, HELPER + "import time; time.sleep(600)", timeout=0.5).deliver(encode_wav(SAMPLES),
                                                                                          UTTERANCE)
    helper = int((tmp_path / "helper").read_text())
    assert until(lambda: not _alive(helper))


def test_helpers_a_successful_command_leaves_behind_do_not_outlive_the_release(tmp_path):
    _command(tmp_path, HELPER).deliver(encode_wav(SAMPLES), UTTERANCE)
    helper = int((tmp_path / "helper").read_text())
    assert until(lambda: not _alive(helper))


def test_cancel_stops_a_running_command_and_what_it_started(tmp_path):
    sink = _command(tmp_path, HELPER + "import time; time.sleep(600)", timeout=600)
    outcome: list[BaseException] = []

    def deliver():
        try:
            sink.deliver(encode_wav(SAMPLES), UTTERANCE)
        except SinkError as e:
            outcome.append(e)
    thread = threading.Thread(target=deliver, daemon=True)  # if cancel fails, the test fails rather than hangs
    thread.start()
    assert until(lambda: (tmp_path / "helper").exists() and (tmp_path / "helper").read_text() != "")
    sink.cancel()
    thread.join(10)
    assert not thread.is_alive() and "exited -9" in str(outcome[0])
    assert until(lambda: not _alive(int((tmp_path / "helper").read_text())))
    sink.cancel()  # nothing running: nothing to do


def test_an_mqtt_release_the_broker_never_acknowledged_is_uncertain_one_refused_is_a_failure():
    def unacknowledged(utterance_id, wav, timeout):
        raise DeliveryUncertain(f"no acknowledgement in {timeout:g} s")

    def refused(utterance_id, wav, timeout):
        raise GuardError("not connected")
    with pytest.raises(DeliveryUncertain, match=r"^sink hub: no acknowledgement in 2 s$"):
        MqttSink("hub", unacknowledged, 2.0).deliver(b"RIFF", UTTERANCE)
    with pytest.raises(SinkError, match=r"^sink hub: not connected$") as e:
        MqttSink("hub", refused, 2.0).deliver(b"RIFF", UTTERANCE)
    assert not isinstance(e.value, DeliveryUncertain)
    sent = []
    assert MqttSink("hub", lambda u, w, t: sent.append((u, bytes(w), t)) or f"guard/k/audio/{u}", 2.0).deliver(
        b"RIFF", UTTERANCE) == "guard/k/audio/a1b2c3d4e5f6"
    assert sent == [("a1b2c3d4e5f6", b"RIFF", 2.0)]


def test_a_hermes_release_is_the_samples_in_wav_chunks_of_1024_zeroed_once_sent():
    sent, kept = [], []

    def send(chunks, timeout):
        kept.extend(chunks)
        sent.extend(bytes(c) for c in chunks)
        sent.append(timeout)
        return "hermes/audioServer/k/audioFrame"

    assert HermesSink("asr", send, 4.0).deliver(encode_wav(SAMPLES), UTTERANCE) == "hermes/audioServer/k/audioFrame"
    *chunks, timeout = sent
    assert timeout == 4.0 and len(chunks) == 8  # 8002 samples: 7 of 1024 and one of 834
    heard = []
    for chunk in chunks:
        with wave.open(io.BytesIO(chunk)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            heard.append(np.frombuffer(w.readframes(w.getnframes()), "<i2"))
    assert [len(h) for h in heard] == [1024] * 7 + [834]
    assert np.array_equal(np.concatenate(heard), SAMPLES)
    assert all(not any(c) for c in kept), "the guard's copies of the chunks are zeroed once the broker has them"


def test_a_hermes_or_wyoming_release_that_may_have_arrived_is_uncertain_one_not_sent_a_failure():
    def uncertain(audio, timeout):
        raise DeliveryUncertain(f"part may have arrived in {timeout:g} s")

    def refused(audio, timeout):
        raise GuardError("not connected")
    for sink in (HermesSink, AssistSink):
        with pytest.raises(DeliveryUncertain, match=r"^sink a: part may have arrived in 3 s$"):
            sink("a", uncertain, 3.0).deliver(encode_wav(SAMPLES), UTTERANCE)
        with pytest.raises(SinkError, match=r"^sink a: not connected$") as e:
            sink("a", refused, 3.0).deliver(encode_wav(SAMPLES), UTTERANCE)
        assert not isinstance(e.value, DeliveryUncertain)
        assert sink("a", refused, 3.0).problem() is None and sink("a", refused, 3.0).cancel() is None


def test_a_wyoming_release_hands_the_satellite_exactly_the_samples():
    got = []
    peer = AssistSink("assist", lambda pcm, t: got.append((bytes(pcm), t)) or "Home Assistant (h:1)", 5.0).deliver(
        encode_wav(SAMPLES), UTTERANCE)
    assert peer == "Home Assistant (h:1)" and got == [(SAMPLES.astype("<i2").tobytes(), 5.0)]


MQTT = types.SimpleNamespace(url="mqtt://broker:1883", send_audio=print, send_hermes_audio=len)
ASSIST = types.SimpleNamespace(send=repr, hub=lambda: "Home Assistant (192.0.2.5:41000)")
ESPHOME = types.SimpleNamespace(send=ascii, hub=lambda: "Home Assistant (192.0.2.6:6053)")


def test_sinks_from_a_config_file_are_built_by_their_type(tmp_path):
    """Types read from TOML are new strings, not the literals in the code: compared by value."""
    (tmp_path / "box").mkdir()
    (tmp_path / "guard.toml").write_text(f'[sinks.box]\ntype = "directory"\npath = "{tmp_path / "box"}"\n'
                                         '[sinks.cmd]\ntype = "command"\ncommand = ["/bin/cat"]\n'
                                         '[sinks.hub]\ntype = "mqtt"\n[sinks.asr]\ntype = "hermes"\n'
                                         '[sinks.ha]\ntype = "wyoming"\n[wyoming]\nuri = "tcp://127.0.0.1:10700"\n'
                                         '[sinks.api]\ntype = "esphome"\n[esphome]\nport = 6053\n'
                                         '[mqtt]\nhost = "localhost"\nhermes = true\n')
    cfg, _ = config.load(str(tmp_path / "guard.toml"))
    sinks = build(cfg.sinks, "k", MQTT, ASSIST, ESPHOME)
    assert [type(s).__name__ for s in sinks] == [
        "DirectorySink", "CommandSink", "MqttSink", "HermesSink", "AssistSink", "AssistSink"]
    assert (sinks[4].send, sinks[5].send) == (repr, ascii), "a wyoming sink goes through the satellite, esphome's not"
    assert sinks[5].destination() == "Home Assistant (192.0.2.6:6053)"


def test_sinks_are_built_in_config_order_with_their_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    sinks = build({"z": config.SinkConfig(type="command", command=("/bin/cat",), timeout_seconds=7.0),
                   "a": config.SinkConfig(type="directory", path="~/box"),
                   "m": config.SinkConfig(type="mqtt", timeout_seconds=3.0),
                   "h": config.SinkConfig(type="hermes", timeout_seconds=4.0),
                   "w": config.SinkConfig(type="wyoming", timeout_seconds=5.0)}, "kitchen", MQTT, ASSIST)
    assert [type(s).__name__ for s in sinks] == [
        "CommandSink", "DirectorySink", "MqttSink", "HermesSink", "AssistSink"]
    assert [s.name for s in sinks] == ["z", "a", "m", "h", "w"]
    assert (sinks[3].send, sinks[3].timeout_seconds, sinks[4].send, sinks[4].timeout_seconds) == (len, 4.0, repr, 5.0)
    assert sinks[2].destination() == "mqtt://broker:1883/guard/kitchen/audio/"
    assert sinks[3].destination() == "mqtt://broker:1883/hermes/audioServer/kitchen/audioFrame"
    assert sinks[4].destination() == "Home Assistant (192.0.2.5:41000)", "the hub connected at the moment of asking"
    assert (sinks[0].destination(), sinks[1].destination()) == ("/bin/cat", str(tmp_path / "box"))
    assert sinks[0].argv == ("/bin/cat",) and sinks[0].timeout_seconds == 7.0 and sinks[0].device_id == "kitchen"
    assert sinks[1].folder == tmp_path / "box" and sinks[1].device_id == "kitchen"
    assert sinks[2].send is print and sinks[2].timeout_seconds == 3.0


def test_a_release_to_a_hub_that_outlasts_its_time_may_have_arrived_and_is_stopped_there():
    """A Home Assistant server's release runs on its own loop: done in time, it names the receiver; out of
    time, it is uncertain (part may have arrived), names who and how long, and its coroutine is cancelled."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cancelled = threading.Event()

    async def stream(seconds: float) -> str:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "Home Assistant (h:1)"

    try:
        assert release_on(loop, stream(0.0), 5.0, "Home Assistant (h:1)") == "Home Assistant (h:1)"
        with pytest.raises(DeliveryUncertain, match=r"^Home Assistant \(h:2\) did not take the audio within 0\.2 s; "
                                                    r"part of it may have arrived$"):
            release_on(loop, stream(60.0), 0.2, "Home Assistant (h:2)")
        assert cancelled.wait(5), "the stream stops once its time is out"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
