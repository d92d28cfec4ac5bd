"""A stranger on the network and a second Home Assistant against the Wyoming satellite: the `wyoming` library's own
client from a second loopback address (127.0.0.2), real sockets, a real `guard run` where memory, descriptors and
the watchdog are measured. Each test is one finding of issue 26, made to fail on the old code."""

import asyncio
import json
import os
import resource
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from assist import HomeAssistant
from conftest import DEVICE, GuardServing, run_guard, until
from mqtt_broker import free_port
from test_service import NotifyListener
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.ping import Ping
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.satellite import PauseSatellite, RunSatellite
from wyoming.snd import Played
from wyoming.wake import Detect

from guard import audit, satellite
from guard.config import WyomingConfig
from guard.inbox import Command, Refusal
from guard.satellite import AssistSatellite

STRANGER = "127.0.0.2"


class Satellite:
    """An AssistSatellite on its own, its posts to the loop collected."""

    def __init__(self, allowed: tuple[str, ...] = ("127.0.0.1", STRANGER), speaker=None) -> None:
        self.port = free_port()
        self.posts: list[Command | Refusal] = []
        self.satellite = AssistSatellite(WyomingConfig(uri=f"tcp://127.0.0.1:{self.port}", zeroconf=False,
                                                       allowed_hosts=allowed), DEVICE, self.posts.append, ["alexa"],
                                         speaker)
        self.satellite.start()

    def words(self) -> list[str]:
        """The commands posted: Home Assistant's pause and run-satellite as mute and unmute."""
        return [m.verb for m in self.posts if isinstance(m, Command)]

    def refused(self) -> list[tuple]:
        return [(m.peer, m.kind, m.reason, m.count) for m in self.posts if isinstance(m, Refusal)]

    def close(self) -> None:
        self.satellite.stop()


@pytest.fixture
def sat():
    s = Satellite()
    yield s
    s.close()


def test_invariant6_a_second_connection_never_becomes_the_hub(sat):
    home_assistant = HomeAssistant(sat.port)
    assert until(lambda: sat.satellite.hub() == f"Home Assistant ({home_assistant.peer})")
    stranger = HomeAssistant(sat.port, source=STRANGER)
    assert until(lambda: sat.refused())
    assert sat.satellite.hub() == f"Home Assistant ({home_assistant.peer})", "Home Assistant stays the hub"
    peer, kind, reason, count = sat.refused()[0]
    assert (peer, kind, count) == (STRANGER, "run-satellite", 1) and home_assistant.peer in reason
    stranger.close()
    home_assistant.close()
    assert until(lambda: not sat.satellite.connected)


def test_invariant2_only_the_pausing_connection_lifts_its_pause(sat):
    home_assistant = HomeAssistant(sat.port)
    assert until(lambda: sat.satellite.connected)
    home_assistant.send(PauseSatellite().event())
    assert until(lambda: sat.words() == ["mute"])
    stranger = HomeAssistant(sat.port, source=STRANGER)  # says run-satellite
    assert until(lambda: sat.refused())
    assert sat.refused()[0][:2] == (STRANGER, "run-satellite")
    assert "unmute" not in sat.words(), "a stranger's run-satellite never lifts Home Assistant's pause"
    stranger.close()
    home_assistant.send(RunSatellite().event())
    assert until(lambda: "unmute" in sat.words())
    assert sat.posts[-1] == Command("assist", "unmute")
    home_assistant.close()


def test_a_pause_outlives_its_connection_and_only_the_same_host_lifts_it(sat):
    """Home Assistant restarts while paused: its new connection (same host) lifts the pause; another host not."""
    first = HomeAssistant(sat.port)
    first.send(PauseSatellite().event())
    assert until(lambda: sat.words() == ["mute"])
    first.close()
    assert until(lambda: not sat.satellite.connected)
    stranger = HomeAssistant(sat.port, source=STRANGER)
    assert until(lambda: sat.refused())
    assert sat.refused()[0][1] == "unpause" and "unmute" not in sat.words()
    stranger.close()
    assert until(lambda: not sat.satellite.connected)
    again = HomeAssistant(sat.port)
    assert until(lambda: "unmute" in sat.words())
    again.close()


