"""Where released audio may go: a directory of WAV files, a command's stdin, an MQTT topic, Rhasspy, or
Home Assistant Assist.

Only `gate.py` calls a sink, and only after local consent. Destinations come
from the local config file alone. A sink leaves no partial file behind.
"""

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from guard.config import SinkConfig
from guard.errors import DeliveryUncertain, GuardError, SinkError
from guard.trust import COMMAND_PATH, untrusted, untrusted_command
from guard.wav import WAV_HEADER_BYTES, encode_wav


@dataclass(frozen=True)
class Utterance:
    """Which utterance is released: its id and when it was heard (UTC, compact ISO), for names and topics."""

    id: str
    heard_at: str


HERMES_FRAME_SAMPLES = 1024  # what Rhasspy's own microphone services put in one audioFrame


class DirectorySink:
    """Writes each release as `<device>-<time>-<utterance>.wav` (mode 0600), atomically.

    Args:
        name: the sink's name in the config.
        folder: an existing, writable folder.
        device_id: this guard's id, part of every file name.
    """

    def __init__(self, name: str, folder: Path, device_id: str) -> None:
        self.name, self.folder, self.device_id = name, folder, device_id

    def problem(self) -> str | None:
        """Why a release would fail now: checked at start so the user hears of it early, and again at each
        release, so a folder someone else has come to control never receives audio."""
        if not self.folder.is_dir():
            return f"sink {self.name}: {self.folder}: no such directory; create it or fix [sinks.{self.name}] path"
        if not os.access(self.folder, os.W_OK | os.X_OK):
            return f"sink {self.name}: {self.folder}: not writable by this user"
        untrusted_by = untrusted(self.folder)
        return f"sink {self.name}: {untrusted_by}" if untrusted_by else None

    def cancel(self) -> None:
        """Nothing to stop: a write either finished or left no file."""

    def destination(self) -> str:
        return str(self.folder)

    def deliver(self, wav: bytes | bytearray, utterance: Utterance) -> str:
        """Write the file under a hidden name, fsync, then rename, so readers never see half a file."""
        problem = self.problem()
        if problem:
            raise SinkError(f"{problem}; nothing was written")
        final = self.folder / f"{self.device_id}-{utterance.heard_at}-{utterance.id}.wav"
        partial = self.folder / f".{final.name}.partial"
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(wav)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(partial, final)
        except OSError as e:
            partial.unlink(missing_ok=True)
            raise SinkError(f"sink {self.name}: {self.folder}: {e.strerror}") from None
        return str(final)


class CommandSink:
    """Runs a configured argv (never through a shell) with the WAV on its stdin.

    Args:
        name: the sink's name in the config.
        argv: the program and its arguments.
        timeout_seconds: the command is killed after this long.
        device_id: passed as $GUARD_DEVICE, with $GUARD_UTTERANCE.
    """

    def __init__(self, name: str, argv: tuple[str, ...], timeout_seconds: float, device_id: str) -> None:
        self.name, self.argv, self.timeout_seconds, self.device_id = name, argv, timeout_seconds, device_id
        self._running: subprocess.Popen | None = None

    def cancel(self) -> None:
        """Kill a command still running (and everything it started): the guard is shutting down."""
        if self._running is not None:
            _kill_group(self._running)

    def destination(self) -> str:
        return " ".join(self.argv)

    def problem(self) -> str | None:
        """Why a release would fail now: at start, and again at each release (the program and every file it
        names must still be changeable only by root or this user)."""
        program = Path(self.argv[0])
        if not (program.is_file() and os.access(program, os.X_OK)):
            return f"sink {self.name}: {self.argv[0]}: not an executable file; give its full path"
        untrusted_by = untrusted_command(self.argv)
        return f"sink {self.name}: {untrusted_by}" if untrusted_by else None

    def deliver(self, wav: bytes | bytearray, utterance: Utterance) -> str:
        """Run the command in its own process group with a minimal environment; on timeout kill the group.

        Its stderr goes to a memory file, not a pipe, so a helper it leaves running cannot hold the release open.
        """
        problem = self.problem()
        if problem:
            raise SinkError(f"{problem}; not run")
        env = {"PATH": COMMAND_PATH, "LANG": os.environ.get("LANG", "C.UTF-8"),
               "GUARD_DEVICE": self.device_id, "GUARD_UTTERANCE": utterance.id}
        stderr = os.memfd_create(f"guard-sink-{self.name}")
        try:
            try:
                process = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                           stderr=stderr, env=env, start_new_session=True)
            except OSError as e:
                raise SinkError(f"sink {self.name}: {self.argv[0]}: {e.strerror}") from None
            self._running = process
            try:
                process.communicate(wav, timeout=self.timeout_seconds)
            except subprocess.TimeoutExpired:
                raise DeliveryUncertain(f"sink {self.name}: {self.argv[0]} still running after "
                                        f"{self.timeout_seconds:g} s; killed with everything it started; it may "
                                        "have sent part of the audio") from None
            finally:
                _kill_group(process)  # helpers it left behind do not outlive the release
                self._running = None
            if process.returncode != 0:
                said = _last_line(stderr)
                raise SinkError(f"sink {self.name}: {self.argv[0]} exited {process.returncode}"
                                + (f": {said[:200]}" if said else ""))
        finally:
            os.close(stderr)
        return " ".join(self.argv)


