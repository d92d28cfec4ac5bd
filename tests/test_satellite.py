"""Home Assistant's voice satellite: a stand-in for Home Assistant, made of the `wyoming` library's own client
as Home Assistant's Wyoming integration uses it, connects to a real guard. Only a released request reaches it,
after its record; its pause mutes; its requests to listen are refused; its spoken answer plays through PortAudio."""

import contextlib
import dataclasses
import json
import socket
import subprocess
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import speech
from assist import HomeAssistant
from conftest import DEVICE, GUARD, GuardServing, alsa_home, consent_window_open, daemon_config, until
from mqtt_broker import free_port
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.info import Info
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.satellite import PauseSatellite, RunSatellite
from wyoming.snd import Played
from wyoming.timer import TimerFinished, TimerStarted
from wyoming.tts import Synthesize
from wyoming.wake import Detect

from guard import audit, config
from guard.assembly import assemble
from guard.daemon import Daemon, RunOptions
from guard.inbox import Command
from guard.sound import read_chime
from guard.vocabulary import Event as GateEvent
from guard.vocabulary import LedPattern, State
from guard.wake import WakeDetector


@pytest.fixture(scope="module")
def two_requests_wav(tmp_path_factory):
    audio = speech.two_requests("turn off the kitchen light", "what is my bank password")
    return speech.write_wav(tmp_path_factory.mktemp("assist") / "two.wav", audio)


def _config(tmp_path, port: int) -> config.Config:
    return daemon_config(tmp_path, wyoming=config.WyomingConfig(uri=f"tcp://127.0.0.1:{port}", zeroconf=False),
                         sinks={"box": config.SinkConfig(path=str(tmp_path / "sink")),
                                "assist": config.SinkConfig(type="wyoming")})


def _daemon_pressing_on_first_pending(cfg, source) -> tuple[Daemon, dict[str, list[tuple[float, GateEvent]]]]:
    """A daemon at real-time pace whose button is pressed once the LED shows the first pending request; and
    its events by kind, each with the time it was published."""
    records: dict[str, list[tuple[float, GateEvent]]] = {}

    def press_once_the_led_shows_pending() -> None:
        until(lambda: consent_window_open(daemon), 5)
        pin = daemon.pin_factory.pin(cfg.gpio.button_pin)
        pin.drive_low()
        pin.drive_high()

    def hook(event: GateEvent) -> None:
        records.setdefault(event.kind, []).append((time.monotonic(), event))
        if event.kind == "pending" and len(records["pending"]) == 1:
            threading.Thread(target=press_once_the_led_shows_pending, daemon=True).start()

    daemon = _daemon(cfg, source, hook)
    return daemon, records


def _daemon(cfg, source, publish) -> Daemon:
    return assemble(cfg, RunOptions(str(source), "mock", fast=False, publish=publish),
                    WakeDetector(cfg.wake.settings()))


def test_assist_hears_exactly_the_released_request_and_nothing_before_or_else(tmp_path, two_requests_wav):
    """The first request is released by a press, the second times out: Home Assistant gets one pipeline run
    from speech-to-text with the first request's samples, after its `releasing` record; nothing of the second."""
    cfg = _config(tmp_path, free_port())
    cfg = dataclasses.replace(cfg, wyoming=dataclasses.replace(cfg.wyoming, allowed_hosts=("127.0.0.1", "127.0.0.2")))
    daemon, records = _daemon_pressing_on_first_pending(cfg, two_requests_wav)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    home_assistant = HomeAssistant(int(cfg.wyoming.uri.rsplit(":", 1)[1]))
    assert until(lambda: daemon.satellite.connected)
    second = HomeAssistant(int(cfg.wyoming.uri.rsplit(":", 1)[1]), source="127.0.0.2")  # connects after, says
    thread.join(60)                                                                     # run-satellite too
    home_assistant.close()
    second.close()
    assert "audio-chunk" not in second.types() and "run-pipeline" not in second.types(), "the second gets nothing"
    released = [r for r in audit.read(tmp_path / "audit.jsonl") if r["event"] == "released" and r["sink"] == "assist"]
    assert [r["to"] for r in released] == [f"Home Assistant ({home_assistant.peer})"], "the record names who got it"
    refused = [r for r in audit.read(tmp_path / "audit.jsonl") if r["event"] == "refused"]
    assert [(r["peer"], r["reason"].split(":")[0]) for r in refused] == [("127.0.0.2", "run-satellite")]
    assert [e.kind for _, e in records["discarded"]] == ["discarded"], "the second request timed out"
    kinds = home_assistant.types()
    assert kinds[0] == "info" and Info.from_event(home_assistant.events[0][1]).satellite.supports_trigger is False
    audio_kinds = kinds[1:]
    assert audio_kinds[:2] == ["run-pipeline", "audio-start"] and audio_kinds[-1] == "audio-stop"
    assert set(audio_kinds[2:-1]) == {"audio-chunk"}, "one pipeline run, one stream, nothing after it"
    events = [e for _, e in home_assistant.events]
    run = RunPipeline.from_event(next(e for e in events if RunPipeline.is_type(e.type)))
    assert (run.start_stage, run.end_stage) == (PipelineStage.ASR, PipelineStage.HANDLE)
    chunks = [AudioChunk.from_event(e) for e in events if AudioChunk.is_type(e.type)]
    assert {(c.rate, c.width, c.channels) for c in chunks} == {(16000, 2, 1)}
    heard = np.frombuffer(b"".join(c.audio for c in chunks), "<i2")
    released = next((tmp_path / "sink").glob("*.wav"))
    with wave.open(str(released)) as w:
        assert np.array_equal(heard, np.frombuffer(w.readframes(w.getnframes()), "<i2"))
    first_sent = next(t for t, e in home_assistant.events if RunPipeline.is_type(e.type))
    assert first_sent > records["releasing"][0][0], "nothing reaches Home Assistant before the release record"
    released_to = [e.sink for _, e in records["released"]]
    assert sorted(released_to) == ["assist", "box"]


