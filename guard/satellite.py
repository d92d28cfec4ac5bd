"""Home Assistant's voice satellite (Wyoming protocol): Assist hears a request only once it is released,
and only the hub the owner named hears it.

Home Assistant connects here and waits. A release to a `type = "wyoming"` sink, and nothing else, runs
a pipeline from speech-to-text with exactly the released utterance (audio-start, audio-chunk...,
audio-stop) on the one hub connection; the spoken answer that comes back from that connection plays on
[audio] output_device, never while a spoken confirmation is awaited. A connection from a host not in
[wyoming] allowed_hosts is closed before a byte is read; every event is size-checked before it is read;
connections are limited in number and closed when idle. Home Assistant's pause is a remote mute that
only the pausing hub lifts; its requests to stream the microphone (run-pipeline, detect) are refused
and counted. Nothing here reads the microphone.
"""

import asyncio
import json
import logging
import threading
from collections.abc import Callable

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import Attribution, Describe, Info, Satellite
from wyoming.ping import Ping, Pong
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.satellite import PauseSatellite, RunSatellite
from wyoming.snd import Played
from wyoming.timer import TimerCancelled, TimerFinished, TimerStarted, TimerUpdated
from wyoming.wake import Detect

from guard import __version__
from guard.config import WyomingConfig
from guard.dsp import RATE_HZ
from guard.errors import DeliveryUncertain, GuardError
from guard.hubloop import release_on
from guard.inbox import Command, Refusal, TimerHeard
from guard.refusals import RefusalTally
from guard.sound import Speaker
from guard.vocabulary import TimerKind

log = logging.getLogger(__name__)

SAMPLES_PER_CHUNK = 1024  # what Home Assistant's own satellites send
ATTRIBUTION = Attribution(name="pi-guard", url="")
MAX_HEADER_BYTES = 8192  # an event's JSON line and its data part; Home Assistant's are a few hundred bytes
MAX_PAYLOAD_BYTES = 65536  # an event's binary part: an audio chunk (Home Assistant's are 2-4 KiB)
MAX_CONNECTIONS = 4  # Home Assistant holds one; a reconnect may briefly hold a second
HUB = "assist"  # who a pause, a run-satellite or a refusal is by, in the audit log and the state
IDLE_SECONDS = 60.0  # Home Assistant pings a satellite every few seconds; a silent connection is gone


class EventTooLarge(ValueError):
    """An event header that announces more than the satellite reads."""


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """One Wyoming event, its lengths checked before anything they announce is read; None at the end.

    Raises:
        EventTooLarge: a header line, data part or payload over the limits.
        ValueError: a header that is not a Wyoming event.
    """
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise ValueError("connection closed inside an event header") from None
        return None
    except asyncio.LimitOverrunError:
        raise EventTooLarge(f"event header over {MAX_HEADER_BYTES} bytes") from None
    header = json.loads(line)
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ValueError("not a Wyoming event header")
    data_length, payload_length = _length(header, "data_length"), _length(header, "payload_length")
    if len(line) + data_length > MAX_HEADER_BYTES:
        raise EventTooLarge(f"{header['type'][:40]}: data of {data_length} bytes is over {MAX_HEADER_BYTES}")
    if payload_length > MAX_PAYLOAD_BYTES:
        raise EventTooLarge(f"{header['type'][:40]}: payload of {payload_length} bytes is over {MAX_PAYLOAD_BYTES}")
    data = header.get("data") or {}
    if data_length:
        data = {**(data if isinstance(data, dict) else {}), **json.loads(await reader.readexactly(data_length))}
    if not isinstance(data, dict):
        raise ValueError("event data is not a JSON object")
    payload = await reader.readexactly(payload_length) if payload_length else None
    return Event(type=header["type"], data=data, payload=payload)


def _length(header: dict, key: str) -> int:
    value = header.get(key) or 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} is not a byte count")
    return value