def _last_line(fd: int) -> str:
    """The last line a command wrote to its stderr file (read from its last 4 KiB)."""
    size = os.lseek(fd, 0, os.SEEK_END)
    os.lseek(fd, max(0, size - 4096), os.SEEK_SET)
    lines = os.read(fd, 4096).decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""




def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


class MqttSink:
    """Publishes each release to `guard/<device>/audio/<utterance>` (QoS 1, not retained); never queues audio.

    Args:
        name: the sink's name in the config.
        send: the MQTT link's `send_audio(utterance_id, wav, timeout_seconds) -> mqtt://broker/topic`.
        timeout_seconds: how long to wait for the broker's acknowledgement.
        where: the broker and topic it publishes to, for the record of a release that may have arrived.
    """

    def __init__(self, name: str, send: Callable[[str, bytes, float], str], timeout_seconds: float,
                 where: str = "") -> None:
        self.name, self.send, self.timeout_seconds, self.where = name, send, timeout_seconds, where

    def destination(self) -> str:
        return self.where

    def problem(self) -> str | None:
        return None

    def cancel(self) -> None:
        """Nothing to stop here: paho holds what it was given (the record says it may still arrive)."""

    def deliver(self, wav: bytes | bytearray, utterance: Utterance) -> str:
        return _sent_by(self.name, self.send, utterance.id, wav, self.timeout_seconds)


class HermesSink:
    """Streams each release to Rhasspy as `hermes/audioServer/<device>/audioFrame` WAV chunks (QoS 1), then
    ends the speech recogniser's session, so its ASR hears exactly the released request.

    Args:
        name: the sink's name in the config.
        send: the MQTT link's `send_hermes_audio(chunks, timeout_seconds) -> mqtt://broker/topic`.
        timeout_seconds: how long to wait for the broker's acknowledgement of every chunk.
        where: the broker and topic it publishes to, for the record of a release that may have arrived.
    """

    def __init__(self, name: str, send: Callable[[list[bytearray], float], str], timeout_seconds: float,
                 where: str = "") -> None:
        self.name, self.send, self.timeout_seconds, self.where = name, send, timeout_seconds, where

    def destination(self) -> str:
        return self.where

    def problem(self) -> str | None:
        return None

    def cancel(self) -> None:
        """Nothing to stop here: paho holds what it was given (the record says it may still arrive)."""

    def deliver(self, wav: bytes | bytearray, utterance: Utterance) -> str:
        samples = np.frombuffer(wav, "<i2", offset=WAV_HEADER_BYTES)
        chunks = [encode_wav(samples[i:i + HERMES_FRAME_SAMPLES]) for i in range(0, len(samples), HERMES_FRAME_SAMPLES)]
        try:
            return _sent_by(self.name, self.send, chunks, self.timeout_seconds)
        finally:
            for chunk in chunks:  # paho has its own copy by now; ours goes the way of the release's WAV
                np.frombuffer(chunk, np.uint8)[:] = 0


