"""The ESPHome API server against aioesphomeapi's own client, as Home Assistant's ESPHome integration uses it:
with the owner's key it reads the device and its mute switch; without it, or in plain text, it gets nothing."""

import asyncio
import base64
import dataclasses
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import speech
from aioesphomeapi import APIClient, InvalidEncryptionKeyAPIError, RequiresEncryptionAPIError
from aioesphomeapi.model import VoiceAssistantEventType, VoiceAssistantTimerEventType
from conftest import GuardServing, consent_window_open, daemon_config, speaker_home, until
from mqtt_broker import free_port

from guard import assembly, audit, config, esphome, timers
from guard.assembly import assemble
from guard.daemon import Daemon, RunOptions
from guard.errors import ConfigError, GuardError
from guard.esphome import EsphomeServer
from guard.inbox import Command
from guard.vocabulary import State
from guard.wake import WakeDetector


@pytest.fixture
def server():
    key = esphome.new_key()
    posted: list[Command] = []
    served = EsphomeServer(base64.b64decode(key), "kitchen", posted.append, host="127.0.0.1", port=0,
                           handshake_seconds=1.0)
    served.start()
    served.key_text, served.posted = key, posted
    yield served
    served.stop()


def _talk(server, key: str | None, steps):
    """Connect as Home Assistant does, run `steps(client)`, disconnect; returns what steps returned."""
    async def talk():
        client = APIClient("127.0.0.1", server.port, None, noise_psk=key)
        await asyncio.wait_for(client.connect(login=True), 10)
        try:
            return await steps(client)
        finally:
            await client.disconnect()
    return asyncio.run(talk())


def test_home_assistants_client_with_the_key_reads_the_device_and_its_mute_switch(server):
    async def steps(client):
        info = await client.device_info()
        entities, _ = await client.list_entities_services()
        states = []
        client.subscribe_states(states.append)
        await asyncio.sleep(0.2)
        return info, entities, states

    info, entities, states = _talk(server, server.key_text, steps)
    assert info.name == "kitchen" and info.mac_address == server.device.mac and info.api_encryption_supported
    assert [(e.object_id, e.key, type(e).__name__) for e in entities] == [("mute", 1, "SwitchInfo"),
                                                                          ("state", 3, "TextSensorInfo")]
    assert [(s.key, s.state) for s in states] == [(1, False), (3, "idle")]


def test_the_mute_switch_posts_mutes_and_shows_the_guards_mute_whoever_made_it(server):
    async def steps(client):
        states = []
        client.subscribe_states(states.append)
        client.switch_command(esphome.MUTE_KEY, True)
        client.switch_command(esphome.MUTE_KEY, False)
        client.switch_command(99, True)  # no such entity: nothing happens
        await asyncio.sleep(0.2)
        server.show(State.MUTED)  # the button muted the guard
        server.show(State.MUTED)  # a record made while muted: nothing new to show
        server.show(State.IDLE)
        server.show(State.CAPTURING)
        await asyncio.sleep(0.2)
        return states

    states = _talk(server, server.key_text, steps)
    assert server.posted == [Command("esphome", "mute"), Command("esphome", "unmute")]
    switch = [s.state for s in states if s.key == esphome.MUTE_KEY]
    assert switch == [False, True, False], "the switch shows the guard's mute, not what was asked"
    shown = [s.state for s in states if s.key == esphome.STATE_KEY]
    assert shown == ["idle", "muted", "idle", "capturing"], "the State sensor follows the guard"


def test_a_client_with_another_key_is_refused_before_any_message(server, caplog):
    with pytest.raises(InvalidEncryptionKeyAPIError):
        _talk(server, esphome.new_key(), lambda client: asyncio.sleep(0))
    assert server.posted == []
    assert "without the owner's key" in caplog.text


def test_a_plain_text_client_is_refused(server, caplog):
    with pytest.raises(RequiresEncryptionAPIError):
        _talk(server, None, lambda client: asyncio.sleep(0))
    assert server.posted == [] and "plain-text client" in caplog.text


