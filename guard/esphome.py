"""Home Assistant's ESPHome native API, encrypted: the guard as a device Home Assistant adds with the owner's key.

Every connection speaks Noise (Noise_NNpsk0_25519_ChaChaPoly_SHA256) keyed with a 32-byte key only the
owner holds. A client with another key, or in plain text, gets one refusal frame and is closed before any
message of its own is read. The messages are aioesphomeapi's protobuf definitions, the ones Home
Assistant's ESPHome integration speaks. Home Assistant's mute switch may only make the guard more private:
its "off" lifts only its own mute (the gate refuses the rest). A released request to a `type = "esphome"`
sink, and nothing else, becomes a voice-assistant run with exactly its samples (the request, the audio,
its end) on the connection that subscribed to voice assistant; nothing here reads the microphone.
"""

import asyncio
import base64
import binascii
import contextlib
import hashlib
import io
import logging
import os
import secrets
import socket
import stat
import threading
import urllib.parse
import urllib.request
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

from aioesphomeapi import api_pb2
from aioesphomeapi.core import MESSAGE_TYPE_TO_PROTO
from cryptography.exceptions import InvalidTag
from google.protobuf.message import DecodeError, Message
from noise.connection import NoiseConnection
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from guard import __version__
from guard.dsp import RATE_HZ
from guard.errors import ConfigError, DeliveryUncertain, GuardError
from guard.hubloop import release_on
from guard.inbox import ChooseWakeWords, Command, FollowUp, TimerHeard
from guard.vocabulary import State, TimerKind

log = logging.getLogger(__name__)

PROTOCOL = b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"
PROLOGUE = b"NoiseAPIInit\x00\x00"  # what ESPHome devices and aioesphomeapi mix into the handshake
KEY_BYTES = 32
HUB = "esphome"  # who an ESPHome client's mute is by, in the audit log and the state
MUTE_KEY = 1  # the mute switch's entity key
STATE_KEY = 3  # the State text sensor: idle, capturing, pending, muted or fault
MAX_FRAME_BYTES = 65535  # a Noise frame's two-byte length; Home Assistant's messages are far smaller
API_VERSION = (1, 10)
MAX_CONNECTIONS = 4  # Home Assistant holds one; a reconnect may briefly hold a second
HANDSHAKE_SECONDS = 10.0  # a client that has not proven the key by then is dropped
IDLE_SECONDS = 90.0  # Home Assistant pings every 20 s; a silent connection is gone
MESSAGE_TYPES = {proto: number for number, proto in MESSAGE_TYPE_TO_PROTO.items()}
VOICE_ASSISTANT, API_AUDIO, TIMERS, ANNOUNCE, START_CONVERSATION = 1 << 0, 1 << 2, 1 << 3, 1 << 4, 1 << 5  # flags
SPEAKER_KEY = 2  # the media player entity: what Home Assistant announces and answers through
MAX_MEDIA_BYTES = 16 * 1024 * 1024  # a sound Home Assistant asks the guard to fetch and play (16 MB: 8 min at 16 kHz)
FETCH_SECONDS = 10.0
TIMER_EVENTS = tuple(TimerKind)  # VoiceAssistantTimerEvent's values, in its order
SAMPLES_PER_CHUNK = 1024  # 64 ms, as ESPHome's voice assistant sends
ANSWER_SECONDS = 5.0  # how long Home Assistant may take to accept a voice-assistant run
SERVICE_TYPE = "_esphomelib._tcp.local."  # what Home Assistant's ESPHome integration browses for
MDNS_GROUP = "224.0.0.251"