def test_a_pause_mutes_and_requests_to_listen_are_refused(tmp_path, quiet_wav):
    cfg = _config(tmp_path, free_port())
    daemon = _daemon(cfg, quiet_wav, lambda e: None)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    home_assistant = HomeAssistant(int(cfg.wyoming.uri.rsplit(":", 1)[1]))
    try:
        assert until(lambda: daemon.satellite.connected)
        home_assistant.send(PauseSatellite().event())
        assert until(lambda: daemon.gate.state is State.MUTED and daemon.gate.muted_by == "assist")
        assert not daemon.listening.is_set(), "the microphone is closed"
        daemon.inbox.post(Command("remote", "unmute"))  # an MQTT unmute cannot lift Home Assistant's pause
        home_assistant.send(Detect(names=["alexa"]).event(),
                            RunPipeline(start_stage=PipelineStage.WAKE, end_stage=PipelineStage.TTS).event(),
                            RunSatellite().event())
        assert until(lambda: daemon.gate.state is State.IDLE)
        refused = [r for r in audit.read(tmp_path / "audit.jsonl") if r["event"] == "refused"]
        assert [(r["by"], r["reason"].split(":")[0]) for r in refused] == [
            ("remote", "unmute"), ("assist", "detect"), ("assist", "run-pipeline")]
        assert "only after a local act of consent" in refused[1]["reason"]
        assert "audio-chunk" not in home_assistant.types() and "run-pipeline" not in home_assistant.types()
    finally:
        daemon.stop()
        thread.join(10)
        home_assistant.close()


def test_a_release_while_home_assistant_is_away_is_recorded_as_failed_and_nothing_is_sent(tmp_path, two_requests_wav):
    daemon, records = _daemon_pressing_on_first_pending(_config(tmp_path, free_port()), two_requests_wav)
    daemon.run()
    first = records["pending"][0][1].utterance
    said = [(r["event"], r.get("sink")) for r in audit.read(tmp_path / "audit.jsonl") if r.get("utterance") == first]
    assert ("release-failed", "assist") in said and ("released", "box") in said
    failed = next(r for r in audit.read(tmp_path / "audit.jsonl") if r["event"] == "release-failed")
    assert "not connected to the satellite; nothing was sent" in failed["reason"]


def test_a_stranger_or_garbage_never_takes_the_satellite(tmp_path, quiet_wav):
    """Whoever connects receives released requests: with allowed_hosts, no one else may; a malformed
    event drops only its own connection; Home Assistant still connects afterwards."""
    cfg = _config(tmp_path, free_port())
    cfg = dataclasses.replace(cfg, wyoming=dataclasses.replace(cfg.wyoming, allowed_hosts=("127.0.0.1",)))
    daemon = _daemon(cfg, quiet_wav, lambda e: None)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    port = int(cfg.wyoming.uri.rsplit(":", 1)[1])
    try:
        until(lambda: daemon.satellite is not None and daemon.satellite._thread.is_alive())
        for source, line in (("127.0.0.2", b'{"type": "run-satellite"}\n'),
                             ("127.0.0.1", b'{"type": "run-satellite", "data_length": "x"}\n[[[\n')):
            with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as peer, \
                    contextlib.suppress(ConnectionResetError):  # a stranger is cut off before it is read
                peer.sendall(line)
                assert peer.recv(100) == b"", f"the connection from {source} is closed at its first event"
            assert not daemon.satellite.connected
        home_assistant = HomeAssistant(port)
        assert until(lambda: home_assistant.types()[:1] == ["info"]) and daemon.satellite.connected
        home_assistant.close()
    finally:
        daemon.stop()
        thread.join(10)
    assert daemon.gate.state is State.IDLE