def test_a_stranger_sending_garbage_gets_one_refusal_and_the_server_keeps_serving(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as stranger:
        stranger.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert stranger.recv(100) == b"\x01\x00\x13\x01Bad indicator byte"
        assert stranger.recv(100) == b"", "closed after the refusal"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as huge:
        huge.sendall(b"\x01\xff\xff" + b"\x00" * 1000)  # announces 64 KiB and never sends it
    info = _talk(server, server.key_text, lambda client: client.device_info())
    assert info.name == "kitchen"


def test_connections_that_never_prove_the_key_are_limited_and_dropped(server, caplog):
    silent = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(esphome.MAX_CONNECTIONS)]
    try:
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        assert extra.recv(10) == b"", "one more than the limit is closed at once"
        extra.close()
        for sock in silent:
            assert sock.recv(10) == b"", "each silent one is dropped after the handshake time"
        assert caplog.text.count("no key proven in 1 s") == esphome.MAX_CONNECTIONS
        info = _talk(server, server.key_text, lambda client: client.device_info())
        assert info.name == "kitchen", "the owner's client gets in once they are gone"
    finally:
        for sock in silent:
            sock.close()


def test_the_key_file_is_written_once_read_back_and_refused_when_others_can_read_it(tmp_path):
    path = tmp_path / "esphome.key"
    key = esphome.write_key(path)
    assert len(base64.b64decode(key)) == 32 and oct(path.stat().st_mode & 0o777) == "0o600"
    assert esphome.read_key(path) == base64.b64decode(key)
    with pytest.raises(ConfigError, match="a key is already there"):
        esphome.write_key(path)
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match="readable by group or others; run: chmod 600"):
        esphome.read_key(path)
    os.chmod(path, 0o600)
    path.write_text("not a key\n")
    with pytest.raises(ConfigError, match="not an ESPHome key"):
        esphome.read_key(path)
    with pytest.raises(ConfigError, match="cannot read the ESPHome key .*guard esphome-key"):
        esphome.read_key(tmp_path / "missing.key")


def test_the_mac_address_is_stable_locally_administered_and_differs_per_device():
    mac = esphome.device_mac("kitchen")
    assert mac == esphome.device_mac("kitchen") != esphome.device_mac("hall")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01


def _daemon_with_esphome(tmp_path, source, publish=lambda event: None, models=("alexa",), **sections):
    """A real daemon (file source at real-time pace, mock pins) serving the ESPHome API on a free port with a
    fresh key; `sections` as daemon_config's. Returns it, its running thread, the key and its config."""
    key_file = tmp_path / "esphome.key"
    key = esphome.write_key(key_file)
    cfg = daemon_config(tmp_path, esphome=config.EsphomeConfig(port=free_port(), host="127.0.0.1",
                                                               key_file=str(key_file), zeroconf=False), **sections)
    cfg = dataclasses.replace(cfg, wake=dataclasses.replace(cfg.wake, models=models))
    daemon = assemble(cfg, RunOptions(str(source), "mock", publish=publish), WakeDetector(cfg.wake.settings()))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    assert daemon.esphome.serving.wait(10)
    return daemon, thread, key, cfg


def test_home_assistants_mute_switch_mutes_a_running_guard_and_cannot_lift_a_button_mute(tmp_path, quiet_wav):
    daemon, thread, key, cfg = _daemon_with_esphome(tmp_path, quiet_wav)
    try:
        async def mute_then_unmute(client):
            states = []
            client.subscribe_states(states.append)
            client.switch_command(esphome.MUTE_KEY, True)
            assert await asyncio.to_thread(until, lambda: daemon.gate.state is State.MUTED)
            client.switch_command(esphome.MUTE_KEY, False)
            assert await asyncio.to_thread(until, lambda: daemon.gate.state is State.IDLE)
            await asyncio.sleep(0.3)
            return [s.state for s in states if s.key == esphome.MUTE_KEY]

        shown = _talk(daemon.esphome, key, mute_then_unmute)
        assert shown == [False, True, False], "the switch shows what the gate did"
        pin = daemon.pin_factory.pin(cfg.gpio.button_pin)
        pin.drive_low()  # a long press: the button's own mute
        assert until(lambda: daemon.gate.state is State.MUTED and daemon.gate.muted_by == "button")
        pin.drive_high()

        async def unmute(client):
            client.switch_command(esphome.MUTE_KEY, False)
            log = tmp_path / "audit.jsonl"
            assert await asyncio.to_thread(until, lambda: any(r["event"] == "refused" for r in audit.read(log)))

        _talk(daemon.esphome, key, unmute)
        assert daemon.gate.state is State.MUTED and daemon.gate.muted_by == "button"
        records = audit.read(tmp_path / "audit.jsonl")
        assert [(r["event"], r.get("by")) for r in records if r["event"] in ("muted", "unmuted", "refused")] == [
            ("muted", "esphome"), ("unmuted", "esphome"), ("muted", "button"), ("refused", "esphome")]
    finally:
        daemon.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_guard_run_without_the_key_file_says_how_to_make_one(tmp_path, quiet_wav):
    cfg = daemon_config(tmp_path, esphome=config.EsphomeConfig(port=6053, key_file=str(tmp_path / "none.key")))
    with pytest.raises(ConfigError, match=r"none\.key: cannot read the ESPHome key .*guard esphome-key"):
        assemble(cfg, RunOptions(str(quiet_wav), "mock"), WakeDetector(cfg.wake.settings()))