class Refused(Exception):
    """A connection that is not let in: what it is told (one frame) and why, for the log."""

    def __init__(self, reply: bytes, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply


def new_key() -> str:
    """A fresh key, base64 as Home Assistant asks for it."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def write_key(path: Path) -> str:
    """Write a fresh key to `path` (mode 600, never over an existing one) and return it."""
    key = new_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path}: a key is already there; Home Assistant holds it. Delete the file first to "
                          "make a new one (Home Assistant will then ask for the new key)") from None
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def read_key(path: Path) -> bytes:
    """The owner's key: 32 bytes in base64, in a file no one but its owner can read."""
    try:
        if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path}: the ESPHome key file is readable by group or others; run: chmod 600 {path}")
        text = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the ESPHome key ({e.strerror}); make one with: guard esphome-key "
                          "(or fix [esphome] key_file)") from None
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{path}: not an ESPHome key (32 bytes in base64); make one with: guard esphome-key")
    return key


def device_mac(device_id: str) -> str:
    """A stable, locally administered MAC address for the device id: Home Assistant keys a device by it."""
    digest = bytearray(hashlib.sha256(device_id.encode()).digest()[:6])
    digest[0] = (digest[0] | 0x02) & 0xFE  # locally administered, unicast
    return ":".join(f"{b:02X}" for b in digest)


def _frame(body: bytes) -> bytes:
    return bytes((0x01, len(body) >> 8, len(body) & 0xFF)) + body