def _sent_by(name: str, send: Callable[..., str], *args) -> str:
    """A send over the network as a sink's outcome: sent, may still arrive, or not sent."""
    try:
        return send(*args)
    except DeliveryUncertain as e:
        raise DeliveryUncertain(f"sink {name}: {e}") from None
    except GuardError as e:
        raise SinkError(f"sink {name}: {e}") from None


class AssistSink:
    """Runs a Home Assistant Assist pipeline from speech-to-text on each release, through the Wyoming satellite
    or the ESPHome API.

    Args:
        name: the sink's name in the config.
        send: the satellite's (or ESPHome server's) `send(pcm, timeout_seconds) -> peer`.
        timeout_seconds: how long writing the audio to Home Assistant may take.
        hub: who the satellite would send to now, for the record of a release that may have arrived.
    """

    def __init__(self, name: str, send: Callable[[memoryview, float], str], timeout_seconds: float,
                 hub: Callable[[], str] = lambda: "") -> None:
        self.name, self.send, self.timeout_seconds, self.hub = name, send, timeout_seconds, hub

    def destination(self) -> str:
        return self.hub()

    def problem(self) -> str | None:
        return None

    def cancel(self) -> None:
        """Nothing to stop here: what was written is Home Assistant's (the record says it may have arrived)."""

    def deliver(self, wav: bytes | bytearray, utterance: Utterance) -> str:
        return _sent_by(self.name, self.send, memoryview(wav)[WAV_HEADER_BYTES:], self.timeout_seconds)


Sink = DirectorySink | CommandSink | MqttSink | HermesSink | AssistSink


class MqttSender(Protocol):
    """What the MQTT and Hermes sinks need of the MQTT link (mqtt.MqttLink)."""

    url: str  # mqtt://host:port of the broker

    def send_audio(self, utterance_id: str, wav: bytes, timeout_seconds: float) -> str: ...

    def send_hermes_audio(self, chunks: list[bytearray], timeout_seconds: float) -> str: ...


class AssistSender(Protocol):
    """What an Assist sink needs of the satellite (satellite.AssistSatellite) or the ESPHome server."""

    def send(self, audio: memoryview, timeout_seconds: float) -> str: ...

    def hub(self) -> str: ...


def build(sinks: dict[str, SinkConfig], device_id: str, mqtt: MqttSender | None = None,
          assist: AssistSender | None = None, esphome: AssistSender | None = None) -> list[Sink]:
    """The configured sinks, in config order (config refuses mqtt and hermes sinks without [mqtt], wyoming
    sinks without [wyoming], and esphome sinks without [esphome])."""
    built: list[Sink] = []
    for name, c in sinks.items():
        if c.type == "directory":
            built.append(DirectorySink(name, Path(c.path).expanduser(), device_id))
        elif c.type == "command":
            built.append(CommandSink(name, c.command, c.timeout_seconds, device_id))
        elif c.type == "hermes":
            built.append(HermesSink(name, mqtt and mqtt.send_hermes_audio, c.timeout_seconds,
                                    f"{mqtt and mqtt.url}/hermes/audioServer/{device_id}/audioFrame"))
        elif c.type in ("wyoming", "esphome"):
            via = assist if c.type == "wyoming" else esphome
            built.append(AssistSink(name, via and via.send, c.timeout_seconds, via and via.hub))
        else:
            built.append(MqttSink(name, mqtt and mqtt.send_audio, c.timeout_seconds,
                                  f"{mqtt and mqtt.url}/guard/{device_id}/audio/"))
    return built