def test_the_announcement_names_the_mac_and_the_encryption_home_assistant_asks_the_key_for(server):
    info = server.service_info("192.0.2.7")
    assert (info.type, info.name, info.server, info.port) == (
        "_esphomelib._tcp.local.", "kitchen._esphomelib._tcp.local.", "kitchen.local.", server.port)
    assert info.parsed_addresses() == ["192.0.2.7"]
    properties = {k.decode(): v.decode() for k, v in info.properties.items()}
    assert properties["mac"] == server.device.mac.replace(":", "").lower()  # the form Home Assistant normalizes
    assert properties["api_encryption"] == "Noise_NNpsk0_25519_ChaChaPoly_SHA256"


def test_a_taken_port_is_one_clear_error_at_start(server):
    taken = EsphomeServer(base64.b64decode(server.key_text), "hall", lambda c: None, "127.0.0.1", server.port)
    with pytest.raises(GuardError, match=rf"^\[esphome\] port {server.port}: cannot listen on 127\.0\.0\.1 "):
        taken.start()
    assert not taken.serving.is_set()


@pytest.fixture(scope="module")
def two_requests_wav(tmp_path_factory):
    audio = speech.two_requests("turn off the kitchen light", "what is my bank password")
    return speech.write_wav(tmp_path_factory.mktemp("esphome") / "two.wav", audio)