def test_a_pause_from_one_host_is_not_lifted_by_another_after_it_left(sat):
    """The pause belongs to its host: another host's connection, whatever its address, never lifts it."""
    pauser = HomeAssistant(sat.port, source=STRANGER, run_satellite=False)
    pauser.send(PauseSatellite().event())
    assert until(lambda: sat.words() == ["mute"])
    pauser.close()
    assert until(lambda: sat.satellite.connections == 0)
    home_assistant = HomeAssistant(sat.port)  # 127.0.0.1 sorts before 127.0.0.2
    assert until(lambda: sat.refused())
    assert sat.refused()[0][1] == "unpause" and "unmute" not in sat.words()
    home_assistant.close()


def test_requests_to_listen_are_counted_not_recorded_one_by_one(sat):
    """A flood of detect from the hub: one refusal at once, the rest as one count when the interval ends."""
    home_assistant = HomeAssistant(sat.port)
    assert until(lambda: sat.satellite.connected)
    flood = [Detect(names=["alexa"]).event()] * 2000 + [RunPipeline(start_stage=PipelineStage.WAKE,
                                                                     end_stage=PipelineStage.TTS).event()]
    home_assistant.send(*flood)
    assert until(lambda: len(sat.refused()) == 2)
    time.sleep(0.2)
    assert [(k, c) for _, k, _, c in sat.refused()] == [("detect", 1), ("run-pipeline", 1)]
    sat.satellite.refusals.flush(everything=True)
    assert [(k, c) for _, k, _, c in sat.refused()][2:] == [("detect", 1999)]
    home_assistant.close()


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def _closed(peer: socket.socket) -> bool:
    try:
        return peer.recv(100) == b""
    except ConnectionResetError:
        return True


def test_a_stranger_is_closed_before_anything_it_sends_is_read():
    only_home = Satellite(allowed=("127.0.0.1",))
    try:
        with _connect(only_home.port, STRANGER) as peer:
            assert _closed(peer), "closed at once, without waiting for an event"
        assert until(lambda: only_home.refused())
        assert only_home.refused()[0][:2] == (STRANGER, "connection")
        assert not only_home.satellite.connected and only_home.satellite.connections == 0
    finally:
        only_home.close()


@pytest.mark.parametrize("header", [
    {"type": "audio-chunk", "payload_length": 4_000_000_000},
    {"type": "audio-chunk", "data_length": 1_000_000},
    {"type": "x" * 9000},
    {"type": "audio-chunk", "payload_length": -1},
    {"type": "audio-chunk", "payload_length": "4000"},
])
def test_a_header_announcing_too_much_closes_the_connection_before_reading_it(sat, header):
    with _connect(sat.port) as peer:
        peer.sendall(json.dumps(header).encode() + b"\n")
        assert _closed(peer)
    assert until(lambda: sat.refused())
    assert sat.refused()[0][1] == "malformed" and sat.satellite.connections == 0


def test_connections_are_limited_and_idle_ones_closed(sat, monkeypatch):
    monkeypatch.setattr(satellite, "IDLE_SECONDS", 1.0)
    held = [_connect(sat.port) for _ in range(satellite.MAX_CONNECTIONS)]
    assert until(lambda: sat.satellite.connections == satellite.MAX_CONNECTIONS)
    with _connect(sat.port) as extra:
        assert _closed(extra), "one too many is closed at once"
    assert sat.refused()[0][1] == "connection" and "already open" in sat.refused()[0][2]
    assert until(lambda: all(_closed(s) for s in held), 10), "idle connections are closed"
    assert sat.satellite.connections == 0
    for s in held:
        s.close()


def test_a_listener_on_the_network_needs_allowed_hosts(tmp_path):
    toml = tmp_path / "guard.toml"
    toml.write_text('[wyoming]\nuri = "tcp://0.0.0.0:10700"\n')
    for verb in (["config", "check"], ["run", "--source", "/nonexistent.wav", "--gpio", "none"]):
        result = run_guard("--config", str(toml), *verb)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        line = result.stderr.strip().splitlines()[-1]
        assert 'listens on the network' in line and "add allowed_hosts" in line and "IPAddressAllow" in line, line
    toml.write_text('[wyoming]\nuri = "tcp://0.0.0.0:10700"\nallowed_hosts = ["homeassistant.local"]\n')
    line = run_guard("--config", str(toml), "config", "check").stderr.strip().splitlines()[-1]
    assert "is not an IP address" in line
    for good in ('uri = "tcp://0.0.0.0:10700"\nallowed_hosts = ["192.168.1.10"]\n', 'uri = "tcp://127.0.0.1:10700"\n'):
        toml.write_text(f"[wyoming]\n{good}")
        assert run_guard("--config", str(toml), "config", "check").returncode == 0