def _tone(rate: int, seconds: float) -> np.ndarray:
    """A spoken answer stand-in whose first and last samples are not zero (so the padding a device adds shows)."""
    t = np.arange(int(rate * seconds)) / rate
    noise = np.random.default_rng(7).integers(-300, 300, len(t))
    return (8000 * np.sin(2 * np.pi * 440 * t) + noise + 1000).astype(np.int16)


def test_the_spoken_answer_plays_on_the_output_device(tmp_path, quiet_wav):
    """`guard run` opens a real PortAudio output (an ALSA `file` PCM that keeps what is played); Home Assistant
    streams an answer at 22050 Hz as it does; the samples played are the samples sent, then `played` comes back."""
    port = free_port()
    answer = _tone(22050, 1.5)
    with GuardServing(tmp_path, quiet_wav, f'[wyoming]\nuri = "tcp://127.0.0.1:{port}"\nzeroconf = false\n',
                      port) as guard:
        home_assistant = HomeAssistant(port)
        pieces = [answer[i:i + 1024] for i in range(0, len(answer), 1024)]
        home_assistant.send(Synthesize(text="The kitchen light is off").event(),
                            AudioStart(rate=22050, width=2, channels=1).event(),
                            *[AudioChunk(rate=22050, width=2, channels=1, audio=p.tobytes()).event() for p in pieces],
                            AudioStop().event())
        assert until(lambda: home_assistant.types()[-1:] == [Played().event().type], 20), home_assistant.types()
        home_assistant.close()
    assert guard.process.returncode == 0, guard.stderr
    out = np.frombuffer(guard.played.read_bytes(), "<i2")
    assert np.array_equal(np.trim_zeros(out), answer), "what played is exactly what Home Assistant sent"