class HomeAssistantVoice:
    """aioesphomeapi's client subscribed to voice assistant, as Home Assistant's ESPHome satellite is: it accepts
    each run (audio over the API) and keeps what arrives, in order, in its own thread and loop."""

    def __init__(self, port: int, key: str, answer: int | None = 0) -> None:
        self.answer = answer  # 0: the audio over this connection; a UDP port; None: refuse the run
        self.runs: list[str] = []  # "start", then one "audio" per chunk, then "end" (or "abort")
        self.audio = bytearray()
        self.started_at: float | None = None
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(port, key),), daemon=True)
        self._thread.start()

    async def _serve(self, port: int, key: str) -> None:
        client = APIClient("127.0.0.1", port, None, noise_psk=key)
        await client.connect(login=True)
        self.info = await client.device_info()

        async def start(conversation_id, flags, audio_settings, wake_word_phrase):
            self.runs.append("start")
            self.started_at = time.monotonic()
            return self.answer

        async def audio(data, data2=None):
            self.runs.append("audio")
            self.audio += data

        async def stop(abort):
            self.runs.append("abort" if abort else "end")

        client.subscribe_voice_assistant(handle_start=start, handle_stop=stop, handle_audio=audio)
        self._client, self._loop = client, asyncio.get_running_loop()
        self.ready.set()
        await asyncio.to_thread(self._stop.wait)
        await client.disconnect()

    def ask(self, url: str):
        """Home Assistant's "start conversation": the prompt's URL, then listen; returns the device's answer."""
        return asyncio.run_coroutine_threadsafe(self._client.send_voice_assistant_announcement_await_response(
            url, 20, start_conversation=True), self._loop).result(30)

    def event(self, kind, data: dict[str, str]) -> None:
        """A pipeline event as Home Assistant sends it during a run (TTS_END carries the answer's URL)."""
        self._loop.call_soon_threadsafe(self._client.send_voice_assistant_event, kind, data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


class PressOnFirstPending:
    """A publish callback: presses the daemon's button once the first request is pending (from a thread, as a
    person would), and notes when each release was recorded (`releasing`)."""

    def __init__(self) -> None:
        self.releasing: list[float] = []
        self.daemon: Daemon | None = None  # set once the daemon is built

    def __call__(self, event) -> None:
        if event.kind == "releasing":
            self.releasing.append(time.monotonic())
        if event.kind == "pending" and not self.releasing:
            threading.Thread(target=self._press, daemon=True).start()

    def _press(self) -> None:
        until(lambda: consent_window_open(self.daemon), 5)
        pin = self.daemon.pin_factory.pin(self.daemon.config.gpio.button_pin)
        pin.drive_low()
        pin.drive_high()


def test_home_assistant_hears_exactly_the_released_request_over_the_encrypted_api(tmp_path, two_requests_wav):
    """The first request is released by a press, the second times out: Home Assistant's voice assistant gets
    one run with the first request's samples, after the releasing record, then its end; nothing of the second."""
    presser = PressOnFirstPending()
    daemon, thread, key, cfg = _daemon_with_esphome(
        tmp_path, two_requests_wav, presser,
        sinks={"box": config.SinkConfig(path=str(tmp_path / "sink")), "assist": config.SinkConfig(type="esphome")})
    presser.daemon = daemon
    home_assistant = HomeAssistantVoice(daemon.esphome.port, key)
    try:
        assert home_assistant.ready.wait(10)
        flags = home_assistant.info.voice_assistant_feature_flags
        assert flags == esphome.VOICE_ASSISTANT | esphome.API_AUDIO | esphome.TIMERS
        thread.join(60)
        assert not thread.is_alive()
    finally:
        home_assistant.close()
    records = audit.read(tmp_path / "audit.jsonl")
    released = [r for r in records if r["event"] == "released" and r["sink"] == "assist"]
    assert len(released) == 1 and released[0]["to"].startswith("Home Assistant (127.0.0.1:")
    assert [r["reason"] for r in records if r["event"] == "discarded"] == ["timeout"], "the second timed out"
    runs = home_assistant.runs
    assert runs[0] == "start" and runs[-1] == "end" and set(runs[1:-1]) == {"audio"}, "one run, then its end"
    with wave.open(str(next((tmp_path / "sink").glob("*.wav")))) as w:
        assert bytes(home_assistant.audio) == w.readframes(w.getnframes()), "exactly the released samples"
    assert home_assistant.started_at > presser.releasing[0], "nothing reaches Home Assistant before the release record"


def test_a_release_with_no_home_assistant_subscribed_is_recorded_as_failed():
    sent = EsphomeServer(b"k" * 32, "kitchen", lambda c: None, "127.0.0.1", 0)
    sent.start()
    try:
        with pytest.raises(GuardError, match="not subscribed to the ESPHome API's voice assistant; nothing was sent"):
            sent.send(b"\x00\x01" * 1600, 5.0)
    finally:
        sent.stop()


@pytest.mark.parametrize("answer, why", [(12345, "asked for the audio on UDP port 12345"), (None, "refused the run")])
def test_a_run_home_assistant_does_not_take_over_this_connection_sends_nothing_and_is_ended(server, answer, why):
    home_assistant = HomeAssistantVoice(server.port, server.key_text, answer=answer)
    try:
        assert home_assistant.ready.wait(10) and until(lambda: server.hub() != "")
        with pytest.raises(GuardError, match=rf"^Home Assistant \(127\.0\.0\.1:\d+\) {why}; nothing was sent$"):
            server.send(b"\x01\x02" * 1600, 5.0)
        assert until(lambda: home_assistant.runs[-1:] == ["abort"]), "the run it started is ended"
        assert "audio" not in home_assistant.runs and home_assistant.audio == b""
    finally:
        home_assistant.close()


def test_the_latest_subscriber_is_the_one_hub_and_the_others_hear_nothing(server):
    first = HomeAssistantVoice(server.port, server.key_text)
    assert first.ready.wait(10) and until(lambda: server.hub() != "")
    first_hub = server.hub()
    second = HomeAssistantVoice(server.port, server.key_text)
    try:
        assert second.ready.wait(10) and until(lambda: server.hub() not in ("", first_hub))
        to = server.send(b"\x01\x02" * 1600, 5.0)
        assert until(lambda: second.runs[-1:] == ["end"])
        assert to == server.hub() and bytes(second.audio) == b"\x01\x02" * 1600 and first.runs == []
    finally:
        first.close()
        second.close()


def test_a_timer_home_assistant_says_finished_rings_on_the_speaker_until_the_guard_stops(tmp_path, quiet_wav):
    """`guard run` with an ALSA `file` PCM as its speaker: Home Assistant starts a timer and says it finished;
    what plays is the ring, again and again, from the moment it finished; it stops with the guard."""
    guard, key = _serving_esphome(tmp_path, quiet_wav)
    played = guard.played
    with guard:
        async def timer(client):
            finished = VoiceAssistantTimerEventType.VOICE_ASSISTANT_TIMER_FINISHED
            client.send_voice_assistant_timer_event(VoiceAssistantTimerEventType.VOICE_ASSISTANT_TIMER_STARTED,
                                                    "t1", "tea", 1, 1, True)
            await asyncio.sleep(1.5)  # Home Assistant keeps the time: nothing rings until it says finished
            assert not played.exists() or played.stat().st_size == 0, "rang before Home Assistant said finished"
            client.send_voice_assistant_timer_event(finished, "t1", "tea", 1, 0, False)
            assert await asyncio.to_thread(until, lambda: played.exists() and played.stat().st_size > 4 * 16000 * 2, 20)

        _talk_to(guard.port, key, timer)
    assert guard.process.returncode == 0, guard.stderr
    out = np.frombuffer(played.read_bytes(), "<i2")
    ring = timers.ring_sound(0.5)
    lead = np.flatnonzero(ring)[0]  # the beep's window starts at zero
    first = np.flatnonzero(out)[0] - lead
    assert np.array_equal(out[first:first + len(ring)], ring), "the ring, sample for sample"
    second = first + len(ring) + np.flatnonzero(out[first + len(ring):])[0] - lead
    assert np.array_equal(out[second:second + len(ring)], ring), "and again, until stopped"
    assert "tea" not in guard.stderr, "the timer's name is not logged"


def test_a_ringing_timer_home_assistant_finished_stops_at_a_press_that_releases_nothing(tmp_path, monkeypatch,
                                                                                         quiet_wav):
    """The same ring through PortAudio on an ALSA `file` speaker, in a daemon with a button: a press stops it
    (the speaker stays silent after), and that press releases nothing and mutes nothing."""
    played = tmp_path / "played.raw"
    speaker_home(tmp_path, played)
    monkeypatch.setenv("HOME", str(tmp_path))  # each sound opens PortAudio afresh, which reads this .asoundrc
    daemon, thread, key, cfg = _daemon_with_esphome(
        tmp_path, quiet_wav, audio=dataclasses.replace(config.AudioConfig(), output_device="speaker"))
    try:
        async def timer(client):
            client.send_voice_assistant_timer_event(VoiceAssistantTimerEventType.VOICE_ASSISTANT_TIMER_STARTED,
                                                    "t1", "tea", 1, 1, True)
            client.send_voice_assistant_timer_event(VoiceAssistantTimerEventType.VOICE_ASSISTANT_TIMER_FINISHED,
                                                    "t1", "tea", 1, 0, False)
            assert await asyncio.to_thread(until, lambda: played.exists() and played.stat().st_size > 3 * 16000 * 2, 20)

        _talk_to(daemon.esphome.port, key, timer)
        assert daemon.timers.ringing
        pin = daemon.pin_factory.pin(cfg.gpio.button_pin)
        pin.drive_low()
        pin.drive_high()
        assert until(lambda: not daemon.timers.ringing, 5), "the press stopped the ring"
        time.sleep(0.5)  # the beep that was playing ends
        size = played.stat().st_size
        time.sleep(2.0)  # a ring repeats every 1.5 s
        assert played.stat().st_size == size, "nothing more plays"
        assert daemon.gate.state is State.IDLE
    finally:
        daemon.stop()
        thread.join(10)
    assert not [r for r in audit.read(tmp_path / "audit.jsonl") if r["event"] in ("releasing", "muted")]


def _serving_esphome(tmp_path, source) -> tuple[GuardServing, str]:
    """`guard run` (GuardServing) with the ESPHome API on a free port and a fresh key; returns it and the key."""
    key_file = tmp_path / "esphome.key"
    key = esphome.write_key(key_file)
    port = free_port()
    return GuardServing(tmp_path, source, f'[esphome]\nport = {port}\nhost = "127.0.0.1"\nkey_file = "{key_file}"\n'
                                          'zeroconf = false\n', port), key


def _talk_to(port: int, key: str, steps):
    async def talk():
        client = APIClient("127.0.0.1", port, None, noise_psk=key)
        await asyncio.wait_for(client.connect(login=True), 10)
        try:
            return await steps(client)
        finally:
            await client.disconnect()
    return asyncio.run(talk())


def _serve_file(path, hits: list | None = None) -> tuple[http.server.HTTPServer, str]:
    """A local HTTP server for one file, as Home Assistant serves a converted announcement; `hits` gets each GET."""
    class One(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the standard library's name
            if hits is not None:
                hits.append(self.path)
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "audio/x-wav")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), One)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/announce.wav"


