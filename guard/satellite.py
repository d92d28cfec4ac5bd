"""Home Assistant's voice satellite (Wyoming protocol): Assist hears a request only once it is released.

Home Assistant connects here and waits. A release to a `type = "wyoming"` sink, and nothing else, runs
a pipeline from speech-to-text with exactly the released utterance (audio-start, audio-chunk...,
audio-stop); the spoken answer that comes back plays on [audio] output_device. Home Assistant's pause
is a remote mute (its run-satellite lifts only that mute); its requests to stream the microphone
(run-pipeline, detect) are refused and put on the record. Nothing here reads the microphone.
"""

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, Satellite
from wyoming.ping import Ping, Pong
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.satellite import PauseSatellite, RunSatellite
from wyoming.server import AsyncEventHandler, AsyncServer
from wyoming.snd import Played
from wyoming.wake import Detect

from guard import __version__
from guard.audio import RATE_HZ
from guard.config import WyomingConfig
from guard.errors import DeliveryUncertain, GuardError
from guard.sound import Speaker

log = logging.getLogger(__name__)

SAMPLES_PER_CHUNK = 1024  # what Home Assistant's own satellites send
ATTRIBUTION = Attribution(name="pi-guard", url="")


class AssistSatellite:
    """The Wyoming server Home Assistant's satellite integration connects to.

    Args:
        settings: the [wyoming] table.
        device_id: names the satellite when [wyoming] name is empty.
        on_command: receives "mute", "unmute" or "refuse:<what was asked>" (from the satellite's thread).
        wake_words: the configured models, shown to Home Assistant.
        speaker: where spoken answers play; None: they are acknowledged unplayed.
    """

    def __init__(self, settings: WyomingConfig, device_id: str, on_command: Callable[[str], None],
                 wake_words: list[str], speaker: Speaker | None = None) -> None:
        self.settings, self.on_command, self.speaker = settings, on_command, speaker
        self.name = settings.name or f"pi-guard {device_id}"
        self.wake_words = wake_words
        self._loop = asyncio.new_event_loop()
        self._server = AsyncServer.from_uri(settings.uri)
        self._home_assistant: _Connection | None = None  # the connection that said run-satellite
        self._paused = False
        self._thread = threading.Thread(target=self._loop.run_forever, name="wyoming", daemon=True)

    def start(self) -> None:
        """Listen now (a taken port fails here, at start), then serve in a thread of its own."""
        try:
            self._loop.run_until_complete(self._server.start(lambda r, w: _Connection(self, r, w)))
        except OSError as e:
            raise GuardError(f"[wyoming] uri {self.settings.uri}: cannot listen there ({e.strerror or e})") from None
        self._thread.start()
        if self.settings.zeroconf:
            asyncio.run_coroutine_threadsafe(self._announce(), self._loop)

    async def _announce(self) -> None:
        """Tell the local network (mDNS, _wyoming._tcp) where Home Assistant finds this satellite."""
        try:
            from wyoming.zeroconf import HomeAssistantZeroconf

            port = int(self.settings.uri.rsplit(":", 1)[1])
            await HomeAssistantZeroconf(port=port, name=self.name.replace(" ", "-")).register_server()
            log.info("satellite announced on the local network as %s", self.name)
        except Exception as e:  # no multicast route, no network yet: Home Assistant can still add it by host
            log.warning("satellite not announced on the local network (%s); add it in Home Assistant by host "
                        "and port", e)

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    @property
    def connected(self) -> bool:
        return self._home_assistant is not None

    def send(self, audio: bytes | bytearray | memoryview, timeout_seconds: float) -> str:
        """Run an Assist pipeline from speech-to-text on this released audio (16 kHz mono 16-bit PCM)."""
        future = asyncio.run_coroutine_threadsafe(self._stream(audio), self._loop)
        try:
            return future.result(timeout_seconds)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DeliveryUncertain(f"Home Assistant did not take the audio within {timeout_seconds:g} s; "
                                    "part of it may have arrived") from None

    async def _stream(self, audio: bytes | bytearray | memoryview) -> str:
        connection = self._home_assistant
        if connection is None:
            raise GuardError("Home Assistant is not connected to the satellite; nothing was sent")
        end = PipelineStage.TTS if self.speaker is not None else PipelineStage.HANDLE
        view, sent, step = memoryview(audio).cast("B"), 0, 2 * SAMPLES_PER_CHUNK
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
                raise GuardError(f"Home Assistant's connection failed ({e}); no audio was sent") from None
            raise DeliveryUncertain(f"Home Assistant's connection failed after {sent} chunk(s) ({e}); part of "
                                    "the audio may have arrived") from None
        return f"Home Assistant ({connection.peer})"

    # -- what Home Assistant says ---------------------------------------------------

    async def on_event(self, connection: "_Connection", event: Event) -> None:
        if Describe.is_type(event.type):
            await connection.write_event(self._info().event())
        elif Ping.is_type(event.type):
            await connection.write_event(Pong(text=Ping.from_event(event).text).event())
        elif RunSatellite.is_type(event.type):
            self._home_assistant = connection
            log.info("Home Assistant (%s) is ready for the satellite's requests", connection.peer)
            if self._paused:
                self._paused = False
                self.on_command("unmute")
        elif PauseSatellite.is_type(event.type):
            if not self._paused:
                self._paused = True
                self.on_command("mute")
        elif RunPipeline.is_type(event.type) or Detect.is_type(event.type):
            log.warning("Home Assistant asked the satellite to listen (%s); refused: audio leaves only after a "
                        "local act of consent", event.type)
            self.on_command(f"refuse:{event.type}")
        elif AudioStart.is_type(event.type) and self.speaker is not None:
            start = AudioStart.from_event(event)
            await self._play(self.speaker.start, start.rate, start.width, start.channels)
        elif AudioChunk.is_type(event.type) and self.speaker is not None:
            await self._play(self.speaker.write, AudioChunk.from_event(event).audio)
        elif AudioStop.is_type(event.type):
            if self.speaker is not None:
                await self._play(self.speaker.stop)
            await connection.write_event(Played().event())
        elif Error.is_type(event.type):
            log.warning("Home Assistant: %s", Error.from_event(event).text)
        else:
            log.debug("Home Assistant: %s", event.type)  # transcript, synthesize, ...: their text stays out of logs

    async def _play(self, step: Callable, *args) -> None:
        """A speaker call, off the event loop: pings are answered while an answer plays."""
        try:
            await self._loop.run_in_executor(None, step, *args)
        except (GuardError, OSError) as e:
            log.warning("spoken answer not played: %s", e)

    def gone(self, connection: "_Connection") -> None:
        if self._home_assistant is connection:
            self._home_assistant = None
            log.info("Home Assistant (%s) disconnected from the satellite", connection.peer)

    def _info(self) -> Info:
        return Info(satellite=Satellite(
            name=self.name, attribution=ATTRIBUTION, installed=True, version=__version__,
            description="pi-guard: audio reaches Assist only after a local act of consent",
            has_vad=True, active_wake_words=self.wake_words, max_active_wake_words=len(self.wake_words),
            supports_trigger=False))


class _Connection(AsyncEventHandler):
    """One Home Assistant connection; events go to the satellite, a failure there never drops the link."""

    def __init__(self, satellite: AssistSatellite, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.satellite = satellite
        host, port = writer.get_extra_info("peername")[:2]
        self.peer = f"{host}:{port}"
        allowed = satellite.settings.allowed_hosts
        self.allowed = not allowed or host in allowed  # decided once, at connect

    async def handle_event(self, event: Event) -> bool:
        if not self.allowed:
            log.warning("satellite connection from %s refused: not in [wyoming] allowed_hosts", self.peer)
            return False
        try:
            await self.satellite.on_event(self, event)
        except Exception:
            log.exception("Wyoming event %s failed; the satellite keeps running", event.type)
        return True

    async def disconnect(self) -> None:
        self.satellite.gone(self)