class NoiseResponder:
    """One connection's Noise, the server's side: hello, handshake, then encrypted messages.

    Args:
        key: the owner's 32-byte key.
        name: the device name the hello announces.
        mac: the device's MAC address the hello announces.
    """

    def __init__(self, key: bytes, name: str, mac: str) -> None:
        self.name, self.mac = name, mac
        self._noise = NoiseConnection.from_name(PROTOCOL)
        self._noise.set_as_responder()
        self._noise.set_psks(key)
        self._noise.set_prologue(PROLOGUE)
        self._noise.start_handshake()
        self._buffer = bytearray()
        self._step = self._hello
        self.ready = False

    def receive(self, data: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
        """Bytes from the client: what to send back, and the (type, payload) messages they completed.

        Raises:
            Refused: a plain-text client, a wrong key, or a frame that is not ESPHome's.
        """
        self._buffer += data
        replies, messages = [], []
        try:
            for frame in self._frames():
                replies.append(self._step(frame, messages))
        except Refused as e:  # what was answered before the refusal goes first (the hello)
            e.reply = b"".join(replies) + e.reply
            raise
        return b"".join(replies), messages

    def _frames(self) -> Iterator[bytes]:
        while len(self._buffer) >= 3:
            if self._buffer[0] != 0x01:
                why = "a plain-text client" if self._buffer[0] == 0x00 else "not an ESPHome client"
                raise Refused(_frame(b"\x01Bad indicator byte"), f"{why}; only the encrypted API is served")
            size = self._buffer[1] << 8 | self._buffer[2]
            if len(self._buffer) < 3 + size:
                return
            frame = bytes(self._buffer[3:3 + size])
            del self._buffer[:3 + size]
            yield frame

    def _hello(self, frame: bytes, messages: list) -> bytes:
        self._step = self._handshake
        return _frame(b"\x01" + self.name.encode() + b"\x00" + self.mac.encode() + b"\x00")

    def _handshake(self, frame: bytes, messages: list) -> bytes:
        if not frame or frame[0] != 0x00:
            raise Refused(_frame(b"\x01Bad handshake"), "a handshake that is not Noise's")
        try:
            self._noise.read_message(frame[1:])
        except InvalidTag:
            raise Refused(_frame(b"\x01Handshake MAC failure"), "a client without the owner's key") from None
        except Exception as e:  # noqa: BLE001 - noiseprotocol raises several kinds for a malformed message
            raise Refused(_frame(b"\x01Bad handshake"), f"a malformed handshake ({type(e).__name__})") from None
        self._step = self._message
        self.ready = True
        return _frame(b"\x00" + self._noise.write_message())

    def _message(self, frame: bytes, messages: list) -> bytes:
        try:
            plain = self._noise.decrypt(frame)
        except InvalidTag:
            raise Refused(b"", "a message that does not decrypt with the session's key") from None
        if len(plain) < 4:
            raise Refused(b"", "a message shorter than its header")
        messages.append((plain[0] << 8 | plain[1], bytes(plain[4:])))
        return b""

    def seal(self, message: Message) -> bytes:
        """One message, encrypted and framed."""
        data = message.SerializeToString()
        number = MESSAGE_TYPES[type(message)]
        return _frame(self._noise.encrypt(bytes((number >> 8, number & 0xFF, len(data) >> 8, len(data) & 0xFF))
                                          + data))


class MediaPlayer:
    """The speaker as Home Assistant's media player: it declares 16 kHz mono WAV, so Home Assistant converts
    announcements and Assist's answers to it; each is fetched over http(s) and played, never while a spoken
    confirmation is awaited (nothing the guard plays may confirm).

    Args:
        speaker: [audio] output_device's Speaker.
        broadcast: tells every connection the player's state.
    """

    def __init__(self, speaker, broadcast: Callable[[Message], None]) -> None:
        self.speaker, self.broadcast = speaker, broadcast
        self.held = threading.Event()  # set while a spoken confirmation is awaited: nothing plays

    def entity(self) -> api_pb2.ListEntitiesMediaPlayerResponse:
        formats = [api_pb2.MediaPlayerSupportedFormat(format="wav", sample_rate=RATE_HZ, num_channels=1,
                                                      purpose=purpose, sample_bytes=2)
                   for purpose in (api_pb2.MEDIA_PLAYER_FORMAT_PURPOSE_DEFAULT,
                                   api_pb2.MEDIA_PLAYER_FORMAT_PURPOSE_ANNOUNCEMENT)]
        return api_pb2.ListEntitiesMediaPlayerResponse(object_id="speaker", key=SPEAKER_KEY, name="Speaker",
                                                      supported_formats=formats)

    def state(self, playing: bool) -> api_pb2.MediaPlayerStateResponse:
        state = api_pb2.MEDIA_PLAYER_STATE_ANNOUNCING if playing else api_pb2.MEDIA_PLAYER_STATE_IDLE
        return api_pb2.MediaPlayerStateResponse(key=SPEAKER_KEY, state=state, volume=1.0)

    async def play(self, url: str) -> float | None:
        """Fetch and play one sound; how many seconds played, or None when it did not."""
        if self.held.is_set():
            log.warning("ESPHome API: a sound was not played: a spoken confirmation is awaited")
            return None
        self.broadcast(self.state(True))
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self._fetch_and_play, url)
        except (GuardError, OSError, EOFError, wave.Error) as e:
            log.warning("ESPHome API: a sound was not played: %s", e)
            return None
        finally:
            self.broadcast(self.state(False))

    def _fetch_and_play(self, url: str) -> float:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise GuardError(f"{url[:80]!r} is not an http(s) URL")
        with urllib.request.urlopen(url, timeout=FETCH_SECONDS) as response:  # noqa: S310 - http(s) only, above
            data = response.read(MAX_MEDIA_BYTES + 1)
        if len(data) > MAX_MEDIA_BYTES:
            raise GuardError(f"{url[:80]}: over {MAX_MEDIA_BYTES // (1024 * 1024)} MB")
        with wave.open(io.BytesIO(data)) as w:
            rate, width, channels, frames = w.getframerate(), w.getsampwidth(), w.getnchannels(), w.readframes(-1)
        self.speaker.start(rate, width, channels)
        try:
            self.speaker.write(frames)
        finally:
            self.speaker.stop()
        return len(frames) / (rate * width * channels)