def test_an_announcement_plays_sample_for_sample_and_is_reported_finished(tmp_path, quiet_wav):
    """Home Assistant's announcement (a WAV its own server hands out, in the format the guard's media player
    declares) is fetched, played on the output device exactly, and answered with success."""
    t = np.arange(int(16000 * 1.2)) / 16000
    announcement = (6000 * np.sin(2 * np.pi * 523 * t) + 500).astype(np.int16)  # no zero at either end
    wav = speech.write_wav(tmp_path / "announce.wav", announcement)
    httpd, url = _serve_file(wav)
    guard, key = _serving_esphome(tmp_path, quiet_wav)
    try:
        async def announce(client):
            info = await client.device_info()
            entities, _ = await client.list_entities_services()
            finished = await client.send_voice_assistant_announcement_await_response(url, 20)
            return info, entities, finished

        info, entities, finished = _talk_to(guard.port, key, announce)
    finally:
        httpd.shutdown()
        guard.stop()
    assert guard.process.returncode == 0, guard.stderr
    assert info.voice_assistant_feature_flags & esphome.ANNOUNCE
    speaker, = [e for e in entities if e.object_id == "speaker"]
    assert [(f.format, f.sample_rate, f.num_channels, f.sample_bytes) for f in speaker.supported_formats] == [
        ("wav", 16000, 1, 2)] * 2
    assert finished.success
    out = np.frombuffer(guard.played.read_bytes(), "<i2")
    assert np.array_equal(np.trim_zeros(out), announcement), "what played is exactly what Home Assistant served"


