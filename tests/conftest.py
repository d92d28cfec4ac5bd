"""Fixtures: real synthesized speech, real WAV files, and an ALSA capture device made of a file."""

import guard  # noqa: F401, I001  first: it keeps numpy's OpenBLAS to one thread, as `guard run` does
import contextlib
import dataclasses
import fcntl
import os
import pty
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

import speech

from guard import config
from guard.config import WakeModelSettings
from guard.assembly import assemble
from guard.daemon import RunOptions
from guard.wake import WakeDetector

ROOT = Path(__file__).resolve().parent.parent
GUARD = ROOT / ".venv" / "bin" / "guard"
DEVICE = "kitchen"


@pytest.fixture
def mock_pins():
    """gpiozero's MockFactory with PWM-capable pins, made per call and reset after the test, as gpiozero's own
    tests do: a factory keeps its reservations at the class level until reset."""
    made: list[MockFactory] = []

    def new() -> MockFactory:
        made.append(MockFactory(pin_class=MockPWMPin))
        return made[-1]

    yield new
    for factory in made:
        factory.reset()


@pytest.fixture(scope="session")
def wake_clips(tmp_path_factory) -> list[tuple[Path, str, str, float]]:
    """(wav, model, voice, phrase end in s) for each wake phrase in each espeak-ng voice."""
    folder = tmp_path_factory.mktemp("wake")
    clips = []
    for model in speech.WAKE_PHRASES:
        for voice in speech.VOICES:
            samples, end = speech.wake_clip(model, voice)
            clips.append((speech.write_wav(folder / f"{model}_{voice}.wav", samples), model, voice, end))
    return clips


@pytest.fixture(scope="session")
def alexa_samples() -> np.ndarray:
    samples, _ = speech.wake_clip("alexa", "en")
    return samples


@pytest.fixture(scope="session")
def alexa_wav(tmp_path_factory, alexa_samples) -> Path:
    return speech.write_wav(tmp_path_factory.mktemp("alexa") / "alexa.wav", alexa_samples)


@pytest.fixture(scope="session")
def quiet_wav(tmp_path_factory) -> Path:
    return speech.write_wav(tmp_path_factory.mktemp("quiet") / "quiet.wav", speech.silence(60))


def daemon_config(tmp_path: Path, **sections) -> config.Config:
    """The daemon as the tests drive it: device "kitchen", alexa, a mock button without bounce, an audit log and
    a directory sink "box" in `tmp_path`; `sections` replace whole sections (mqtt=..., sinks=...)."""
    sink = tmp_path / "sink"
    sink.mkdir(exist_ok=True)
    base = config.Config()
    return dataclasses.replace(base, **{
        "device": config.DeviceConfig(DEVICE), "wake": dataclasses.replace(base.wake, models=("alexa",)),
        "gpio": dataclasses.replace(base.gpio, bounce_seconds=0.0, long_press_seconds=0.3),
        "audit": config.AuditConfig(str(tmp_path / "audit.jsonl")), "sinks": {"box": config.SinkConfig(path=str(sink))},
        **sections})


@pytest.fixture(scope="module")
def detector():
    """The alexa detector, loaded once per test module; a test that feeds it wipes it first or after."""
    return WakeDetector([WakeModelSettings("alexa")])


@pytest.fixture
def daemon(tmp_path, detector):
    """A daemon driven step by step through its inbox (no threads started): a file source, mock pins, an
    audit log and a directory sink "box" in `tmp_path`, and a clock the test moves (`daemon.clock.seconds`)."""
    wav = speech.write_wav(tmp_path / "quiet.wav", speech.silence(5))
    sink = tmp_path / "sink"
    sink.mkdir(exist_ok=True)
    cfg = config.Config(audit=config.AuditConfig(str(tmp_path / "audit.jsonl")),
                        sinks={"box": config.SinkConfig(path=str(sink))})
    daemon = assemble(cfg, RunOptions(str(wav), "mock", fast=True), detector)  # fast: its clock is the test's
    daemon.audit.open()
    yield daemon
    daemon.audit.close()


def serve(daemon, *messages) -> None:
    """Post each message to the inbox and let the loop serve it, as paho's or gpiozero's thread would."""
    for message in messages:
        assert daemon.inbox.post(message)
        daemon.step()


def alsa_home(home: Path, raw: Path, pcm: str = "guardtest") -> dict[str, str]:
    """An environment whose HOME declares an ALSA `file` PCM that captures from `raw`.

    PortAudio sees it as an ordinary input device, so the real pyaudio path runs
    without a sound card.
    """
    home.mkdir(parents=True, exist_ok=True)
    (home / ".asoundrc").write_text(
        f'pcm.{pcm} {{\n  type file\n  slave.pcm "null"\n  file "/dev/null"\n'
        f'  infile "{raw}"\n  format "raw"\n}}\n')
    return {**os.environ, "HOME": str(home)}