class EsphomeDevice:
    """What the guard says of itself over the API: its device info, entities and their states, and what its voice
    assistant offers (features, wake words). The server answers with these; nothing here touches audio."""

    def __init__(self, device_id: str, wake_words: tuple[str, ...], media: MediaPlayer | None) -> None:
        self.device_id, self.media = device_id, media
        self.wake_words, self.active_wake_words = wake_words, wake_words
        self.mac = device_mac(device_id)
        self.state = State.IDLE  # what the State sensor shows; the mute switch is on while it is muted, by anyone

    def show(self, state: State) -> list[Message]:
        """The guard's state after an event; the state messages that changed, for every connection."""
        if state is self.state:
            return []
        was_muted, self.state = self.state is State.MUTED, state
        return [self.state_text(), *([self.mute_state()] if was_muted is not (state is State.MUTED) else [])]

    def mute_state(self) -> api_pb2.SwitchStateResponse:
        return api_pb2.SwitchStateResponse(key=MUTE_KEY, state=self.state is State.MUTED)

    def state_text(self) -> api_pb2.TextSensorStateResponse:
        return api_pb2.TextSensorStateResponse(key=STATE_KEY, state=str(self.state))

    def entities(self) -> list[Message]:
        return [api_pb2.ListEntitiesSwitchResponse(object_id="mute", key=MUTE_KEY, name="Mute",
                                                   icon="mdi:microphone-off"),
                api_pb2.ListEntitiesTextSensorResponse(object_id="state", key=STATE_KEY, name="State",
                                                       icon="mdi:shield-lock"),
                *([self.media.entity()] if self.media else []),
                api_pb2.ListEntitiesDoneResponse()]

    def states(self) -> list[Message]:
        return [self.mute_state(), self.state_text(), *([self.media.state(False)] if self.media else [])]

    def wake_word_configuration(self) -> api_pb2.VoiceAssistantConfigurationResponse:
        return api_pb2.VoiceAssistantConfigurationResponse(
            available_wake_words=[api_pb2.VoiceAssistantWakeWord(
                id=name, wake_word=name.replace("_", " ").title(), trained_languages=["en"])
                for name in self.wake_words],
            active_wake_words=list(self.active_wake_words), max_active_wake_words=len(self.wake_words))

    def features(self) -> int:
        """What Home Assistant's voice assistant may ask of the device: announcements and questions only with a
        speaker (a question nobody heard has no answer)."""
        spoken = ANNOUNCE | START_CONVERSATION if self.media is not None else 0
        return VOICE_ASSISTANT | API_AUDIO | TIMERS | spoken

    def info(self) -> api_pb2.DeviceInfoResponse:
        return api_pb2.DeviceInfoResponse(
            uses_password=False, name=self.device_id, friendly_name=f"pi-guard {self.device_id}",
            mac_address=self.mac, esphome_version=f"pi-guard {__version__}", model="pi-guard",
            manufacturer="pi-guard", project_name="pi-guard.privacy-guard", project_version=__version__,
            api_encryption_supported=True, voice_assistant_feature_flags=self.features())