def test_nothing_is_announced_while_a_spoken_confirmation_is_awaited_and_only_http_is_fetched(tmp_path):
    """While the LED shows pending with voice, an announcement is answered "not played" and not even fetched
    (nothing the guard plays can confirm); a file:// URL is never read."""
    hits: list[str] = []
    httpd, url = _serve_file(speech.write_wav(tmp_path / "a.wav", speech.silence(0.5)), hits)
    secret = tmp_path / "secret.wav"
    speech.write_wav(secret, speech.silence(0.5))
    served = EsphomeServer(b"k" * 32, "kitchen", lambda c: None, "127.0.0.1", 0, speaker=object())  # never played
    served.start()
    key = base64.b64encode(b"k" * 32).decode()
    try:
        async def announce(client):
            served.playback_held.set()
            held = await client.send_voice_assistant_announcement_await_response(url, 10)
            served.playback_held.clear()
            local = await client.send_voice_assistant_announcement_await_response(f"file://{secret}", 10)
            return held, local

        held, local = _talk_to(served.port, key, announce)
    finally:
        served.stop()
        httpd.shutdown()
    assert not held.success and hits == [], "not fetched while a spoken confirmation is awaited"
    assert not local.success


class RecordingSpeaker:
    """Stands in for the PortAudio speaker (whose real path the announcement test runs): keeps what it is given."""

    def __init__(self) -> None:
        self.played = bytearray()
        self.formats: list[tuple[int, int, int]] = []
        self.done = threading.Event()

    def start(self, rate: int, width: int, channels: int) -> None:
        self.formats.append((rate, width, channels))

    def write(self, audio: bytes) -> None:
        self.played += audio

    def stop(self) -> None:
        self.done.set()

    def close(self) -> None:
        pass


def test_assists_spoken_answer_plays_only_from_the_hub(tmp_path):
    answer = (3000 * np.sin(np.arange(8000) / 5) + 200).astype(np.int16)
    httpd, url = _serve_file(speech.write_wav(tmp_path / "answer.wav", answer))
    speaker = RecordingSpeaker()
    served = EsphomeServer(b"k" * 32, "kitchen", lambda c: None, "127.0.0.1", 0, speaker=speaker)
    served.start()
    key = base64.b64encode(b"k" * 32).decode()
    tts_end = VoiceAssistantEventType.VOICE_ASSISTANT_TTS_END
    try:
        async def not_the_hub(client):  # a connection that never subscribed to voice assistant
            client.send_voice_assistant_event(tts_end, {"url": url})
            await asyncio.sleep(0.5)

        _talk_to(served.port, key, not_the_hub)
        assert not speaker.done.is_set(), "an answer from a connection that is not the hub is not played"
        home_assistant = HomeAssistantVoice(served.port, key)
        assert home_assistant.ready.wait(10) and until(lambda: served.hub() != "")
        home_assistant.event(tts_end, {"url": url})
        assert speaker.done.wait(10)
        home_assistant.close()
    finally:
        served.stop()
        httpd.shutdown()
    assert speaker.formats == [(16000, 2, 1)] and bytes(speaker.played) == answer.tobytes()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another owner needs root (CI runs as root)")