class AssistSatellite:
    """The Wyoming server Home Assistant's satellite integration connects to.

    Args:
        settings: the [wyoming] table.
        device_id: names the satellite when [wyoming] name is empty.
        post: receives Home Assistant's pause and run-satellite as a mute and unmute by "assist", and the
            counted refusals, from the satellite's thread (the daemon's inbox).
        wake_words: the configured models, shown to Home Assistant.
        speaker: where spoken answers play; None: they are acknowledged unplayed.
    """

    def __init__(self, settings: WyomingConfig, device_id: str, post: Callable[[Command | Refusal], object],
                 wake_words: list[str], speaker: Speaker | None = None) -> None:
        self.settings, self.post, self.speaker = settings, post, speaker
        self.name = settings.name or f"pi-guard {device_id}"
        self.wake_words = wake_words
        self.host, port = settings.uri.removeprefix("tcp://").rsplit(":", 1)
        self.port = int(port)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._hub: _Connection | None = None  # the one connection that said run-satellite: released audio goes here
        self._paused_by: tuple[_Connection, str] | None = None  # the connection (and its host) whose pause holds
        self.playback_held = threading.Event()  # set while a spoken confirmation is awaited: nothing plays
        self.refusals = RefusalTally(self._report)
        self._thread = threading.Thread(target=self._loop.run_forever, name="wyoming", daemon=True)

    def start(self) -> None:
        """Listen now (a taken port fails here, at start), then serve in a thread of its own."""
        try:
            self._server = self._loop.run_until_complete(asyncio.start_server(
                self._accept, self.host, self.port, limit=MAX_HEADER_BYTES))
        except OSError as e:
            raise GuardError(f"[wyoming] uri {self.settings.uri}: cannot listen there ({e.strerror or e})") from None
        self._thread.start()
        if self.settings.zeroconf:
            asyncio.run_coroutine_threadsafe(self._announce(), self._loop)

    async def _announce(self) -> None:
        """Tell the local network (mDNS, _wyoming._tcp) where Home Assistant finds this satellite."""
        try:
            from wyoming.zeroconf import HomeAssistantZeroconf

            await HomeAssistantZeroconf(port=self.port, name=self.name.replace(" ", "-")).register_server()
            log.info("satellite announced on the local network as %s", self.name)
        except Exception as e:  # no multicast route, no network yet: Home Assistant can still add it by host
            log.warning("satellite not announced on the local network (%s); add it in Home Assistant by host "
                        "and port", e)

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self.refusals.close()

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()

    @property
    def connected(self) -> bool:
        return self._hub is not None

    def hub(self) -> str:
        """Who receives released requests now: "Home Assistant (host:port)", or "" when none is connected."""
        hub = self._hub
        return f"Home Assistant ({hub.peer})" if hub is not None else ""

    @property
    def connections(self) -> int:
        return len(self._connections)

    def _report(self, peer: str, kind: str, reason: str, count: int, first: bool) -> None:
        """One audit record (and with it one log line) per peer and kind per interval (see refusals.py)."""
        if not first:
            reason = f"{count} more in {self.refusals.interval_seconds:g} s; the last: {reason}"
        self.post(Refusal(HUB, peer, kind, reason, count))

    # -- connections ------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A new connection: a stranger or one too many is closed before anything it sent is read."""
        host = str(writer.get_extra_info("peername")[0])
        allowed = self.settings.allowed_hosts
        if allowed and host not in allowed:
            self.refusals.refused(host, "connection", "not in [wyoming] allowed_hosts; closed unread")
            writer.transport.abort()
            return
        if len(self._connections) >= MAX_CONNECTIONS:
            self.refusals.refused(host, "connection", f"{MAX_CONNECTIONS} connections already open; closed unread")
            writer.transport.abort()
            return
        connection = _Connection(self, reader, writer)
        self._connections.add(connection)
        try:
            await connection.serve()
        finally:
            self._connections.discard(connection)
            self.gone(connection)

    def send(self, audio: bytes | bytearray | memoryview, timeout_seconds: float) -> str:
        """Run an Assist pipeline from speech-to-text on this released audio (16 kHz mono 16-bit PCM).

        Returns:
            who received it: "Home Assistant (host:port)".
        """
        return release_on(self._loop, self._stream(audio), timeout_seconds,
                          self.hub() or "Home Assistant (not connected)")

    async def _stream(self, audio: bytes | bytearray | memoryview) -> str:
        connection = self._hub
        if connection is None:
            raise GuardError("Home Assistant is not connected to the satellite; nothing was sent")
        end = PipelineStage.TTS if self.speaker is not None else PipelineStage.HANDLE
        view, sent, step = memoryview(audio).cast("B"), 0, 2 * SAMPLES_PER_CHUNK
        to = f"Home Assistant ({connection.peer})"
        try:
            await connection.write_event(RunPipeline(start_stage=PipelineStage.ASR, end_stage=end).event())
            await connection.write_event(AudioStart(rate=RATE_HZ, width=2, channels=1, timestamp=0).event())
            for start in range(0, len(view), step):
                sent += 1
                await connection.write_event(AudioChunk(rate=RATE_HZ, width=2, channels=1, audio=bytes(
                    view[start:start + step]), timestamp=start * 1000 // (2 * RATE_HZ)).event())
            await connection.write_event(AudioStop(timestamp=len(view) * 1000 // (2 * RATE_HZ)).event())
        except (OSError, ConnectionError, RuntimeError) as e:
            if not sent:
                raise GuardError(f"{to}: the connection failed ({e}); no audio was sent") from None
            raise DeliveryUncertain(f"{to}: the connection failed after {sent} chunk(s) ({e}); part of "
                                    "the audio may have arrived") from None
        return to

    # -- what Home Assistant says ---------------------------------------------------

    async def on_event(self, connection: "_Connection", event: Event) -> None:
        if Describe.is_type(event.type):
            await connection.write_event(self._info().event())
        elif Ping.is_type(event.type):
            await connection.write_event(Pong(text=Ping.from_event(event).text).event())
        elif RunSatellite.is_type(event.type):
            self._run_satellite(connection)
        elif PauseSatellite.is_type(event.type):
            if self._paused_by is None:
                self._paused_by = (connection, connection.host)
                self.post(Command(HUB, "mute"))
        elif RunPipeline.is_type(event.type) or Detect.is_type(event.type):
            self.refusals.refused(connection.host, event.type, "asked the satellite to listen; audio leaves only "
                                                               "after a local act of consent")
        elif AudioStart.is_type(event.type) or AudioChunk.is_type(event.type) or AudioStop.is_type(event.type):
            await self._answer(connection, event)
        elif connection is self._hub and (timer := _timer(event)) is not None:
            self.post(timer)
        elif Error.is_type(event.type):
            log.warning("Home Assistant: %s", Error.from_event(event).text[:200])
        else:
            log.debug("Home Assistant: %s", event.type[:40])  # transcript, synthesize, ...: their text stays out

    def _run_satellite(self, connection: "_Connection") -> None:
        """The connection becomes the hub, unless another one is; it lifts a pause only if it is the pauser's."""
        if self._hub is not None and self._hub is not connection:
            self.refusals.refused(connection.host, "run-satellite", f"Home Assistant ({self._hub.peer}) is the "
                                  "satellite's hub; a second connection never takes its place")
            return
        if self._hub is None:
            self._hub = connection
            log.info("Home Assistant (%s) is ready for the satellite's requests", connection.peer)
        if self._paused_by is None:
            return
        pauser, pauser_host = self._paused_by
        if pauser is connection or (pauser not in self._connections and pauser_host == connection.host):
            self._paused_by = None
            self.post(Command(HUB, "unmute"))
        else:
            self.refusals.refused(connection.host, "unpause", f"the pause of {pauser.peer} holds; only it (or the "
                                  "button) lifts it")

    async def _answer(self, connection: "_Connection", event: Event) -> None:
        """A spoken answer plays only from the hub, and never while a spoken confirmation is awaited:
        nothing the guard plays can confirm a release."""
        if connection is not self._hub:
            self.refusals.refused(connection.host, "audio", "audio from a connection that is not the hub; not played")
        elif self.playback_held.is_set():
            self.refusals.refused(connection.host, "audio", "a spoken confirmation is awaited; not played")
            if self.speaker is not None:
                await self._play(self.speaker.stop)
        elif self.speaker is not None:
            if AudioStart.is_type(event.type):
                start = AudioStart.from_event(event)
                await self._play(self.speaker.start, start.rate, start.width, start.channels)
            elif AudioChunk.is_type(event.type):
                await self._play(self.speaker.write, AudioChunk.from_event(event).audio)
            else:
                await self._play(self.speaker.stop)
        if AudioStop.is_type(event.type):
            await connection.write_event(Played().event())

    async def _play(self, step: Callable, *args) -> None:
        """A speaker call, off the event loop: pings are answered while an answer plays."""
        try:
            await self._loop.run_in_executor(None, step, *args)
        except (GuardError, OSError) as e:
            log.warning("spoken answer not played: %s", e)

    def gone(self, connection: "_Connection") -> None:
        if self._hub is connection:
            self._hub = None
            log.info("Home Assistant (%s) disconnected from the satellite", connection.peer)

    def _info(self) -> Info:
        return Info(satellite=Satellite(
            name=self.name, attribution=ATTRIBUTION, installed=True, version=__version__,
            description="pi-guard: audio reaches Assist only after a local act of consent",
            has_vad=True, active_wake_words=self.wake_words, max_active_wake_words=len(self.wake_words),
            supports_trigger=False))


class _Connection:
    """One connection from an allowed host; a bad or oversized event, or silence, closes only it."""

    def __init__(self, satellite: AssistSatellite, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.satellite, self.reader, self.writer = satellite, reader, writer
        self.host, port = (str(part) for part in writer.get_extra_info("peername")[:2])
        self.peer = f"{self.host}:{port}"

    async def serve(self) -> None:
        try:
            while True:
                event = await asyncio.wait_for(read_event(self.reader), IDLE_SECONDS)
                if event is None:
                    return
                try:
                    await self.satellite.on_event(self, event)
                except (OSError, ConnectionError):
                    raise
                except Exception:
                    log.exception("Wyoming event %s failed; the satellite keeps running", event.type[:40])
        except TimeoutError:
            log.info("satellite connection %s idle for %g s; closed", self.peer, IDLE_SECONDS)
        except (ValueError, UnicodeDecodeError, asyncio.IncompleteReadError) as e:
            self.satellite.refusals.refused(self.host, "malformed", f"{e}; connection closed")
        except (OSError, ConnectionError):
            pass
        finally:
            self.close()

    async def write_event(self, event: Event) -> None:
        await async_write_event(event, self.writer)

    def close(self) -> None:
        self.writer.transport.abort()


def _timer(event: Event) -> TimerHeard | None:
    """A Wyoming timer event as the loop takes it, or None if the event is not one."""
    if TimerStarted.is_type(event.type):
        t = TimerStarted.from_event(event)
        return TimerHeard(TimerKind.STARTED, t.id[:64], (t.name or "")[:64], t.total_seconds, t.total_seconds)
    if TimerUpdated.is_type(event.type):
        u = TimerUpdated.from_event(event)
        return TimerHeard(TimerKind.UPDATED, u.id[:64], "", u.total_seconds, u.total_seconds)
    if TimerCancelled.is_type(event.type):
        return TimerHeard(TimerKind.CANCELLED, TimerCancelled.from_event(event).id[:64], "", 0, 0)
    if TimerFinished.is_type(event.type):
        return TimerHeard(TimerKind.FINISHED, TimerFinished.from_event(event).id[:64], "", 0, 0)
    return None