class EsphomeServer:
    """The guard as an ESPHome device: device info, its entities and their states, and their commands.

    Serves in a thread of its own with its own asyncio loop, like the Wyoming satellite.

    Args:
        key: the owner's 32-byte key.
        device_id: the device name Home Assistant shows, and what its MAC address is derived from.
        post: the loop's inbox: the mute switch's Command(HUB, "mute"/"unmute"), Home Assistant's timer events
            (TimerHeard) and wake-word choice (ChooseWakeWords).
        host, port: where to listen (ESPHome's port is 6053).
        handshake_seconds: how long a new connection has to prove the key.
        announce: announce the device on the local network (mDNS), so Home Assistant offers to add it.
        speaker: where announcements and answers play ([audio] output_device), or None.
        wake_words: the configured wake words, the only ones Home Assistant may choose among.
    """

    def __init__(self, key: bytes, device_id: str, post: Callable[[Command | TimerHeard | ChooseWakeWords], object],
                 host: str = "0.0.0.0", port: int = 6053, handshake_seconds: float = HANDSHAKE_SECONDS,
                 announce: bool = False, speaker=None, wake_words: tuple[str, ...] = ()) -> None:
        self.key, self.device_id, self.post = key, device_id, post
        self.host, self.port, self.handshake_seconds, self.announce = host, port, handshake_seconds, announce
        self._zeroconf: AsyncZeroconf | None = None
        self.media = MediaPlayer(speaker, self._broadcast) if speaker is not None else None
        self.device = EsphomeDevice(device_id, wake_words, self.media)
        self.playback_held = self.media.held if self.media else threading.Event()  # set: nothing plays
        self._hub: _Connection | None = None  # the connection that subscribed to voice assistant: Home Assistant
        self._accepted: asyncio.Future | None = None  # Home Assistant's answer to the run being started
        self._connections: set[_Connection] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="esphome", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self.serving = threading.Event()  # set once clients can connect

    def start(self) -> None:
        """Listen now (a taken port fails here, at start), then serve in a thread of its own."""
        self._thread.start()
        try:
            self._server = asyncio.run_coroutine_threadsafe(
                asyncio.start_server(self._accept, self.host, self.port), self._loop).result(10)
        except OSError as e:
            self.stop()
            raise GuardError(f"[esphome] port {self.port}: cannot listen on {self.host} ({e.strerror or e})") \
                from None
        self.port = self._server.sockets[0].getsockname()[1]
        self.serving.set()
        log.info("ESPHome API on %s:%d (encrypted)", self.host, self.port)
        if self.announce:
            asyncio.run_coroutine_threadsafe(self._advertise(), self._loop)

    def service_info(self, address: str) -> AsyncServiceInfo:
        """What the device says of itself on the local network: Home Assistant keys it by `mac` and asks for
        the key because `api_encryption` names the protocol."""
        return AsyncServiceInfo(
            SERVICE_TYPE, f"{self.device_id}.{SERVICE_TYPE}", server=f"{self.device_id}.local.",
            addresses=[socket.inet_aton(address)], port=self.port,
            properties={"mac": self.device.mac.replace(":", "").lower(), "version": __version__, "platform": "pi-guard",
                        "friendly_name": f"pi-guard {self.device_id}", "api_encryption": PROTOCOL.decode()})

    async def _advertise(self) -> None:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # the address mDNS would leave from
                probe.connect((MDNS_GROUP, 1))
                address = probe.getsockname()[0]
            self._zeroconf = AsyncZeroconf()
            await self._zeroconf.async_register_service(self.service_info(address))
            log.info("ESPHome device announced on the local network as %s at %s", self.device_id, address)
        except Exception as e:  # noqa: BLE001 - no multicast route, no network yet: it can still be added by host
            log.warning("ESPHome device not announced on the local network (%s); add it in Home Assistant by "
                        "host and port", e)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _close(self) -> None:
        if self._zeroconf is not None:
            with contextlib.suppress(Exception):
                await self._zeroconf.async_close()
        self._server.close()
        for connection in list(self._connections):
            connection.close()
        await self._server.wait_closed()

    def show(self, state: State) -> None:
        """The guard's state after an event: the State sensor shows it, and the mute switch whether it is muted
        (by anyone), on every connection."""
        for message in self.device.show(state):
            self._loop.call_soon_threadsafe(self._broadcast, message)

    def hub(self) -> str:
        """Who a release would go to now: "Home Assistant (host:port)", or "" when none subscribed."""
        hub = self._hub
        return f"Home Assistant ({hub.peer})" if hub else ""

    def send(self, audio: bytes | bytearray | memoryview, timeout_seconds: float) -> str:
        """Run Home Assistant's voice assistant on this released audio (16 kHz mono 16-bit PCM); from the
        delivery thread.

        Returns:
            who received it: "Home Assistant (host:port)".
        """
        return release_on(self._loop, self._stream(audio), timeout_seconds,
                          self.hub() or "Home Assistant (not connected)")

    async def _stream(self, audio: bytes | bytearray | memoryview) -> str:
        hub = self._hub
        if hub is None:
            raise GuardError("Home Assistant has not subscribed to the ESPHome API's voice assistant; nothing "
                             "was sent")
        to = f"Home Assistant ({hub.peer})"
        self._accepted = self._loop.create_future()
        await hub.write(api_pb2.VoiceAssistantRequest(start=True,
                                                      audio_settings=api_pb2.VoiceAssistantAudioSettings()))
        try:
            answer = await asyncio.wait_for(self._accepted, ANSWER_SECONDS)
        except (TimeoutError, ConnectionError):
            raise GuardError(f"{to} did not accept the voice-assistant run in {ANSWER_SECONDS:g} s; nothing was "
                             "sent") from None
        if answer.error or answer.port:  # port: it wants the audio over UDP, which the guard never sends
            await hub.write(api_pb2.VoiceAssistantRequest(start=False))
            why = "refused the run" if answer.error else f"asked for the audio on UDP port {answer.port}"
            raise GuardError(f"{to} {why}; nothing was sent")
        view, sent, step = memoryview(audio).cast("B"), 0, 2 * SAMPLES_PER_CHUNK
        try:
            for start in range(0, len(view), step):
                await hub.write(api_pb2.VoiceAssistantAudio(data=bytes(view[start:start + step])))
                sent += 1
            await hub.write(api_pb2.VoiceAssistantAudio(end=True))
        except (OSError, ConnectionError, RuntimeError) as e:
            if not sent:
                raise GuardError(f"{to}: the connection failed ({e}); no audio was sent") from None
            raise DeliveryUncertain(f"{to}: the connection failed after {sent} chunk(s) ({e}); part of the "
                                    "audio may have arrived") from None
        return to

    def _broadcast(self, message: Message) -> None:
        for connection in list(self._connections):
            connection.send(message)

    def gone(self, connection: "_Connection") -> None:
        self._connections.discard(connection)
        if self._hub is connection:
            self._hub = None
            if self._accepted is not None and not self._accepted.done():
                self._accepted.set_exception(ConnectionError("Home Assistant disconnected"))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= MAX_CONNECTIONS:
            log.warning("ESPHome API: %s refused: %d connections already open", writer.get_extra_info("peername"),
                        MAX_CONNECTIONS)
            writer.close()
            return
        connection = _Connection(self, reader, writer)
        self._connections.add(connection)
        try:
            await connection.serve()
        finally:
            self.gone(connection)

    def answer(self, connection: "_Connection", message: Message) -> list[Message]:
        """What the device says to one message; a switch command also posts to the loop."""
        match message:
            case api_pb2.SubscribeVoiceAssistantRequest(subscribe=subscribe):
                if subscribe:
                    self._hub = connection
                    log.info("ESPHome API: Home Assistant (%s) subscribed to voice assistant", connection.peer)
                elif self._hub is connection:
                    self._hub = None
            case api_pb2.VoiceAssistantResponse() if connection is self._hub:
                if self._accepted is not None and not self._accepted.done():
                    self._accepted.set_result(message)
            case api_pb2.HelloRequest():
                return [api_pb2.HelloResponse(api_version_major=API_VERSION[0], api_version_minor=API_VERSION[1],
                                              server_info=f"pi-guard {__version__}", name=self.device_id)]
            case api_pb2.AuthenticationRequest():
                return [api_pb2.AuthenticationResponse()]
            case api_pb2.PingRequest():
                return [api_pb2.PingResponse()]
            case api_pb2.DeviceInfoRequest():
                return [self.device.info()]
            case api_pb2.ListEntitiesRequest():
                return self.device.entities()
            case api_pb2.SubscribeStatesRequest():
                return self.device.states()
            case api_pb2.VoiceAssistantEventResponse(event_type=api_pb2.VOICE_ASSISTANT_TTS_END, data=data) \
                    if connection is self._hub and self.media is not None:
                url = next((d.value for d in data if d.name == "url"), "")
                if url:  # Assist's spoken answer to a released request, converted to the speaker's format
                    self._loop.create_task(self.media.play(url))
            case api_pb2.VoiceAssistantConfigurationRequest():
                return [self.device.wake_word_configuration()]
            case api_pb2.VoiceAssistantSetConfiguration(active_wake_words=names):
                offered = len(self.device.wake_words)
                self.post(ChooseWakeWords(HUB, tuple(str(name)[:64] for name in names[:offered])))
            case api_pb2.VoiceAssistantAnnounceRequest(media_id=url, preannounce_media_id=chime,
                                                       start_conversation=ask):
                self._loop.create_task(self._announce(connection, chime, url, ask and connection is self._hub))
            case api_pb2.MediaPlayerCommandRequest(key=key, has_media_url=True, media_url=url) \
                    if key == SPEAKER_KEY and self.media is not None:
                self._loop.create_task(self.media.play(url))
            case api_pb2.VoiceAssistantTimerEventResponse(event_type=kind) if kind < len(TIMER_EVENTS):
                m = message
                self.post(TimerHeard(TIMER_EVENTS[kind], m.timer_id[:64], m.name[:64], m.total_seconds,
                                     m.seconds_left))
            case api_pb2.SwitchCommandRequest(key=key, state=state) if key == MUTE_KEY:
                self.post(Command(HUB, "mute" if state else "unmute"))
        return []

    def show_wake_words(self, active: tuple[str, ...]) -> None:
        """The loop chose these (a subset of the configured ones): the next configuration request says so."""
        self.device.active_wake_words = active

    async def _announce(self, connection: "_Connection", chime: str, url: str, ask: bool) -> None:
        """An announcement (after its chime), answered with whether it played; a question (`ask`, from the hub
        only) then has its answer captured under the gate's rules."""
        if self.media is None:
            log.warning("ESPHome API: an announcement was not played: no [audio] output_device")
            connection.send(api_pb2.VoiceAssistantAnnounceFinished(success=False))
            return
        rang = await self.media.play(chime) if chime else 0.0
        played = await self.media.play(url)
        connection.send(api_pb2.VoiceAssistantAnnounceFinished(success=played is not None))
        if ask and played is not None:
            self.post(FollowUp(HUB, (rang or 0.0) + played))