def speaker_home(home: Path, played: Path) -> dict[str, str]:
    """An environment whose HOME declares an ALSA `file` PCM "speaker" that keeps what is played, raw, in
    `played`: the real PortAudio output path without a sound card."""
    home.mkdir(parents=True, exist_ok=True)
    (home / ".asoundrc").write_text(
        f'pcm.speaker {{\n  type file\n  slave.pcm "null"\n  file "{played}"\n  format "raw"\n}}\n')
    return {**os.environ, "HOME": str(home)}


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class GuardServing:
    """`guard run` on `source` at its real pace without pins, its speaker a file (`played`), serving the hub
    that `section` of guard.toml configures on `port`; ready once the port accepts. `with` stops it (SIGTERM)."""

    def __init__(self, tmp_path: Path, source: Path, section: str, port: int, env: dict[str, str] | None = None,
                 preexec_fn=None) -> None:
        self.played, self.audit, self.port = tmp_path / "played.raw", tmp_path / "audit.jsonl", port
        toml = tmp_path / "guard.toml"
        toml.write_text(f'[device]\nid = "{DEVICE}"\n[audio]\noutput_device = "speaker"\n'
                        f'[audit]\npath = "{self.audit}"\n{section}')
        self.process = subprocess.Popen(
            [str(GUARD), "--config", str(toml), "run", "--source", str(source), "--gpio", "none"],
            env=speaker_home(tmp_path / "home", self.played) | (env or {}), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
        self.stderr = ""
        try:
            assert until(lambda: self.process.poll() is not None or listening(port), 60), f"nothing on port {port}"
            assert self.process.poll() is None, self.process.communicate()[1]
        except BaseException:
            self.process.kill()
            self.process.communicate()
            raise

    def stop(self) -> str:
        """Stop as systemd does; returns what the guard logged."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            _, self.stderr = self.process.communicate(timeout=30)
        return self.stderr

    def __enter__(self) -> "GuardServing":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def run_guard_on_a_terminal(*args: str, env: dict[str, str] | None = None, timeout: float = 300
                            ) -> tuple[subprocess.CompletedProcess, str]:
    """`guard` with its stderr on a pseudo-terminal, as a person at a shell sees it; returns what the terminal got."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([str(GUARD), *args], stdout=subprocess.PIPE, stderr=terminal, env=env, text=True)
    os.close(terminal)
    seen = bytearray()
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal's last writer has gone
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    stdout, _ = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, None), seen.decode(errors="replace")


def run_guard(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The installed `guard` command as a user runs it."""
    return subprocess.run([str(GUARD), *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture
def full_disk(tmp_path):
    """A real 64 KiB tmpfs: a release (about 150 KB) cannot fit; `fill(full_disk, leave=N)` fills it."""
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=True)


def fill(folder: Path, leave: int = 0) -> None:
    """Fill a small file system until at most `leave` bytes are free."""
    with (folder / "filler").open("ab") as f:
        while os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize > leave:
            try:
                f.write(b"x" * 512)
                f.flush()
            except OSError:
                break


def exhaust(log) -> None:
    """Fill an audit log's disk to the last byte, through the log itself: only its reserve is left."""
    from guard.errors import AuditError
    for size in (1000, 100, 1):
        with contextlib.suppress(AuditError):
            while True:
                log.record("filler", reason="x" * size)


def until(condition, seconds: float = 10.0) -> bool:
    """Wait for an observable condition (never a fixed sleep: a loaded machine is slow)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def consent_window_open(daemon) -> bool:
    """The LED shows pending and the gate has stamped that moment: a press from now on counts.

    A test thread pressing the instant the LED changes could beat the stamp by microseconds,
    which no finger can; such a press rightly does not count.
    """
    expires = daemon.gate.expires_at()
    return daemon.outputs.led.showing.startswith("pending") and expires is not None and expires != float("inf")


# Home Assistant's own code as the client, per Python: on 3.11 (Bookworm) the newest HA for it, its MQTT
# client, and what its Wyoming satellite code and that code's dependencies (assist_pipeline, conversation, tts,
# ffmpeg, http) list in their manifests; on 3.13 (Trixie) the newest HA for it, whose own requirements hold the
# rest, its MQTT and Wyoming clients, and what its ESPHome integration and that one's dependencies (bluetooth,
# usb) list
HOME_ASSISTANT = {
    (3, 11): ("homeassistant==2024.3.3", "paho-mqtt==1.6.1", "wyoming==1.5.3", "webrtc-noise-gain==1.2.3",
              "hassil==1.6.1", "home-assistant-intents==2024.3.12", "mutagen==1.47.0", "ha-ffmpeg==3.1.0",
              "aiohttp_cors==0.7.0", "aiohttp-fast-url-dispatcher==0.3.0", "aiohttp-zlib-ng==0.3.1"),
    (3, 13): ("homeassistant==2025.4.4", "paho-mqtt==2.1.0", "wyoming==1.5.4", "aioesphomeapi==29.9.0",
              "esphome-dashboard-api==1.2.3", "bleak-esphome==2.12.0", "bleak==0.22.3", "bleak-retry-connector==3.9.0",
              "bluetooth-adapters==0.21.4", "bluetooth-auto-recovery==1.4.5", "bluetooth-data-tools==1.26.5",
              "dbus-fast==2.43.0", "habluetooth==3.37.0", "aiousbwatcher==1.1.1", "pyserial==3.5"),
}


@pytest.fixture(scope="session")
def home_assistant_python() -> str:
    """Home Assistant's own Python, in a venv of its own (.venv-ha, made once: a few minutes)."""
    pins = HOME_ASSISTANT.get(sys.version_info[:2])
    if pins is None:
        pytest.fail(f"no Home Assistant is pinned for Python {sys.version.split()[0]}: add one to HOME_ASSISTANT")
    venv = Path(__file__).resolve().parent.parent / ".venv-ha"
    stamp = venv / "guard-stamp"
    with open(venv.with_name(".venv-ha.lock"), "w") as lock:  # two test runs at once must not clear each other's
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp.exists() and stamp.read_text() == " ".join(pins)):
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", *pins],
                           check=True, timeout=1800)
            stamp.write_text(" ".join(pins))
    return str(venv / "bin/python")