# -- against a real `guard run` ----------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Guard(GuardServing):
    """`guard run` on a long quiet file with a satellite on loopback, a file speaker, and a notify socket."""

    def __init__(self, tmp_path: Path, quiet_wav: Path, allowed: str = '["127.0.0.1"]', nofile: int = 1024) -> None:
        self.notify = NotifyListener(tmp_path / "notify.sock")
        port = free_port()
        super().__init__(tmp_path, quiet_wav, f'[wyoming]\nuri = "tcp://127.0.0.1:{port}"\nzeroconf = false\n'
                                              f'allowed_hosts = {allowed}\n', port,
                         env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"},
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
        assert until(lambda: self.notify.pings(0) >= 1, 10), "the watchdog pings once it runs"

    def stop(self) -> str:
        stderr = super().stop()
        self.notify.close()
        return stderr


def test_invariant7_a_4_gb_header_and_a_gigabyte_after_it_cost_no_memory(tmp_path, quiet_wav):
    guard = Guard(tmp_path, quiet_wav)
    try:
        before = _rss_mb(guard.process.pid)
        with _connect(guard.port) as peer:
            peer.sendall(json.dumps({"type": "audio-chunk", "payload_length": 4 * 1024 ** 3}).encode() + b"\n")
            sent, block = 0, bytes(1 << 20)
            with pytest.raises(OSError):  # reset once the guard has closed it: the gigabyte never gets in
                while sent < 1024 ** 3:
                    peer.sendall(block)
                    sent += len(block)
        assert sent < 64 * 1024 ** 2, f"{sent / 1024 ** 2:.0f} MB went in before the connection was closed"
        assert _rss_mb(guard.process.pid) - before < 16, "no memory taken for what the header announced"
    finally:
        stderr = guard.stop()
    assert guard.process.returncode == 0, stderr


def test_invariant7_a_thousand_connections_neither_use_up_descriptors_nor_stop_the_watchdog(tmp_path, quiet_wav):
    """1,100 connections, half from a stranger, half from the allowed host, held open while the watchdog should
    keep pinging; the guard holds at most MAX_CONNECTIONS of them; the journal gets a line per peer and kind."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), max(hard, 4096)))
    guard = Guard(tmp_path, quiet_wav)
    peers = []
    try:
        baseline = _fds(guard.process.pid)
        start = time.monotonic()
        for i in range(1100):
            peers.append(_connect(guard.port, STRANGER if i % 2 else "127.0.0.1"))
        time.sleep(3)  # the connections stay open: a watchdog period and a half
        assert _fds(guard.process.pid) <= baseline + satellite.MAX_CONNECTIONS + 2
        assert guard.notify.pings(start + 1) >= 2, "the watchdog kept its period"
    finally:
        for p in peers:
            p.close()
        stderr = guard.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert guard.process.returncode == 0, stderr
    refused = [line for line in stderr.splitlines() if "refused" in line]
    assert 2 <= len(refused) <= 6, refused  # one per peer and kind, then a count at exit
    assert "Too many open files" not in stderr
    records = [r for r in audit.read(guard.audit) if r["event"] == "refused"]
    assert sum(r.get("count", 1) for r in records) >= 1100 - satellite.MAX_CONNECTIONS and len(records) <= 6


def _say_phrase_through(home_assistant: HomeAssistant, samples: np.ndarray) -> None:
    pieces = [samples[i:i + 1024] for i in range(0, len(samples), 1024)]
    home_assistant.send(AudioStart(rate=16000, width=2, channels=1).event(),
                        *[AudioChunk(rate=16000, width=2, channels=1, audio=p.tobytes()).event() for p in pieces],
                        AudioStop().event())


def test_invariant6_sound_plays_only_from_the_hubs_own_connection(tmp_path, quiet_wav):
    guard = Guard(tmp_path, quiet_wav, allowed=f'["127.0.0.1", "{STRANGER}"]')
    tone = (8000 * np.sin(np.arange(8000) / 5)).astype(np.int16)
    try:
        home_assistant = HomeAssistant(guard.port)
        stranger = HomeAssistant(guard.port, source=STRANGER, run_satellite=False)
        _say_phrase_through(stranger, tone)
        assert until(lambda: Played().event().type in stranger.types(), 10), "answered, so it does not hang"
        assert not guard.played.exists() or not np.frombuffer(guard.played.read_bytes(), "<i2").any()
        _say_phrase_through(home_assistant, tone)
        assert until(lambda: Played().event().type in home_assistant.types(), 10)
        stranger.close()
        home_assistant.close()
    finally:
        stderr = guard.stop()
    assert np.array_equal(np.trim_zeros(np.frombuffer(guard.played.read_bytes(), "<i2")), np.trim_zeros(tone))
    refused = [r for r in audit.read(guard.audit) if r["event"] == "refused"]
    assert {(r["peer"], r["reason"].split(":")[0]) for r in refused} == {(STRANGER, "audio")}, stderr
    assert sum(r["count"] for r in refused) == 10, "audio-start, 8 chunks, audio-stop: each refused, counted"


def test_a_stranger_cannot_hog_the_satellite_with_a_slow_header(sat, monkeypatch):
    """Half a header, then nothing: the idle timeout closes it like any silent connection."""
    monkeypatch.setattr(satellite, "IDLE_SECONDS", 0.5)
    with _connect(sat.port, STRANGER) as peer:
        peer.sendall(b'{"type": "run-sat')
        assert until(lambda: _closed(peer), 5)
    assert sat.satellite.connections == 0 and not sat.satellite.connected


def test_read_event_takes_what_the_wyoming_library_writes():
    """The bounded reader against the library's own writer: events with data and payload come back whole."""
    from wyoming.event import async_write_event

    async def roundtrip() -> list:
        server_got = []

        async def handle(reader, writer):
            while (event := await satellite.read_event(reader)) is not None:
                server_got.append(event)
            writer.close()
        server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=satellite.MAX_HEADER_BYTES)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for event in (RunSatellite().event(), AudioChunk(rate=22050, width=2, channels=1, audio=b"\x01\x02" * 2048,
                                                         timestamp=5).event(), AudioStop().event()):
            await async_write_event(event, writer)
        writer.close()
        await asyncio.sleep(0.2)
        server.close()
        return server_got
    got = asyncio.run(roundtrip())
    assert [e.type for e in got] == ["run-satellite", "audio-chunk", "audio-stop"]
    chunk = AudioChunk.from_event(got[1])
    assert (chunk.rate, chunk.timestamp, chunk.audio) == (22050, 5, b"\x01\x02" * 2048)