class _Connection:
    """One client: refused and closed unless it speaks Noise with the owner's key."""

    def __init__(self, server: EsphomeServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server, self.reader, self.writer = server, reader, writer
        self.noise = NoiseResponder(server.key, server.device_id, server.device.mac)
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"

    async def serve(self) -> None:
        try:
            while data := await asyncio.wait_for(self.reader.read(MAX_FRAME_BYTES), self._patience()):
                reply, messages = self.noise.receive(data)
                if reply:
                    self.writer.write(reply)
                for number, payload in messages:
                    if not self._handle(number, payload):
                        return
        except Refused as e:
            log.warning("ESPHome API: %s refused: %s", self.peer, e)
            if e.reply:
                self.writer.write(e.reply)
        except TimeoutError:
            log.warning("ESPHome API: %s dropped: %s", self.peer, "silent" if self.noise.ready else
                        f"no key proven in {self.server.handshake_seconds:g} s")
        except (ConnectionError, OSError):
            pass
        finally:
            self.close()

    def _patience(self) -> float:
        return IDLE_SECONDS if self.noise.ready else self.server.handshake_seconds

    def _handle(self, number: int, payload: bytes) -> bool:
        """Answer one message; False when the client said goodbye."""
        kind = MESSAGE_TYPE_TO_PROTO.get(number)
        if kind is None:
            return True
        try:
            message = kind.FromString(payload)
        except DecodeError:
            log.warning("ESPHome API: %s sent a malformed %s; ignored", self.peer, kind.__name__)
            return True
        if isinstance(message, api_pb2.DisconnectRequest):
            self.send(api_pb2.DisconnectResponse())
            return False
        for answer in self.server.answer(self, message):
            self.send(answer)
        return True

    def send(self, message: Message) -> None:
        if self.noise.ready and not self.writer.is_closing():
            self.writer.write(self.noise.seal(message))

    async def write(self, message: Message) -> None:
        """Send and wait until the socket took it (a release streams at the pace Home Assistant reads)."""
        if self.writer.is_closing():
            raise ConnectionError("the connection is closed")
        self.writer.write(self.noise.seal(message))
        await self.writer.drain()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