def test_a_key_file_another_account_could_replace_is_refused_at_start(tmp_path):
    """Whoever holds the key is Home Assistant, which receives released requests: the key file is judged by the
    same trust rules as a sink's folder."""
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    key_file = folder / "esphome.key"
    esphome.write_key(key_file)
    toml = tmp_path / "guard.toml"
    toml.write_text(f'[esphome]\nport = 6053\nkey_file = "{key_file}"\n')
    assert config.load(str(toml))[0].esphome.port == 6053
    os.chown(folder, 65534, 65534)
    try:
        refused = rf"\[esphome\] key_file: {folder} \(on the way to {key_file}\): owned by"
        with pytest.raises(ConfigError, match=refused):
            config.load(str(toml))
    finally:
        os.chown(folder, 0, 0)


def test_home_assistant_chooses_among_the_configured_wake_words_and_the_choice_is_recorded(tmp_path, quiet_wav):
    """The wake-word choice offers the owner's configured words only; a word Home Assistant makes up is ignored;
    a word turned off no longer wakes the guard; each choice is in the audit log."""
    daemon, thread, key, cfg = _daemon_with_esphome(tmp_path, quiet_wav, models=("alexa", "hey_jarvis"))
    try:
        async def choose(client):
            offered = await client.get_voice_assistant_configuration(10)
            await client.set_voice_assistant_configuration(["hey_jarvis", "ok_google"])
            assert await asyncio.to_thread(until, lambda: daemon.esphome.device.active_wake_words == ("hey_jarvis",))
            return offered, await client.get_voice_assistant_configuration(10)

        offered, after = _talk_to(daemon.esphome.port, key, choose)
    finally:
        daemon.stop()
        thread.join(10)
    assert [w.id for w in offered.available_wake_words] == ["alexa", "hey_jarvis"]
    assert offered.active_wake_words == ["alexa", "hey_jarvis"] and after.active_wake_words == ["hey_jarvis"]
    chose = [r for r in audit.read(tmp_path / "audit.jsonl") if r["event"] == "wake-words"]
    assert [(r["by"], r["model"]) for r in chose] == [("esphome", "hey_jarvis")]
    frames = speech.frames(speech.wake_clip("alexa", "en")[0])
    assert not [d for f in frames for d in daemon.gate.detector.process(f)], "alexa no longer wakes it"


def test_with_the_announcement_on_it_starts_and_says_whether_the_network_heard_it(caplog):
    """zeroconf = true is the default: the announcement runs beside the server (a first version called the media
    player's method of the same name here, and every default start failed)."""
    served = EsphomeServer(b"k" * 32, "kitchen", lambda c: None, "127.0.0.1", 0, announce=True)
    with caplog.at_level("INFO"):
        served.start()
        try:
            assert served.serving.is_set()
            assert until(lambda: "ESPHome device announced" in caplog.text or "not announced" in caplog.text, 20)
            info = _talk(served, base64.b64encode(b"k" * 32).decode(), lambda client: client.device_info())
            assert info.name == "kitchen"
        finally:
            served.stop()