def test_nothing_said_by_the_threads_is_lost_when_the_satellite_stops(sat):
    """Counts still open at stop are reported, not dropped."""
    home_assistant = HomeAssistant(sat.port)
    assert until(lambda: sat.satellite.connected)
    home_assistant.send(*[Detect().event()] * 5, Ping(text="after the five").event())
    # one connection's events are served in order: the pong says all five were read (under load, a stop before
    # then closed the connection with some still unread, and they were never refused at all)
    assert until(lambda: "pong" in home_assistant.types())
    assert len(sat.refused()) == 1
    home_assistant.close()
    sat.satellite.stop()
    assert [(k, c) for _, k, _, c in sat.refused()] == [("detect", 1), ("detect", 4)]


def test_stop_is_quick_with_connections_open(sat):
    held = [_connect(sat.port) for _ in range(3)]
    assert until(lambda: sat.satellite.connections == 3)
    sat.satellite.stop()
    assert all(_closed(s) for s in held)


class Recorder:
    """What the satellite asks of a speaker, in-process and fast; the real PortAudio output is proved above and
    in tests/test_confirm.py."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self, rate_hz: int, width: int, channels: int) -> None:
        self.calls.append(("start", rate_hz))

    def write(self, audio: bytes) -> None:
        self.calls.append(("write", len(audio)))

    def stop(self) -> None:
        self.calls.append(("stop",))


def test_only_the_hub_is_played_and_nothing_while_a_spoken_confirmation_is_awaited():
    recorder = Recorder()
    sat = Satellite(speaker=recorder)
    tone = np.ones(2048, np.int16)
    try:
        stranger = HomeAssistant(sat.port, source=STRANGER, run_satellite=False)
        _say_phrase_through(stranger, tone)
        assert until(lambda: "played" in stranger.types()), "answered, so it does not hang"
        assert recorder.calls == [] and sat.refused()[0][:2] == (STRANGER, "audio")
        home_assistant = HomeAssistant(sat.port)
        assert until(lambda: sat.satellite.connected)
        sat.satellite.playback_held.set()
        _say_phrase_through(home_assistant, tone)
        assert until(lambda: "played" in home_assistant.types())
        assert recorder.calls and set(recorder.calls) == {("stop",)}, "held: the speaker is stopped, nothing played"
        sat.satellite.playback_held.clear()
        _say_phrase_through(home_assistant, tone)
        assert until(lambda: home_assistant.types().count("played") == 2)
        assert [c for c in recorder.calls if c[0] != "stop"] == [("start", 16000), ("write", 2048), ("write", 2048)]
        assert recorder.calls[-1] == ("stop",)
        stranger.close()
        home_assistant.close()
    finally:
        sat.close()


def _read(data: bytes):
    """read_event on exactly these bytes, as the satellite's server reads them (same header limit)."""
    async def run():
        reader = asyncio.StreamReader(limit=satellite.MAX_HEADER_BYTES)
        reader.feed_data(data)
        reader.feed_eof()
        return await satellite.read_event(reader)
    return asyncio.run(run())