def test_chimes_tell_wake_pending_and_discarded_in_order_on_the_output_device(tmp_path, two_requests_wav):
    """Off by default; on, each gate event has its sound, at the configured volume, once, in order."""
    played = tmp_path / "played.raw"
    env = alsa_home(tmp_path / "home", tmp_path / "none.raw")
    (tmp_path / "home" / ".asoundrc").write_text(
        f'pcm.speaker {{\n  type file\n  slave.pcm "null"\n  file "|cat >> {played}"\n  format "raw"\n}}\n')
    # each sound opens the device afresh, and a plain file would be truncated: append through a pipe
    toml = tmp_path / "guard.toml"
    toml.write_text(f'[device]\nid = "{DEVICE}"\n[audio]\noutput_device = "speaker"\nchimes = true\n'
                    f'chime_volume = 0.25\n[gate]\npending_timeout_seconds = 2.0\n'
                    f'[audit]\npath = "{tmp_path / "audit.jsonl"}"\n[wake]\nmodels = ["alexa"]\n')
    result = subprocess.run([str(GUARD), "--config", str(toml), "run", "--source", str(two_requests_wav),
                             "--gpio", "none", "--fast"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    said = [r["event"] for r in audit.read(tmp_path / "audit.jsonl")]
    assert said == ["wake", "pending", "discarded"] * 2
    expected = np.concatenate([read_chime(kind, 0.25) for kind in said])
    out = np.frombuffer(played.read_bytes(), "<i2")
    assert np.array_equal(out[out != 0], expected[expected != 0]), "each chime once, in order, at a quarter volume"


def test_devices_output_lists_the_speakers_to_name_in_output_device(tmp_path):
    env = alsa_home(tmp_path / "home", tmp_path / "none.raw")
    (tmp_path / "home" / ".asoundrc").write_text(
        f'pcm.kitchenspeaker {{\n  type file\n  slave.pcm "null"\n  file "{tmp_path / "out.raw"}"\n'
        '  format "raw"\n}\n')
    listed = subprocess.run([str(GUARD), "devices", "--output", "--json"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    names = [json.loads(line)["name"] for line in listed.stdout.splitlines()]
    assert "kitchenspeaker" in names
    toml = tmp_path / "guard.toml"
    toml.write_text('[audio]\noutput_device = "no such speaker"\n[wyoming]\nuri = "tcp://127.0.0.1:1"\n')
    run = subprocess.run([str(GUARD), "--config", str(toml), "run", "--source", str(tmp_path / "none.wav")],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 2 and "no output device matches 'no such speaker'" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) <= 2


def test_home_assistants_own_satellite_code_gets_only_the_released_request_and_its_answer_plays(
        tmp_path, monkeypatch, home_assistant_python):
    """Home Assistant's `WyomingSatellite` itself (tests/home_assistant_satellite.py, in .venv-ha) is the client:
    of two requests only the pressed one reaches its speech-to-text, sample for sample and after its record;
    the answer its own code streams back plays through PortAudio on the output device."""
    played = tmp_path / "played.raw"
    (tmp_path / ".asoundrc").write_text(
        f'pcm.speaker {{\n  type file\n  slave.pcm "null"\n  file "{played}"\n  format "raw"\n}}\n')
    monkeypatch.setenv("HOME", str(tmp_path))  # each sound opens PortAudio afresh, which reads this .asoundrc
    port = free_port()
    cfg = dataclasses.replace(_config(tmp_path, port),
                              audio=dataclasses.replace(config.AudioConfig(), output_device="speaker"))
    answer = _tone(22050, 1.0)
    answer_wav = speech.write_wav(tmp_path / "answer.wav", answer, rate_hz=22050)
    audio = speech.two_requests("turn off the kitchen light", "what is my bank password", lead=6.0, gap=4.0, tail=4.0)
    daemon, records = _daemon_pressing_on_first_pending(cfg, speech.write_wav(tmp_path / "two.wav", audio))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()  # six quiet seconds while Home Assistant's code starts and connects
    out = tmp_path / "ha"
    out.mkdir()
    client = subprocess.Popen([home_assistant_python, str(Path(__file__).with_name("home_assistant_satellite.py")),
                               "127.0.0.1", str(port), str(out), str(answer_wav)], stderr=subprocess.PIPE, text=True)
    try:
        assert until(lambda: daemon.satellite.connected, 30), "Home Assistant's code never connected"
        thread.join(60)
    finally:
        client.terminate()
        _, stderr = client.communicate(timeout=30)
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 1, f"one pipeline run, the released request's: {runs}\n{stderr[-3000:]}"
    assert (runs[0]["start_stage"], runs[0]["end_stage"]) == ("stt", "tts")
    with wave.open(str(next((tmp_path / "sink").glob("*.wav")))) as w:
        assert (out / "run-1.raw").read_bytes() == w.readframes(w.getnframes()), "exactly the released request"
    assert runs[0]["first_audio"] > records["releasing"][0][0], "no audio before the release record"
    assert [e.kind for _, e in records["discarded"]] == ["discarded"], "the second request was wiped"
    out_samples = np.frombuffer(played.read_bytes(), "<i2")
    assert np.array_equal(np.trim_zeros(out_samples), answer), "the answer Home Assistant streamed is what played"


def test_a_timer_finished_on_the_wyoming_path_rings_on_the_led_until_a_press(tmp_path, quiet_wav):
    """Home Assistant sends Wyoming satellites timer events too: the hub's finished timer rings (the LED here,
    no speaker configured) and the press that stops it releases and mutes nothing."""
    cfg = _config(tmp_path, free_port())
    daemon = _daemon(cfg, quiet_wav, lambda e: None)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    port = int(cfg.wyoming.uri.rsplit(":", 1)[1])
    try:
        home_assistant = HomeAssistant(port)
        assert until(lambda: daemon.satellite.connected)
        home_assistant.send(TimerStarted(id="t1", total_seconds=1, name="eggs").event())
        assert until(lambda: "t1" in daemon.timers.active)
        home_assistant.send(TimerFinished(id="t1").event())
        assert until(lambda: daemon.timers.ringing and daemon.outputs.led.showing is LedPattern.TIMER)
        pin = daemon.pin_factory.pin(cfg.gpio.button_pin)
        pin.drive_low()
        pin.drive_high()
        assert until(lambda: not daemon.timers.ringing and daemon.outputs.led.showing is LedPattern.IDLE)
        home_assistant.close()
    finally:
        daemon.stop()
        thread.join(10)
    assert daemon.gate.state is State.IDLE
    assert not any(r["event"] in ("muted", "releasing") for r in audit.read(tmp_path / "audit.jsonl"))