def test_a_question_home_assistant_asks_is_answered_only_after_a_press(tmp_path, monkeypatch):
    """Home Assistant's "start conversation": its prompt plays, the answer is captured without a wake word, held
    pending, and reaches Home Assistant as a voice-assistant run only after a press, sample for sample."""
    speaker = RecordingSpeaker()
    monkeypatch.setattr(assembly, "Speaker", lambda device: speaker)
    answer = np.concatenate([speech.silence(7.0), speech.say("pasta please"), speech.silence(20.0)])
    source = speech.write_wav(tmp_path / "answer.wav", answer)
    prompt = speech.write_wav(tmp_path / "prompt.wav", (4000 * np.sin(np.arange(8000) / 5)).astype(np.int16))
    httpd, url = _serve_file(prompt)
    pending = threading.Event()
    daemon, thread, key, cfg = _daemon_with_esphome(
        tmp_path, source, lambda event: event.kind == "pending" and pending.set(),
        audio=dataclasses.replace(config.AudioConfig(), output_device="speaker"),
        sinks={"box": config.SinkConfig(path=str(tmp_path / "sink")), "assist": config.SinkConfig(type="esphome")})
    home_assistant = HomeAssistantVoice(daemon.esphome.port, key)
    try:
        assert home_assistant.ready.wait(10)
        assert home_assistant.info.voice_assistant_feature_flags & esphome.START_CONVERSATION
        finished = home_assistant.ask(url)
        assert finished.success and bytes(speaker.played) == prompt.read_bytes()[44:], "the prompt played first"
        assert pending.wait(30), [r["event"] for r in audit.read(tmp_path / "audit.jsonl")]
        assert home_assistant.runs == [] and not list((tmp_path / "sink").iterdir()), "nothing before a press"
        assert until(lambda: consent_window_open(daemon), 5)
        pin = daemon.pin_factory.pin(cfg.gpio.button_pin)
        pin.drive_low()
        pin.drive_high()
        assert until(lambda: home_assistant.runs[-1:] == ["end"], 20), home_assistant.runs
    finally:
        httpd.shutdown()
        home_assistant.close()
        daemon.stop()
        thread.join(10)
    records = audit.read(tmp_path / "audit.jsonl")
    assert [(r["event"], r.get("by")) for r in records][:2] == [("follow-up", "esphome"), ("pending", None)]
    with wave.open(str(next((tmp_path / "sink").glob("*.wav")))) as w:
        released = w.readframes(w.getnframes())
    assert bytes(home_assistant.audio) == released and 1.0 < len(released) / 32000 < 10.0


if sys.version_info >= (3, 13):  # HA's ESPHome Assist satellite (2024.10 on) needs the HA of Trixie's Python
    def test_home_assistants_own_esphome_satellite_code_gets_only_the_released_request(tmp_path, home_assistant_python):
        """Home Assistant's `EsphomeAssistSatellite` itself (tests/home_assistant_esphome.py, in .venv-ha), over
        aioesphomeapi with the key: of two requests only the pressed one reaches its speech-to-text, sample for
        sample and after the release record; nothing of the other."""
        out = tmp_path / "ha"
        out.mkdir()
        key_file = tmp_path / "esphome.key"
        key, port = esphome.write_key(key_file), free_port()
        client = subprocess.Popen([home_assistant_python, str(Path(__file__).with_name("home_assistant_esphome.py")),
                                   "127.0.0.1", str(port), key, str(out)], stderr=subprocess.PIPE, text=True)
        presser = PressOnFirstPending()
        try:
            assert until(lambda: (out / "imported").exists() or client.poll() is not None, 120), "HA never loaded"
            audio = speech.two_requests("turn off the kitchen light", "what is my bank password", lead=6.0, gap=4.0,
                                        tail=4.0)
            cfg = daemon_config(tmp_path, esphome=config.EsphomeConfig(port=port, host="127.0.0.1",
                                                                       key_file=str(key_file), zeroconf=False),
                                sinks={"box": config.SinkConfig(path=str(tmp_path / "sink")),
                                       "assist": config.SinkConfig(type="esphome")})
            daemon = assemble(cfg, RunOptions(str(speech.write_wav(tmp_path / "two.wav", audio)), "mock",
                                            publish=presser), WakeDetector(cfg.wake.settings()))
            presser.daemon = daemon
            thread = threading.Thread(target=daemon.run, daemon=True)
            thread.start()
            assert until(lambda: (out / "ready").exists() or client.poll() is not None, 30), "HA never subscribed"
            thread.join(60)
            assert not thread.is_alive()
        finally:
            client.terminate()
            _, stderr = client.communicate(timeout=30)
        ran = out / "runs.jsonl"
        runs = [json.loads(line) for line in ran.read_text().splitlines()] if ran.exists() else []
        assert len(runs) == 1, f"one pipeline run, the released request's: {runs}\n{stderr[-3000:]}"
        assert (runs[0]["start_stage"], runs[0]["end_stage"]) == ("stt", "tts")
        with wave.open(str(next((tmp_path / "sink").glob("*.wav")))) as w:
            assert (out / "run-1.raw").read_bytes() == w.readframes(w.getnframes()), "exactly the released request"
        assert runs[0]["first_audio"] > presser.releasing[0], "no audio before the release record"
        assert [r["reason"] for r in audit.read(tmp_path / "audit.jsonl") if r["event"] == "discarded"] == ["timeout"]