def _header(**fields) -> bytes:
    return json.dumps(fields).encode() + b"\n"


def test_read_event_limits_hold_at_their_exact_edges():
    """Header line plus data part up to 8192 bytes, payload up to 65536: one byte more is refused unread."""
    def describe(total: int) -> bytes:
        length = total - len(_header(type="describe", data_length=8000))  # a four-digit length either way
        data = json.dumps({"x": "y" * (length - len('{"x": ""}'))}).encode()
        return _header(type="describe", data_length=len(data)) + data
    assert len(describe(8192)) == 8192 and _read(describe(8192)).data["x"].startswith("y")
    with pytest.raises(satellite.EventTooLarge, match="^describe: data of .* bytes is over 8192$"):
        _read(describe(8193))
    assert _read(_header(type="audio-chunk", payload_length=65536) + bytes(65536)).payload == bytes(65536)
    with pytest.raises(satellite.EventTooLarge, match="payload of 65537 bytes is over 65536"):
        _read(_header(type="audio-chunk", payload_length=65537) + bytes(65537))
    with pytest.raises(satellite.EventTooLarge, match=f"^{'t' * 40}: payload of"):
        _read(_header(type="t" * 50, payload_length=10 ** 9))
    with pytest.raises(satellite.EventTooLarge, match=f"^{'t' * 40}: data of"):
        _read(_header(type="t" * 50, data_length=10 ** 9))


def test_read_event_merges_inline_data_with_the_data_part_and_refuses_odd_lengths():
    data = json.dumps({"b": 2}).encode()
    event = _read(_header(type="x", data={"a": 1}, data_length=len(data)) + data)
    assert event.data == {"a": 1, "b": 2}
    assert _read(_header(type="x", data={"a": 1})).data == {"a": 1}
    for bad in (True, -1, "4", 1.5):
        with pytest.raises(ValueError, match="^payload_length is not a byte count$"):
            _read(_header(type="x", payload_length=bad) + b"\x00")
    assert _read(b"") is None
    with pytest.raises(ValueError, match="closed inside an event header"):
        _read(b'{"type": "x"')


def test_a_header_that_is_not_a_wyoming_event_is_refused():
    for line in (b'{"type": 5}\n', b'[1, 2]\n', b'"text"\n', b'{"data": {}}\n'):
        with pytest.raises(ValueError, match="not a Wyoming event header"):
            _read(line)


def test_an_event_the_satellite_cannot_handle_drops_neither_the_connection_nor_the_satellite(sat):
    """An error event whose text is a number makes its handler fail: logged, and the same connection is still
    answered (a ping after it gets its pong)."""
    with _connect(sat.port) as peer:
        peer.sendall(b'{"type": "error", "data": {"text": 5}}\n{"type": "ping", "data": {"text": "still here"}}\n')
        peer.settimeout(10)
        answer = b""
        while b"\n" not in answer:
            chunk = peer.recv(4096)
            assert chunk, "the satellite closed the connection instead of answering the ping"
            answer += chunk
        assert json.loads(answer.split(b"\n")[0])["type"] == "pong"
